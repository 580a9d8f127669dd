#!/usr/bin/env python3
"""Run greenportal's whole check: tests on every CPython 3.10-3.13 found, lint, types, docs.

Usage::

    python3 scripts/test.py [--quick] [--no-lint] [-- PYTEST_ARGS...]

For each of CPython 3.10, 3.11, 3.12 and 3.13 that is found (``python3.X`` on
PATH, else ``$PYENV_ROOT/versions/3.X*`` or ``~/.pyenv/versions/3.X*``), this
creates or reuses ``.venv-test-3.X`` in the repository root, installs
``-e . --group test`` (the dependency groups in ``pyproject.toml``) into it
and runs ``python -m pytest PYTEST_ARGS``, then, when a
C compiler is found, the suite again with ``GREENPORTAL_PURE_PYTHON=1`` (the
pure-Python twins of the C accelerator; integrations included, only the
tests of ``tools/pgcluster.py`` left out, as they exercise no greenportal
code, and the Jupyter kernel tests, which start a dozen kernels for code
that has no compiled twin, and which the compiled runs leave to the oldest
and the newest Python found); it runs beside the compiled run of the same Python, its output
shown when it ends (``--serial`` runs it after instead).  With a compiler the
compiled runs set ``GREENPORTAL_REQUIRE_SPEEDUPS=1``: the accelerator must have
been built.  Then, once, on the newest version found:

* ``python -O -m pytest -q -k "ctask or await"`` (the ctypes code must work
  with asserts off);
* the suite in ``.venv-notrio`` (``--group test-asyncio``), where Trio is not
  installed (greenportal must work without it; the Trio tests skip; the
  kernel tests, which need no Trio, are left to the main runs);
* the compiled layer's memory-safety slices (``scripts/reliability.py
  --sanitize --short`` and ``--refleak --short``, when a C compiler is found;
  see that script);
* ``scripts/build.py``: the sdist and a manylinux wheel built and checked
  (``auditwheel repair``, ``twine check``), the wheel installed with its
  ``test`` dependency group in a fresh ``.venv-wheel`` and ``WHEEL_TESTS``
  run against it, beside the lint steps (when a C compiler is found, on Linux);
* in ``.venv-lint`` (``--group lint --group docs``): ``ruff check``, ``ruff format
  --check``, ``mypy`` and, if ``docs/conf.py`` exists, a warnings-as-errors
  Sphinx build.

Each venv is built in the background while the tests before it run (the
first one before anything else; ``--serial`` builds each where it is
needed); the Trio-less and lint venvs reuse the C extension that the newest
Python's test venv built in ``src/`` (``GREENPORTAL_NO_EXTENSION=1``), so
that no install rewrites it while a run has it loaded.

Every step runs even if an earlier one failed; a summary table follows, and
the exit status is 1 if any step failed (pytest collecting no test counts as
a failure).  Standard library only: needs nothing but a python3 to start.

Options:
    --quick     test only the newest Python found (lint still runs)
    --no-lint   skip ruff, mypy and the docs build
    --serial    run each pure-Python suite after its compiled one, not beside it,
                and build each venv where it is needed
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ["3.10", "3.11", "3.12", "3.13"]
LINT_PATHS = ["src", "tests", "benchmarks", "examples", "scripts"]
# Left out of the pure-Python runs: tools/pgcluster.py's tests run no
# greenportal code, and the kernel tests (tests/test_ipython.py, a dozen real
# Jupyter kernels) test greenportal.ipython, which has no compiled twin; the
# pgcluster tests run in every compiled run, the kernel tests in those of the
# oldest and the newest Python.  The Trio-less run leaves out the kernel tests too.
# What runs against the built wheel (scripts/build.py --test-venv): the
# packaging checks, the compiled hot path, and an integration.
WHEEL_TESTS = [
    "tests/test_main.py",
    "tests/test_package.py",
    "tests/test_speedups.py",
    "tests/test_api.py",
    "tests/test_await.py",
    "tests/test_ctask.py",
    "tests/test_introspection.py",
    "tests/test_int_fastapi.py",
]
NOT_IN_SIDE_RUNS = ["--ignore=tests/test_pgcluster.py", "--ignore=tests/test_ipython.py"]
FORMAT_PATHS = ["src", "tests"]
INSTALL_TIMEOUT = 10 * 60
RUN_TIMEOUT = 10 * 60
IS_WINDOWS = os.name == "nt"
# Under -O pytest warns that asserts outside test modules are off (which is the
# point of that run); the project's filterwarnings=error would make it fatal.
QUIET_OPTIMIZE_WARNING = ["-W", "ignore:assertions not in test modules:pytest.PytestConfigWarning"]


@dataclass
class Step:
    name: str
    status: str  # PASS, FAIL or SKIP
    seconds: float = 0.0
    note: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # pytest outcomes


RESULTS: list[Step] = []
REPORTS = Path(tempfile.gettempdir())  # replaced by a private directory in main()


def say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


def banner(text: str) -> None:
    say()
    say(f"=== {text} " + "=" * max(3, 76 - len(text)))


def record(step: Step) -> Step:
    RESULTS.append(step)
    extra = f" ({step.note})" if step.note else ""
    say(f"--- {step.name}: {step.status} in {step.seconds:.1f}s{extra}")
    return step


def skip(name: str, why: str) -> Step:
    return record(Step(name, "SKIP", 0.0, why))


# --- running commands --------------------------------------------------------


def venv_env(venv: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env["PIP_NO_INPUT"] = "1"
    env.pop("PYTHONHOME", None)
    if venv is not None:  # what `activate` would do
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = str(bin_dir(venv)) + os.pathsep + env.get("PATH", "")
    return env


def execute(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float,
    log: Path | None = None,
    quiet: bool = False,
) -> int | str:
    """Run *cmd* in the repo root, streaming its output (or into *log*); return its exit code."""
    if not quiet:
        say("$ " + shlex.join(cmd))
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            start_new_session=not IS_WINDOWS,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
        )
    except OSError as error:
        return f"could not start: {error}"
    finally:
        if out is not None:
            out.close()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        return f"timed out after {timeout:.0f}s"
    except KeyboardInterrupt:
        kill_tree(proc, signal.SIGINT)
        raise


def kill_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if IS_WINDOWS:
        proc.kill()
    else:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def pytest_counts(report: Path) -> dict[str, int]:
    """Outcome counts from a pytest JUnit XML report ({} if there is none)."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError):
        return {}
    counts = dict.fromkeys(["passed", "failed", "errors", "skipped"], 0)
    for suite in root.iter("testsuite"):
        total, failed, errors, skipped = (
            int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")
        )
        counts["passed"] += total - failed - errors - skipped
        counts["failed"] += failed
        counts["errors"] += errors
        counts["skipped"] += skipped
    return counts


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "passed")


