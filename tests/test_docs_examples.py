"""The Python examples in docs/*.rst: every one is classified, compiles, and the runnable ones run.

The convention, in the .rst source: the line before each ``.. code-block::
python`` (a blank line between) is a comment that names the block and says
whether it runs::

    .. example: run where-five-places

    .. code-block:: python

* ``run``: a complete program.  This test writes it to a file in an empty
  temporary directory and runs it there in a child interpreter (this one,
  ``sys.executable``, with ``-W error``); it fails if the program exits
  non-zero, writes anything to stderr (a traceback in a thread, an
  "exception ignored" message), does not finish within ``TIMEOUT``, or
  leaves out a line that ``MUST_PRINT`` holds for it.
* ``skip``: a fragment, deliberately partial or needing something the test
  does not have (a database, a server, a notebook kernel, an application's
  own modules).  Each is listed in ``SKIPPED`` below with the reason, and
  still has to compile.

A Python block without the comment fails the test, except in the sections
of ``PENDING``, which are being rewritten; their blocks are compiled and
reported as skipped.  A ``run`` block that imports Trio is skipped where
Trio is not installed (the suite's Trio-less run).  The blocks that
``literalinclude`` files from ``examples/`` are not code-blocks: their
programs have tests of their own (``tests/test_demo_app.py``).

The children run side by side, so the whole file takes a couple of seconds
of wall time per Python; the test functions only wait for their own child.
"""

from __future__ import annotations

import ast
import concurrent.futures
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import greenportal

DOCS = Path(__file__).resolve().parent.parent / "docs"
TIMEOUT = 30.0
_HAS_TRIO = importlib.util.find_spec("trio") is not None

# Fragments: why each is not run.
SKIPPED = {
    "index-load-customer": "fragment: db, CUSTOMER_QUERY, Customer and render are the app's",
    "aiohttp-middleware": "fragment: needs the application's database pool (ORDER_QUERY)",
    "asgi-wrap": "fragment: wraps an ASGI app defined elsewhere",
    "asgi-starlette": "fragment: load_order and the pool are the application's",
    "fastapi-portal-route": "fragment: oauth2_scheme, users, pool and the models are the app's",
    "starlette-portal-route": "fragment: load_order and the pool are the application's",
    "sqlalchemy-lazy-load": "needs PostgreSQL and the application's ORM models",
    "pytest-async-test": "a pytest test module: needs pytest and a database pool fixture",
    "pytest-sync-test": "a pytest test module: needs asyncpg and a PostgreSQL DSN",
    "migration-import-as": "deliberately partial: ``...`` stands for the program",
    "migration-rename": "deliberately partial: ``...`` stands for the program",
    "migration-sqlalchemy-bridge": "before/after fragment: top-level await, an ORM session",
    "notebooks-config": "an IPython configuration file (``c`` is IPython's config object)",
    "notebooks-client": "runs in a notebook cell: needs the kernel's running loop",
    "notebooks-call": "a notebook cell: calls the previous cell's function over the network",
    "notebooks-library-run": "a notebook cell: gather_pages and URLS are placeholders",
    "notebooks-top-level-await": "a notebook cell: IPython's top-level await",
    "quickstart-ensure-portal": "fragment: process_requests and the stream are the server's",
    "quickstart-portal-decorator": "fragment: top-level await, billing and summarise",
    "tutorial-loop-thread": "fragment of examples/app (tests/test_demo_app.py runs the app)",
    "tutorial-thread-pool": "fragment of examples/app (tests/test_demo_app.py runs the app)",
    "tutorial-facade-bridge": "fragment of examples/app (tests/test_demo_app.py runs the app)",
    "tutorial-setup": "fragment of examples/app (tests/test_demo_app.py runs the app)",
    "threads-blocking-submit": "fragment: client and urls stand for the program's",
}

# Lines that some run blocks must print, as the docs say they do (most
# examples print what their comments say, but this test checks only these:
# the output of the rest depends on timing or on object addresses).
MUST_PRINT = {
    "where-five-places": [
        "portal:           MainThread",
        "no event loop:    greenportal-default-runner",
    ],
    "where-ctrl-c": ["work: cleaned up", "KeyboardInterrupt, after the cleanup"],
    "quickstart-trio": ["[ Hello, Ada! ]", "timed out: True"],
    "quickstart-adapters": ["dark", "1.08 1.08 fetched 1 time(s)", "['lang=en', 'theme=dark']"],
}

# Run a block as the script __main__, with Python's own Ctrl-C handler: a
# child inherits an ignored SIGINT (a background job's), and the Ctrl-C
# example would then sleep its 10 s out instead of being interrupted.
_BOOTSTRAP = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)

# Sections being rewritten, whose blocks carry no marker yet: (file, heading): why.
PENDING: dict[tuple[str, str], str] = {}

_CODE_BLOCK = re.compile(r"^(?P<indent> *)\.\. code-block:: *(?P<language>\S*)\s*$")
_MARKER = re.compile(
    r"^(?P<indent> *)\.\. example: (?P<kind>run|skip) (?P<id>[a-z0-9][a-z0-9-]*)\s*$"
)
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1+\s*$")


