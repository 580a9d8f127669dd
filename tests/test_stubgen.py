"""greenportal.stubgen: the stubs it writes for blocking() APIs (issue 14).

* the committed stub of the sample library (examples/dual_api/kvclient) is
  what the generator writes today, so it cannot go stale;
* mypy --strict, run once on tests/stubgen_usage.py, accepts the blocking,
  ``.aio`` and ``.submit`` uses there and reports exactly the marked mistakes;
* annotations translate as the runtime translates values, and the command
  fails cleanly (exit status 2, nothing written) on modules it cannot import.
"""

from __future__ import annotations

import collections.abc
import contextlib
import importlib.util
import pathlib
import re
import sys
import textwrap
import typing
from collections.abc import Iterator

import pytest

import greenportal
from greenportal import stubgen

from .conftest import run_python

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dual_api"
USAGE = pathlib.Path(__file__).resolve().parent / "stubgen_usage.py"

if not EXAMPLE.is_dir():  # pragma: no cover - running from an installed wheel
    pytest.skip("needs the source tree", allow_module_level=True)


@pytest.fixture
def on_path(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """*tmp_path* and the sample library importable; modules imported from them forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if not name.startswith("kvclient"):
            del sys.modules[name]


def write_module(folder: pathlib.Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def test_the_committed_stub_is_up_to_date(on_path: pathlib.Path) -> None:
    committed = (EXAMPLE / "kvclient" / "__init__.pyi").read_text()
    fresh = stubgen.generate("kvclient")
    assert fresh == committed, (
        "examples/dual_api/kvclient/__init__.pyi is stale: run "
        "`cd examples/dual_api && python -m greenportal.stubgen kvclient`"
    )
    assert stubgen.generate("kvclient") == fresh  # deterministic


def mypy_config(folder: pathlib.Path) -> pathlib.Path:
    paths = [str(EXAMPLE)]
    src = pathlib.Path(greenportal.__file__).resolve().parent.parent
    if src.name != "site-packages":  # the source tree (mypy refuses site-packages here)
        paths.insert(0, str(src))
    config = folder / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\nwarn_unreachable = True\npython_version = 3.10\n"
        f"mypy_path = {':'.join(paths)}\n"
        # greenportal itself is mypy'd by the lint step, with its own stubs installed.
        "[mypy-greenportal.*]\nfollow_imports = silent\n"
    )
    return config


@pytest.mark.typing
@pytest.mark.subprocess
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_sees_the_blocking_api(tmp_path: pathlib.Path) -> None:
    config = mypy_config(tmp_path)
    done = run_python(
        "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
        "--no-pretty", "--show-error-codes", "--no-error-summary", str(USAGE),
        timeout=240, cwd=str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    expected = {
        (n, m.group(1))
        for n, line in enumerate(USAGE.read_text().splitlines(), 1)
        if (m := re.search(r"# error: ([\w-]+)$", line))
    }
    errors = re.findall(r"^.*stubgen_usage\.py:(\d+): error: (.*)  \[([\w-]+)\]$",
                        done.stdout, re.M)  # fmt: skip
    assert {(int(n), code) for n, _, code in errors} == expected, done.stdout
    assert len(errors) == len(done.stdout.splitlines()) - done.stdout.count(": note: ")
    messages = "\n".join(message for _, message, _ in errors)
    assert 'Incompatible types in "await" (actual type "float"' in messages
    assert '"_Client_keys" has no attribute "submit"' in messages


# --- annotation translation ---------------------------------------------------

SAMPLE = """
    from __future__ import annotations

    import contextlib
    import typing
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
    from typing import TYPE_CHECKING, Generic, Optional, TypeVar

    import greenportal

    if TYPE_CHECKING:
        from decimal import Decimal

    T = TypeVar("T")


    class AsyncNode(Generic[T]):
        value: T

        def __init__(self, value: T) -> None:
            self.value = value

        async def child(self, value: T) -> AsyncNode[T]:
            return AsyncNode(value)

        async def children(self) -> AsyncGenerator[AsyncNode[T], int]:
            yield self

        async def copy(self) -> typing.Self:
            return self

        def later(self) -> Awaitable[AsyncNode[T]]:
            return self.child(self.value)

        def price(self) -> Decimal:
            raise NotImplementedError

        async def __aiter__(self) -> AsyncIterator[T]:
            yield self.value


    class AsyncLeaf(AsyncNode[int]):
        async def copy(self) -> typing.Self:
            return self

        @staticmethod
        async def make(value: int) -> AsyncLeaf:
            return AsyncLeaf(value)

        @contextlib.asynccontextmanager
        async def opened(self) -> AsyncIterator[Optional[AsyncLeaf]]:
            yield self

        async def __anext__(self) -> dict[str, list[AsyncLeaf]]:
            return {}


    Node = greenportal.blocking(AsyncNode)
    Leaf = greenportal.blocking(AsyncLeaf)
    __all__ = ["Leaf", "Node", "T"]
"""


@pytest.fixture
def sample(on_path: pathlib.Path) -> str:
    if sys.version_info < (3, 11):
        pytest.skip("the sample uses typing.Self (3.11)")
    write_module(on_path, "stubgen_sample", SAMPLE)
    return stubgen.generate("stubgen_sample")


def test_wrapper_classes_mirror_their_async_classes(sample: str) -> None:
    base = "greenportal.BlockingObject[stubgen_sample.AsyncNode[T]]"
    assert f"class Node({base}, Generic[T]):" in sample
    assert "class Leaf(Node[int]):" in sample
    assert "    aio: _Aio[stubgen_sample.AsyncLeaf]" in sample
    assert "    def __init__(self, value: T) -> None: ..." in sample
    assert "    value: T" in sample


def test_results_are_translated(sample: str) -> None:
    assert "    def __call__(self, value: T) -> Node[T]: ..." in sample
    assert "    async def aio(self, value: T) -> stubgen_sample.AsyncNode[T]: ..." in sample
    assert "    def submit(self, value: T) -> concurrent.futures.Future[Node[T]]: ..." in sample
    assert "    def __call__(self) -> Generator[Node[T], int]: ..." in sample
    assert "    def aio(self) -> AsyncGenerator[stubgen_sample.AsyncNode[T], int]: ..." in sample
    # Awaitable is left alone; its argument is not translated either.
    assert "    def later(self) -> Awaitable[stubgen_sample.AsyncNode[T]]: ..." in sample
    assert "    def opened(self) -> AbstractContextManager[Leaf | None]: ..." in sample
    assert "    def __next__(self) -> dict[str, list[Leaf]]: ..." in sample
    assert "    def __iter__(self) -> Generator[T]: ..." in sample
    # A name only imported under TYPE_CHECKING cannot be evaluated: Any.
    assert "    def price(self) -> Any: ..." in sample


def test_self_and_overrides(sample: str) -> None:
    # Self stays the wrapper's own type, also in subclasses: the spec is generic in it.
    assert "    copy: _Node_copy[T, Self]" in sample
    # Node's spec is generic in T too, which Leaf binds: not derived, the override ignored.
    assert "    copy: _Leaf_copy[Self]  # type: ignore[assignment]" in sample
    assert "    make: _Leaf_make" in sample
    assert "    def __call__(self, value: int) -> Leaf: ..." in sample


def test_the_sample_stub_is_valid_python(sample: str) -> None:
    compile(sample, "stubgen_sample.pyi", "exec")


@pytest.mark.parametrize(
    ("annotation", "mode", "written"),
    [
        (collections.abc.AsyncIterator[int], "out", "Iterator[int]"),
        (typing.AsyncIterable[str], "out", "Iterable[str]"),
        (collections.abc.AsyncGenerator[int, str], "out", "Generator[int, str]"),
        (contextlib.AbstractAsyncContextManager[int], "out", "AbstractContextManager[int]"),
        (typing.AsyncContextManager[int], "out", "AbstractContextManager[int]"),
        # The old spellings on purpose: they are written the new way.
        (typing.Optional[collections.abc.AsyncIterator[int]], "out", "Iterator[int] | None"),  # noqa: UP045
        (typing.Union[int, None, str], "out", "int | str | None"),  # noqa: UP007
        (typing.List[typing.Tuple[int, ...]], "out", "list[tuple[int, ...]]"),  # noqa: UP006
        (typing.Dict[str, typing.AsyncIterator[int]], "out", "dict[str, Iterator[int]]"),  # noqa: UP006
        (collections.abc.AsyncIterator[int], "in", "AsyncIterator[int]"),
        (collections.abc.AsyncIterator[int], "raw", "AsyncIterator[int]"),
        (collections.abc.Awaitable[int], "out", "Awaitable[int]"),
        (collections.abc.Coroutine[typing.Any, typing.Any, int], "out", "Coroutine[Any, Any, int]"),
        (collections.abc.Callable[[int], str], "out", "Callable[[int], str]"),
        (collections.abc.Callable[..., str], "out", "Callable[..., str]"),
        (typing.Literal["a", 1], "out", "Literal['a', 1]"),
        (tuple[()], "out", "tuple[()]"),
        (type(None), "out", "None"),
    ],
)
def test_annotation_translation(annotation: object, mode: str, written: str) -> None:
    builder = stubgen._Builder(sys.modules[__name__], {})
    assert builder.fmt(annotation, mode, stubgen._Context()) == written


def test_wrapped_classes_translate_in_arguments_at_the_top_level_only(
    on_path: pathlib.Path,
) -> None:
    write_module(on_path, "stubgen_args", """
        import greenportal

        class AsyncThing:
            async def merge(self, other: "AsyncThing | None", more: "list[AsyncThing]") -> None:
                pass

        Thing = greenportal.blocking(AsyncThing)
    """)  # fmt: skip
    stub = stubgen.generate("stubgen_args")
    assert "    def __call__(self, other: Thing | None, more: list[AsyncThing]) -> None" in stub


def test_a_class_decorated_with_blocking_gets_its_blocking_signatures(
    on_path: pathlib.Path,
) -> None:
    # mypy ignores what a class decorator returns; the stub is what fixes that.
    write_module(on_path, "stubgen_decorated", """
        import greenportal

        @greenportal.blocking
        class Counter:
            async def add(self, n: int) -> int:
                return n
    """)  # fmt: skip
    stub = stubgen.generate("stubgen_decorated")
    assert "class Counter(" in stub
    assert "    def __call__(self, n: int) -> int: ..." in stub
    assert "    async def aio(self, n: int) -> int: ..." in stub


def test_wrappers_of_other_modules_are_imported(on_path: pathlib.Path) -> None:
    write_module(on_path, "stubgen_other", """
        import greenportal
        import kvclient

        async def open_client() -> kvclient.Client.aio:
            raise NotImplementedError

        open_client_blocking = greenportal.blocking(open_client)
        __all__ = ["open_client_blocking"]
    """)  # fmt: skip
    stub = stubgen.generate("stubgen_other", also=["kvclient"])
    assert "from kvclient import Client" in stub
    assert "    def __call__(self) -> Client: ..." in stub
    assert "    async def aio(self) -> kvclient._impl.AsyncClient: ..." in stub


# --- the command ---------------------------------------------------------------


def test_cli_writes_under_outdir(on_path: pathlib.Path) -> None:
    out = on_path / "out"
    assert stubgen.main(["kvclient", "kvclient._impl", "-o", str(out)]) == 0
    assert (out / "kvclient" / "__init__.pyi").read_text() == stubgen.generate("kvclient")
    assert (out / "kvclient" / "_impl.pyi").is_file()


def test_cli_missing_module(on_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = on_path / "out"
    assert stubgen.main(["kvclient", "no_such_module_here", "-o", str(out)]) == 2
    assert capsys.readouterr().err == (
        "python -m greenportal.stubgen: error: no module named 'no_such_module_here'\n"
    )
    assert not out.exists()  # nothing written half-way, not even kvclient's stub


def test_cli_module_that_fails_to_import(
    on_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_module(on_path, "stubgen_broken", "import no_such_dependency\n")
    write_module(on_path, "stubgen_raises", "raise RuntimeError('no config')\n")
    assert stubgen.main(["stubgen_broken"]) == 2
    assert "cannot import 'stubgen_broken': ModuleNotFoundError: No module named " in (
        capsys.readouterr().err
    )
    assert stubgen.main(["stubgen_raises"]) == 2
    assert capsys.readouterr().err.endswith(
        "cannot import 'stubgen_raises': RuntimeError: no config\n"
    )
    assert not list(on_path.glob("*.pyi"))


@pytest.mark.subprocess
def test_python_m_greenportal_stubgen(tmp_path: pathlib.Path) -> None:
    done = run_python("-m", "greenportal.stubgen", "no_such_module_here", cwd=str(tmp_path))
    assert done.returncode == 2
    assert "error: no module named 'no_such_module_here'" in done.stderr