def step(
    name: str,
    cmd: list[str],
    *,
    venv: Path | None = None,
    timeout: float = RUN_TIMEOUT,
    pytest: bool = False,
    env: dict[str, str] | None = None,
) -> Step:
    banner(name)
    counts: dict[str, int] = {}
    report = REPORTS / f"{name.replace(' ', '_').replace(',', '')}-{time.monotonic_ns()}.xml"
    if pytest:  # before the caller's arguments, so that their own --junitxml wins
        at = cmd.index("pytest") + 1
        cmd = [*cmd[:at], f"--junitxml={report}", *cmd[at:]]
    start = time.monotonic()
    rc = execute(cmd, env={**venv_env(venv), **(env or {})}, timeout=timeout)
    seconds = time.monotonic() - start
    if pytest:
        counts = pytest_counts(report)
    if rc == 0:
        return record(Step(name, "PASS", seconds, describe(counts) if counts else "", counts))
    if isinstance(rc, str):
        note = rc
    elif pytest and rc == 5:
        note = "pytest ran no tests (exit 5): nothing collected, or all deselected by -k/-m"
    elif rc < 0:
        note = f"killed by signal {-rc}"
    else:
        note = f"exit {rc}"
    if pytest and rc == 5:
        say(f"!!! {note}")
    elif counts:
        note = f"{note}: {describe(counts)}"
    return record(Step(name, "FAIL", seconds, note, counts))