@dataclass(frozen=True)
class Block:
    """One ``code-block:: python`` of the docs."""

    file: str  # the .rst file's name
    line: int  # of the directive, 1-based
    section: str  # the heading it is under
    kind: str | None  # "run", "skip", or None without a marker
    id: str | None
    code: str

    @property
    def where(self) -> str:
        return f"docs/{self.file}:{self.line}"

    @property
    def pending(self) -> str | None:
        return PENDING.get((self.file, self.section))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blocks_of(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    section = ""
    skip_to = 0  # past the body of the last code block
    for i, line in enumerate(lines):
        if i < skip_to:
            continue  # inside a code block (of rst, say, that shows a python one)
        if (
            i + 1 < len(lines)
            and line.strip()
            and not line.startswith(" ")
            and _UNDERLINE.match(lines[i + 1])
            and len(lines[i + 1].strip()) >= len(line.strip())
        ):
            section = line.strip()
        match = _CODE_BLOCK.match(line)
        if match is None:
            continue
        indent = len(match["indent"])
        body_start = i + 1
        while body_start < len(lines) and lines[body_start].strip().startswith(":"):
            body_start += 1  # the directive's options
        end = body_start
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
            end += 1
        skip_to = end
        if match["language"] != "python":
            continue
        code = textwrap.dedent("\n".join(lines[body_start:end])).strip("\n") + "\n"
        previous = i - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        marker = _MARKER.match(lines[previous]) if previous >= 0 else None
        if marker is not None and len(marker["indent"]) != indent:
            marker = None
        yield Block(
            file=path.name,
            line=i + 1,
            section=section,
            kind=marker["kind"] if marker else None,
            id=marker["id"] if marker else None,
            code=code,
        )


BLOCKS = [block for path in sorted(DOCS.glob("*.rst")) for block in _blocks_of(path)]
if not BLOCKS:  # running from an installed wheel without the repository
    pytest.skip("docs/ not found", allow_module_level=True)

# What test_example runs: the blocks marked run, and the pending ones (skipped there).
RUNS = {block.id or f"{block.file}:{block.line}": block for block in BLOCKS if block.kind == "run"}
RUNS.update({f"{b.file}:{b.line}": b for b in BLOCKS if b.kind is None and b.pending})


def test_blocks_were_found() -> None:
    assert len(BLOCKS) > 30
    assert len([b for b in BLOCKS if b.kind == "run"]) > 15


def test_every_python_block_is_marked() -> None:
    unmarked = [b.where for b in BLOCKS if b.kind is None and not b.pending]
    assert not unmarked, (
        "mark these docs blocks with '.. example: run ID' or '.. example: skip ID' "
        f"(and list skipped ones in SKIPPED): {unmarked}"
    )
    ids = [b.id for b in BLOCKS if b.id is not None]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_skipped_blocks_are_the_ones_listed_with_a_reason() -> None:
    marked = {b.id for b in BLOCKS if b.kind == "skip"}
    assert marked == set(SKIPPED), {
        "marked skip but not in SKIPPED": sorted(marked - set(SKIPPED)),
        "in SKIPPED but not marked skip": sorted(set(SKIPPED) - marked),
    }
    assert all(reason.strip() for reason in SKIPPED.values())


def test_pending_sections_exist() -> None:
    # A stale entry would let unmarked blocks through unnoticed once renamed.
    sections = {(b.file, b.section) for b in BLOCKS}
    assert set(PENDING) <= sections


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id or f"{b.file}:{b.line}" for b in BLOCKS])
def test_block_compiles(block: Block) -> None:
    # Fragments included; top-level await is allowed, as in a notebook cell
    # or an async REPL.  Warnings (invalid escapes, say) are errors here.
    compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _imports(code: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return names


def _run(block: Block, directory: Path) -> subprocess.CompletedProcess[str]:
    script = directory / f"{block.id}.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    # The greenportal this test imported, whether installed or a source tree.
    package_root = str(Path(greenportal.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    flags = ["-O"] * sys.flags.optimize
    return subprocess.run(
        [sys.executable, *flags, "-W", "error", "-c", _BOOTSTRAP, str(script)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def started(
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, concurrent.futures.Future[subprocess.CompletedProcess[str]]]]:
    """Start every selected runnable block in its own child, all at once."""
    here = Path(__file__).resolve()
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_example"
        and item.path.resolve() == here
    ]
    wanted = [RUNS[name] for name in selected if RUNS[name].kind == "run"]
    runnable = [b for b in wanted if "trio" not in _imports(b.code) or _HAS_TRIO]
    with tempfile.TemporaryDirectory(prefix="greenportal-docs-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max(1, len(runnable))) as pool:
            futures = {}
            for block in runnable:
                directory = Path(tmp) / str(block.id)
                directory.mkdir()
                futures[str(block.id)] = pool.submit(_run, block, directory)
            yield futures


@pytest.mark.subprocess
@pytest.mark.parametrize("name", sorted(RUNS))
def test_example(
    name: str, started: dict[str, concurrent.futures.Future[subprocess.CompletedProcess[str]]]
) -> None:
    block = RUNS[name]
    if block.kind is None:
        pytest.skip(f"{block.where}: {block.pending}")
    if "trio" in _imports(block.code) and not _HAS_TRIO:
        pytest.skip(f"{block.where} needs Trio, which is not installed")
    try:
        result = started[name].result()
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where} ({name}) did not finish within {TIMEOUT:.0f}s")
    report = f"{block.where} ({name}) exited {result.returncode}\n--- stdout\n{result.stdout}"
    report += f"--- stderr\n{result.stderr}"
    assert result.returncode == 0, report
    assert result.stderr == "", report
    printed = result.stdout.splitlines()
    missing = [line for line in MUST_PRINT.get(name, []) if line not in printed]
    assert not missing, f"{report}--- lines the docs promise and it did not print\n{missing}"


def test_must_print_names_run_blocks() -> None:
    assert set(MUST_PRINT) <= {b.id for b in BLOCKS if b.kind == "run"}