class Background:
    """A pytest step that runs beside the current one (or at join, with --serial).

    Its output goes to a file, shown when :meth:`join` records the step: two
    runs at once keep both cores of a small machine busy without mixing
    their output.
    """

    def __init__(
        self, name: str, cmd: list[str], *, venv: Path | None, env: dict[str, str], serial: bool
    ) -> None:
        self.name = name
        self.env = {**venv_env(venv), **env}
        self.log = REPORTS / f"background-{len(RESULTS)}-{time.monotonic_ns()}.log"
        self.report = self.log.with_suffix(".xml")
        at = cmd.index("pytest") + 1
        self.cmd = [*cmd[:at], f"--junitxml={self.report}", *cmd[at:]]
        self.rc: int | str = "not run"
        self.seconds = 0.0
        self.thread: threading.Thread | None = None
        if not serial:
            say(f"--- {name}: started in the background")
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        self.rc = execute(self.cmd, env=self.env, timeout=RUN_TIMEOUT, log=self.log, quiet=True)
        self.seconds = time.monotonic() - start

    def join(self) -> Step:
        banner(self.name)
        if self.thread is None:
            say("$ " + shlex.join(self.cmd))
            self._run()
        else:
            say("$ " + shlex.join(self.cmd) + "  (ran in the background)")
            self.thread.join()
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        lines = text.splitlines()
        # A passing run's progress dots say nothing: show its summary only.
        shown = lines if self.rc != 0 else lines[-30:]
        if len(shown) < len(lines):
            say(f"[{len(lines) - len(shown)} lines of progress left out; all are shown on failure]")
        for line in shown:
            say(line)
        counts = pytest_counts(self.report)
        if self.rc == 0:
            return record(Step(self.name, "PASS", self.seconds, describe(counts), counts))
        note = self.rc if isinstance(self.rc, str) else f"exit {self.rc}"
        if counts:
            note = f"{note}: {describe(counts)}"
        return record(Step(self.name, "FAIL", self.seconds, note, counts))


# --- finding interpreters ----------------------------------------------------


@dataclass
class Python:
    version: str  # "3.12"
    executable: str  # the real interpreter (not a shim)
    full_version: str  # "3.12.1"
    found_via: str


def bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if IS_WINDOWS else "bin")


def venv_python(venv: Path) -> Path:
    return bin_dir(venv) / ("python.exe" if IS_WINDOWS else "python")


PROBE = "import sys,platform;print(platform.python_implementation(),sys.executable)"


def probe(candidate: str, version: str) -> tuple[Python | None, str]:
    """Check that *candidate* runs and is CPython *version*; return it or why not."""
    try:
        out = subprocess.run(
            [candidate, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{candidate} does not run ({error})"
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        first = text.splitlines()[0] if text else f"exit {out.returncode}"
        return None, f"{candidate} fails: {first}"
    words = text.split()
    if len(words) < 2 or not (words[1] + ".").startswith(version + "."):
        return None, f"{candidate} is {text!r}, not Python {version}"
    try:
        out = subprocess.run(
            [candidate, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
        )
        impl, executable = out.stdout.strip().split(" ", 1)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        return None, f"{candidate} does not run code ({error})"
    if impl != "CPython":
        return None, f"{candidate} is {impl}, not CPython"
    return Python(version, executable or candidate, words[1], candidate), ""


def pyenv_roots() -> list[Path]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [r.resolve() for r in unique]:
            unique.append(root)
    return unique


def version_key(path: str) -> list[int]:
    name = Path(path).parent.parent.name  # versions/3.12.1/bin/python3.12 -> 3.12.1
    return [int(part) if part.isdigit() else -1 for part in name.split(".")]


def find_python(version: str) -> tuple[Python | None, list[str]]:
    """Find CPython *version*; return it, or None and the reasons for each miss."""
    misses = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        found, why = probe(on_path, version)
        if found:
            return found, []
        misses.append(why)
    else:
        misses.append(f"no python{version} on PATH")
    for root in pyenv_roots():
        pattern = str(root / "versions" / f"{version}*" / "bin" / f"python{version}")
        candidates = sorted(glob.glob(pattern), key=version_key, reverse=True)
        # Skip free-threaded (3.13t) and other suffixed builds; greenlet needs the GIL.
        candidates = [c for c in candidates if Path(c).parent.parent.name[-1].isdigit()]
        if not candidates:
            misses.append(f"nothing matches {pattern}")
        for candidate in candidates:
            found, why = probe(candidate, version)
            if found:
                found.found_via = candidate
                return found, []
            misses.append(why)
    return None, misses


# --- virtualenvs -------------------------------------------------------------


def venv_matches(venv: Path, python: Python) -> bool:
    exe = venv_python(venv)
    if not exe.exists():
        return False
    try:
        out = subprocess.run(
            [str(exe), "-c", "import sys, pip; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == python.full_version


def make_venv(name: str, python: Python, venv: Path, groups: str) -> Path | None:
    """Create or reuse *venv* from *python*; install ``-e .`` and the dependency
    *groups* (comma-separated) with pip's ``--group``; None on failure."""
    return VenvBuild(name, python, venv, groups, background=False).finish()


class VenvBuild:
    """:func:`make_venv`, here or in a thread (*background*), recorded at :meth:`finish`.

    In the background its output goes to a file, shown by :meth:`finish`:
    the next Python's venv is built while the current one's tests run
    (pip is mostly waiting on the disk, and one core is often idle at the
    end of a version's runs), so no run waits for an install.
    """

    def __init__(
        self,
        name: str,
        python: Python,
        venv: Path,
        groups: str,
        *,
        background: bool,
        reuse_extension: bool = False,
    ) -> None:
        self.name = name
        # Build no C extension (GREENPORTAL_NO_EXTENSION): the editable
        # install finds the one that the same Python's test venv built in
        # src/.  Two installs for one Python would each rewrite that file,
        # maybe while a test run or another install reads it.
        self.reuse_extension = reuse_extension
        self.python = python
        self.venv = venv
        self.groups = groups
        self.log = REPORTS / f"{venv.name}-{time.monotonic_ns()}.log" if background else None
        self.outcome: tuple[str, str] = ("FAIL", "not run")
        self.seconds = 0.0
        self.thread: threading.Thread | None = None
        if background:
            self.thread = threading.Thread(target=self._build, daemon=True)
            self.thread.start()
        else:
            banner(name)
            self._build()

    def _say(self, text: str) -> None:
        if self.log is None:
            say(text)
        else:
            with open(self.log, "a", encoding="utf-8") as out:
                out.write(text + "\n")

    def _execute(self, cmd: list[str], env: dict[str, str], timeout: float) -> int | str:
        if self.log is not None:
            self._say("$ " + shlex.join(cmd))
        return execute(cmd, env=env, timeout=timeout, log=self.log, quiet=self.log is not None)

    def _build(self) -> None:
        start = time.monotonic()
        try:
            self.outcome = self._steps()
        except Exception as error:  # reported as the step's failure
            self.outcome = ("FAIL", f"{type(error).__name__}: {error}")
        self.seconds = time.monotonic() - start

    def _steps(self) -> tuple[str, str]:
        python, venv = self.python, self.venv
        env = venv_env(None)
        how = "reused"
        if venv_matches(venv, python):
            self._say(f"reusing {venv.name} (Python {python.full_version})")
        else:
            how = "created"
            self._say(
                f"creating {venv.name} with {python.executable} (Python {python.full_version})"
            )
            cmd = [python.executable, "-m", "venv", "--clear", str(venv)]
            rc = self._execute(cmd, env, 300)
            if rc != 0:
                hint = ""
                if not IS_WINDOWS and python.executable.startswith("/usr/"):
                    hint = f"; on Debian/Ubuntu: apt-get install python{python.version}-venv"
                return "FAIL", f"venv creation failed ({rc}){hint}"
        py = str(venv_python(venv))
        # Every time, reused venvs too: --group needs pip 25.1 or later.
        self._execute([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], env, 300)
        groups = group_options(self.groups)
        install_env = venv_env(venv)
        if self.reuse_extension:
            install_env["GREENPORTAL_NO_EXTENSION"] = "1"
        rc = self._execute(
            [py, "-m", "pip", "install", "-q", "-e", ".", *groups], install_env, INSTALL_TIMEOUT
        )
        if rc != 0:
            return "FAIL", f"pip install -e . {' '.join(groups)} failed ({rc})"
        return "PASS", f"{how} {venv.name}"

    def finish(self) -> Path | None:
        """Wait for the build, show its output if it ran in the background, record it."""
        if self.thread is not None:
            banner(self.name)
            self.thread.join()
            say("(built in the background, beside the earlier steps)")
            if self.log is not None and self.log.exists():
                for line in self.log.read_text(errors="replace").splitlines():
                    say(line)
        status, note = self.outcome
        if self.thread is not None:
            note += ", in the background"
        record(Step(self.name, status, self.seconds, note))
        return self.venv if status == "PASS" else None


# --- the check ---------------------------------------------------------------


def group_options(groups: str) -> list[str]:
    """``--group NAME`` for each of the comma-separated dependency groups."""
    return [option for name in groups.split(",") for option in ("--group", name)]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description="Run greenportal's tests on every CPython 3.10-3.13 found, plus lint, "
        "types and docs.",
        epilog="Arguments after `--` go to each full pytest run.",
    )
    parser.add_argument("--quick", action="store_true", help="test only the newest Python found")
    parser.add_argument("--no-lint", action="store_true", help="skip ruff, mypy and the docs")
    parser.add_argument(
        "--serial",
        action="store_true",
        help="run the pure-Python suites after, not beside, the compiled ones",
    )
    return parser.parse_args(argv), pytest_args


APT_TIMEOUT = 15 * 60


def ensure_postgres() -> None:
    """Install the PostgreSQL server with apt-get if it is missing and we may (root).

    The integration tests start a throwaway cluster (tools/pgcluster.py) and
    skip without the server binaries; this makes them run where we can.
    """
    banner("PostgreSQL server binaries (for the integration tests)")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import pgcluster
    finally:
        sys.path.pop(0)
    found = pgcluster.find_pg_bin()
    if found is not None:
        say(f"found in {found}")
        return
    apt = shutil.which("apt-get")
    if IS_WINDOWS or os.geteuid() != 0 or apt is None:
        why = "not root" if not IS_WINDOWS and apt else "no apt-get"
        say(f"not found, and not installing them ({why}); the PostgreSQL tests will skip.")
        say(pgcluster.MISSING_MESSAGE)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        [apt, "update", "-q"],
        [apt, "install", "-y", "-q", "--no-install-recommends", "postgresql"],
    ):
        say("$ " + shlex.join(cmd))
        try:
            done = subprocess.run(cmd, env=env, timeout=APT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            say(f"{cmd[1]} failed: {error}; the PostgreSQL tests will skip.")
            return
        if done.returncode != 0:
            say(f"{cmd[1]} failed (exit {done.returncode}); the PostgreSQL tests will skip.")
            return
    found = pgcluster.find_pg_bin()
    say(f"installed: {found}" if found else "installed, but still not found; tests will skip.")


def speedups_env() -> dict[str, str]:
    """Make the suite fail if the C accelerator was not built where it can be.

    ``greenportal._speedups`` is optional (setup.py builds it with
    ``optional=True``); with a C compiler here it must have been built, or the
    compiled path would silently go untested.
    """
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        say("no C compiler found: the pure-Python portal is tested, not the C accelerator")
        return {}
    return {"GREENPORTAL_REQUIRE_SPEEDUPS": "1"}


def run_all(args: argparse.Namespace, pytest_args: list[str]) -> None:
    ensure_postgres()
    require = speedups_env()
    banner("looking for CPython " + ", ".join(VERSIONS))
    found: dict[str, Python] = {}
    missing: dict[str, str] = {}
    for version in VERSIONS:
        python, misses = find_python(version)
        if python:
            found[version] = python
            via = "" if python.found_via == python.executable else f", via {python.found_via}"
            say(f"  {version}: {python.executable} (Python {python.full_version}{via})")
        else:
            missing[version] = "; ".join(misses)
            say(f"  {version}: not found: {missing[version]}")
    if not found:
        record(Step("find a Python", "FAIL", 0.0, f"none of {', '.join(VERSIONS)} found"))
        return
    newest = found[max(found, key=lambda v: tuple(map(int, v.split("."))))]
    selected = [newest.version] if args.quick else list(found)
    oldest = min(found, key=lambda v: tuple(map(int, v.split("."))))

    ran = [v for v in VERSIONS if v in selected]
    say(f"will test on: {', '.join(ran)}")
    for version in VERSIONS:
        if version in missing:
            say(f"skipping {version}: not found")
        elif version not in selected:
            say(f"skipping {version}: --quick tests only the newest ({newest.version})")

    # Each venv is built in the background while the tests before it run
    # (the first one alone, before anything else): the pip installs then
    # cost no wall time.  --serial builds each where it is needed.
    def build(version: str) -> VenvBuild:
        return VenvBuild(
            f"venv {version}: install -e . --group test",
            found[version],
            ROOT / f".venv-test-{version}",
            "test",
            background=not args.serial,
        )

    order = [v for v in VERSIONS if v in selected]
    builds = {order[0]: build(order[0])} if order else {}
    side_venvs: dict[str, VenvBuild] = {}
    for version in VERSIONS:
        name = f"pytest {version}"
        if version in missing:
            skip(name, "not found")
            continue
        if version not in selected:
            skip(name, "--quick")
            continue
        python = found[version]
        venv = builds.pop(version).finish()
        later = order[order.index(version) + 1 :]
        if later:
            builds[later[0]] = build(later[0])
        elif not args.serial:
            # The last Python: the Trio-less and the lint venvs come next.
            side_venvs = start_side_venvs(newest, lint=not args.no_lint)
        if venv is None:
            skip(name, "its venv failed")
            if version == newest.version:
                skip(f"pytest -O {version}", "its venv failed")
            continue
        py = str(venv_python(venv))
        pure = None
        if require:
            # The same suite on the pure-Python twins of the compiled code,
            # integrations included, in a thread of its own beside the
            # compiled run (two cores: each run is one busy process), its
            # output kept in a file and shown when it ends.
            # (tests/test_pgcluster.py tests the test tooling's PostgreSQL
            # launcher, which runs no greenportal code.)
            pure = Background(
                f"pytest {version}, pure Python",
                [py, "-m", "pytest", "-q", *NOT_IN_SIDE_RUNS, *pytest_args],
                venv=venv,
                env={"GREENPORTAL_PURE_PYTHON": "1"},
                serial=args.serial,
            )
        # The kernel tests run on the oldest and the newest Python found (3.10
        # gets IPython 8, the others the same IPython 9 and ipykernel 7).
        kernels = [] if version in (oldest, newest.version) else ["--ignore=tests/test_ipython.py"]
        step(
            name,
            [py, "-m", "pytest", *kernels, *pytest_args],
            venv=venv,
            pytest=True,
            env=require,
        )
        if pure is not None:
            pure.join()
        else:
            skip(f"pytest {version}, pure Python", "no C compiler: the main run was pure Python")
        if version == newest.version:
            # The Trio-less suite runs beside the -O run and the memory
            # slices (two cores; each is one busy process).
            without_trio = run_without_trio(
                newest, pytest_args, serial=args.serial, build=side_venvs.get("notrio")
            )
            step(
                f"pytest -O {version}",
                [py, "-O", "-m", "pytest", *QUIET_OPTIMIZE_WARNING, "-q", "-k", "ctask or await"],
                venv=venv,
                pytest=True,
            )
            run_memory_checks(newest, require)
            if without_trio is not None:
                without_trio.join()

    wheel = test_built_wheel(newest, require, serial=args.serial)
    try:
        run_lint(args, newest, build=side_venvs.get("lint"))
    finally:
        if wheel is not None:
            wheel.join()


def test_built_wheel(python: Python, require: dict[str, str], *, serial: bool) -> Background | None:
    """Build the sdist and a manylinux wheel (scripts/build.py), test the wheel.

    The wheel goes into a fresh ``.venv-wheel`` with the ``test`` group, and
    a slice of the suite runs against it (not against ``src/``), beside the
    lint steps.  None (the step skipped) without a C compiler or off Linux.
    """
    name = f"built wheel ({python.version})"
    if not require:
        skip(name, "no C compiler: no manylinux wheel to build")
        return None
    if not sys.platform.startswith("linux"):
        skip(name, "auditwheel is Linux only")
        return None
    build = [sys.executable, str(ROOT / "scripts" / "build.py"), "--python", python.executable]
    build += ["--out", str(REPORTS / "dist"), "--test-venv", str(ROOT / ".venv-wheel"), "--"]
    return Background(
        name, [*build, "pytest", "-q", *WHEEL_TESTS], venv=None, env={}, serial=serial
    )


LINT_VENV = "venv lint ({}): install -e . --group lint --group docs"
NOTRIO_VENV = "venv {} without trio: install -e . --group test-asyncio"


def side_venv(kind: str, newest: Python, *, background: bool) -> VenvBuild:
    """The build of the Trio-less (*kind* "notrio") or the lint venv, on the newest Python.

    Both reuse the C extension that the newest Python's test venv built
    (``reuse_extension``): they are built after it.
    """
    name, venv, groups = {
        "notrio": (NOTRIO_VENV, ".venv-notrio", "test-asyncio"),
        "lint": (LINT_VENV, ".venv-lint", "lint,docs"),
    }[kind]
    return VenvBuild(
        name.format(newest.version),
        newest,
        ROOT / venv,
        groups,
        background=background,
        reuse_extension=True,
    )


def start_side_venvs(newest: Python, *, lint: bool) -> dict[str, VenvBuild]:
    """Start building the Trio-less venv and (with *lint*) the lint venv, in the background.

    Called once the newest Python's test venv is built.
    """
    kinds = ["notrio", "lint"] if lint else ["notrio"]
    return {kind: side_venv(kind, newest, background=True) for kind in kinds}


def run_lint(args: argparse.Namespace, newest: Python, *, build: VenvBuild | None) -> None:
    lint_steps = ["ruff check", "ruff format --check", "mypy", "sphinx docs"]
    if args.no_lint:
        for name in lint_steps:
            skip(name, "--no-lint")
        return
    if build is None:
        build = side_venv("lint", newest, background=False)
    venv = build.finish()
    if venv is None:
        for name in lint_steps:
            skip(name, "lint venv failed")
        return
    py = str(venv_python(venv))
    lint_paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    step("ruff check", [py, "-m", "ruff", "check", *lint_paths], venv=venv)
    format_paths = [p for p in FORMAT_PATHS if (ROOT / p).exists()]
    step("ruff format --check", [py, "-m", "ruff", "format", "--check", *format_paths], venv=venv)
    step("mypy", [py, "-m", "mypy"], venv=venv)
    if (ROOT / "docs" / "conf.py").exists():
        sphinx = [py, "-m", "sphinx", "-W", "-n", "--keep-going", "-b", "html"]
        step("sphinx docs", [*sphinx, "docs", "docs/_build/html"], venv=venv)
    else:
        skip("sphinx docs", "no docs/conf.py")


def run_without_trio(
    python: Python, pytest_args: list[str], *, serial: bool, build: VenvBuild | None
) -> Background | None:
    """Start the suite with Trio not installed (greenportal must not need it).

    It runs in the background: the caller joins it.  None if its venv failed.
    *build* is its venv's build, if it was started earlier.
    """
    name = f"pytest {python.version}, no trio"
    if build is None:
        build = side_venv("notrio", python, background=False)
    venv = build.finish()
    if venv is None:
        skip(name, "its venv failed")
        return None
    py = str(venv_python(venv))
    # A venv reused from before may have picked trio up; insist it has not.
    absent = "import importlib.util, sys; sys.exit(importlib.util.find_spec('trio') is not None)"
    if execute([py, "-c", absent], env=venv_env(venv), timeout=60) != 0:
        execute([py, "-m", "pip", "uninstall", "-q", "-y", "trio"], env=venv_env(venv), timeout=300)
    return Background(
        name,
        [py, "-m", "pytest", "-q", "--ignore=tests/test_ipython.py", *pytest_args],
        venv=venv,
        env={},
        serial=serial,
    )


MEMORY_TIMEOUT = 20 * 60


def run_memory_checks(python: Python, require: dict[str, str]) -> None:
    """The compiled layer's sanitizer and reference-leak slices (scripts/reliability.py)."""
    names = ["sanitizer slice (ASan+UBSan)", "refleak slice (python3.11-dbg)"]
    if not require:
        for name in names:
            skip(name, "no C compiler: there is no compiled layer to check")
        return
    script = str(ROOT / "scripts" / "reliability.py")
    # The sanitizer run reuses the newest test venv (it has the test group).
    tested = venv_python(ROOT / f".venv-test-{python.version}")
    reuse = ["--python", str(tested)] if tested.exists() else []
    for name, flag in zip(names, ["--sanitize", "--refleak"], strict=True):
        cmd = [python.executable, script, flag, "--short", *(reuse if flag == "--sanitize" else [])]
        step(name, cmd, timeout=MEMORY_TIMEOUT)


def summary(total: float) -> int:
    width = max(len(s.name) for s in RESULTS)
    say()
    say("=" * 78)
    say(f"{'step':<{width}}  result  {'time':>7}  note")
    say("-" * 78)
    for s in RESULTS:
        say(f"{s.name:<{width}}  {s.status:<6}  {s.seconds:6.1f}s  {s.note}")
    say("-" * 78)
    by_status = {k: sum(s.status == k for s in RESULTS) for k in ("PASS", "FAIL", "SKIP")}
    failed = by_status["FAIL"] > 0
    say(
        f"steps: {by_status['PASS']} PASS, {by_status['FAIL']} FAIL, {by_status['SKIP']} SKIP "
        f"in {total:.0f}s: {'FAILED' if failed else 'OK'}"
    )
    tests = {k: sum(s.counts.get(k, 0) for s in RESULTS) for k in ("passed", "failed", "errors")}
    skipped = sum(s.counts.get("skipped", 0) for s in RESULTS)
    # The plain closing line CI systems read: tests over all pytest runs.
    say(f"tests: {tests['passed']} passed, {tests['failed'] + tests['errors']} failed", end="")
    say(f", {skipped} skipped" if skipped else "")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    global REPORTS
    args, pytest_args = parse_args(argv)
    if not IS_WINDOWS and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started with SIGINT ignored (`cmd &` in a script, nohup): the children
        # would inherit that, and the KeyboardInterrupt tests need real SIGINT.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.monotonic()
    say(f"greenportal check in {ROOT} (driver: Python {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory(prefix="greenportal-check-") as reports:
        REPORTS = Path(reports)
        try:
            run_all(args, pytest_args)
        except KeyboardInterrupt:
            record(Step("interrupted", "FAIL", 0.0, "Ctrl-C"))
            summary(time.monotonic() - start)
            return 130
    return summary(time.monotonic() - start)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
