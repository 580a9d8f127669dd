"""greenportal as a drop-in for greenback: API parity and greenback's own test suite.

greenback's tests ship inside its package.  We run them against greenportal
(``greenback`` and its private modules aliased to greenportal in a child
interpreter) and list, with reasons, the few that pin greenback's private
internals or exact wording rather than behaviour.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import greenportal

from .conftest import gc_collect_harder, run_python

greenback = pytest.importorskip("greenback")

# Tests of greenback's suite that cannot apply to another implementation.
NOT_APPLICABLE = {
    # Our messages carry greenback's key phrases with our name in place of
    # greenback's (test_greenbacks_error_phrases_match_ours); these patterns
    # name greenback itself.
    "test_simple": "matches 'create a greenback portal' (ours: 'create a greenportal portal')",
    "test_with_portal_run": "matches 'greenback.ensure_portal' (ours: 'greenportal.ensure_portal')",
    "test_bestow": "matches 'must create a greenback portal' (ours: '... greenportal portal')",
    "test_misuse": "matches 'greenback does not support tokio' inside a Trio run (greenportal "
    "sees Trio itself, whatever sniffio says) and expects sniffio's AsyncLibraryNotFoundError "
    "from await_ outside any loop (greenportal runs it on the default Runner)",
    "test_find_ptr_in_object": "tests greenback's private ctypes helper",
    "test_portal_map_does_not_leak": "inspects greenback's private task_portals map "
    "(our equivalent: tests/test_lifetime.py)",
    "test_recursive_error": "pins greenback's own plumbing frames in the traceback; "
    "greenportal shows none (tests/test_await.py)",
    "test_uncleanable_traceback": "expects TypeError where native 'await' (and greenportal) "
    "return None: __await__ yields nothing",
    "test_awaitable": "pins greenback's own plumbing frames in the traceback",
    "test_magic": "relies on where an incidental reference cycle is collected: the child's "
    "object is kept alive by the traceback of a Cancelled that Trio's run loop still holds; "
    "greenback's (and our pure-Python) plumbing frames happen to form a cycle with it, so it "
    "dies in the main task's gc.collect(); without that cycle it dies in the run loop, as it "
    "would natively, outside any task (our own __init__/__del__ test: tests/test_adapters.py)",
    "test_exit_task_with_error": "uses trio.testing.RaisesGroup, deprecated in the Trio "
    "installed here, and the suite runs with warnings as errors",
}


def test_public_names_and_signatures_match_greenback() -> None:
    public = {n for n in dir(greenback) if not n.startswith("_")}
    missing = public - set(dir(greenportal))
    assert not missing
    for name in sorted(public):
        theirs, ours = getattr(greenback, name), getattr(greenportal, name)
        if inspect.isfunction(theirs) or inspect.isclass(theirs):
            assert callable(ours), name
            if inspect.isfunction(theirs):
                their_params = list(inspect.signature(theirs).parameters.values())
                our_params = list(inspect.signature(ours).parameters.values())
                # Callers can name every parameter but *args/**kwargs.
                assert [_shape(p) for p in their_params] == [_shape(p) for p in our_params], name


def _shape(p: inspect.Parameter) -> tuple[str, object]:
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return ("*" if p.kind in variadic else p.name, p.kind)


RUNNER = textwrap.dedent(
    """
    import sys, types
    import greenportal
    from greenportal import _backends
    # 'import greenback' (and its private modules, which its tests import
    # from) now gives greenportal.
    shim = types.ModuleType("greenback._impl")
    for name in greenportal.__all__:
        setattr(shim, name, getattr(greenportal, name))
    shim.current_task = lambda: _backends.current_backend_and_task()[1]
    sys.modules["greenback"] = greenportal
    sys.modules["greenback._impl"] = sys.modules["greenback._util"] = shim
    import pytest
    tests_dir, deselect, inifile = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.exit(pytest.main([
        "-q", "-c", inifile, "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:asyncio",
        "--import-mode=importlib", "-W", "error", "--rootdir", tests_dir, "-k", deselect, tests_dir,
    ]))
    """
)


def test_greenbacks_own_suite_passes_on_greenportal(tmp_path: Any) -> None:
    tests_dir = os.path.join(os.path.dirname(greenback.__file__), "_tests")
    if not os.path.isdir(tests_dir):
        pytest.skip("this greenback install ships no tests")
    deselect = " and ".join(f"not {name}" for name in NOT_APPLICABLE)
    # An empty configuration of its own: where the virtualenv lies inside this
    # repository, pytest would otherwise find our pyproject.toml above it.
    inifile = tmp_path / "pytest.ini"
    inifile.write_text("[pytest]\n")
    out = run_python(
        "-c", RUNNER, tests_dir, deselect, str(inifile), timeout=300, cwd=os.path.dirname(tests_dir)
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


# --- greenback's error messages: the same patterns match ours ---------------------
#
# Each case provokes one of greenback's user-facing errors, through the API we
# mirror, and lists the key phrases of greenback's message as regular
# expressions; "{lib}" stands for the library's name.  The test runs every case
# against greenback and against greenportal with the same patterns, so that a
# pytest.raises(match=...) written for greenback's wording matches ours too, up
# to the name.  (Phrases we cannot match are listed in docs/migration.rst.)


def _in_asyncio_task(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


def _in_trio_task(body: Callable[[], Awaitable[None]]) -> None:
    trio = pytest.importorskip("trio")
    trio.run(body)


def _no_portal(lib: Any, run: Callable[[Any], None], sleep: Callable[[], Any]) -> None:
    async def main() -> None:
        lib.await_(sleep())

    run(main)


def _after_with_portal_run(lib: Any) -> None:
    async def main() -> None:
        await lib.with_portal_run(asyncio.sleep, 0)
        lib.await_(asyncio.sleep(0))

    _in_asyncio_task(main)


def _bestowed_not_active(lib: Any, run: Callable[[Any], None], current: Callable[[], Any]) -> None:
    async def main() -> None:
        lib.bestow_portal(current())
        lib.await_(_sleep0())

    run(main)


async def _sleep0() -> None:
    await anyio.sleep(0)


def _unsupported_library(lib: Any) -> None:
    sniffio = pytest.importorskip("sniffio")
    old, sniffio.thread_local.name = sniffio.thread_local.name, "tokio"
    try:
        lib.await_(_sleep0())
    finally:
        sniffio.thread_local.name = old


def _tree_outside_any_loop(lib: Any) -> None:
    with lib.portals_for_children():
        pass  # pragma: no cover


def _in_an_asyncio_callback(body: Callable[[], object]) -> None:
    """Run *body* in a loop callback (no task); re-raise what it raised."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def callback() -> None:
            try:
                body()
            except BaseException as error:
                done.set_exception(error)
            else:  # pragma: no cover
                done.set_result(None)

        loop.call_soon(callback)
        await done

    asyncio.run(main())


def _tree_in_an_asyncio_callback(lib: Any) -> None:
    def body() -> None:
        with lib.portals_for_children():
            pass  # pragma: no cover

    _in_an_asyncio_callback(body)


def _await_in_an_asyncio_callback(lib: Any) -> None:
    _in_an_asyncio_callback(lambda: lib.await_(asyncio.sleep(0)))


def _ensure_portal_outside_any_loop(lib: Any) -> None:
    lib.ensure_portal().send(None)


def _await_non_awaitable(lib: Any) -> None:
    async def main() -> None:
        await lib.ensure_portal()
        lib.await_(42)

    _in_asyncio_task(main)


def _with_portal_run_non_awaitable(lib: Any) -> None:
    async def main() -> None:
        await lib.with_portal_run(lambda: 42)

    _in_asyncio_task(main)


class _OnlyEnter:
    async def __aenter__(self) -> None:  # pragma: no cover
        pass


def _async_context(lib: Any, obj: object) -> None:
    with lib.async_context(obj):
        pass  # pragma: no cover


class _BadAiter:
    def __aiter__(self) -> int:
        return 42


_PY311 = sys.version_info >= (3, 11)
_PROTOCOL_ERROR = TypeError if _PY311 else AttributeError

GREENBACK_ERRORS: list[tuple[str, type[BaseException], list[str], Callable[[Any], None]]] = [
    (
        "await_ without a portal (asyncio)",
        RuntimeError,
        [
            "must create a {lib} portal",
            r"create a {lib} portal for this task in order to use '{lib}\.await_\(\)'",
            r"Try 'await {lib}\.ensure_portal\(\)'",
            r"'await {lib}\.with_portal_run\(some_fn, \*args\)'",
        ],
        lambda lib: _no_portal(lib, _in_asyncio_task, lambda: asyncio.sleep(0)),
    ),
    (
        "await_ without a portal (trio)",
        RuntimeError,
        ["must create a {lib} portal", r"{lib}\.ensure_portal"],
        lambda lib: _no_portal(lib, _in_trio_task, _sleep0),
    ),
    (
        "await_ after with_portal_run returned",
        RuntimeError,
        [r"{lib}\.ensure_portal", "create a {lib} portal"],
        _after_with_portal_run,
    ),
    (
        "await_ after bestow_portal on the current task, before yielding (asyncio)",
        RuntimeError,
        [
            "must yield to the event loop",
            r"\(try 'await asyncio\.sleep\(0\)'\) after calling '{lib}\.bestow_portal\(\)' on "
            "the current task before using the portal",
        ],
        lambda lib: _bestowed_not_active(lib, _in_asyncio_task, asyncio.current_task),
    ),
    (
        "await_ after bestow_portal on the current task, before yielding (trio)",
        RuntimeError,
        ["must yield to the event loop", r"try 'await trio\.sleep\(0\)'"],
        lambda lib: _bestowed_not_active(
            lib, _in_trio_task, lambda: pytest.importorskip("trio").lowlevel.current_task()
        ),
    ),
    (
        "an async library we do not support",
        RuntimeError,
        ["{lib} does not support tokio"],
        _unsupported_library,
    ),
    (
        "portals_for_children outside any loop",
        RuntimeError,
        ["only supported.*running under Trio", "This function is only supported"],
        _tree_outside_any_loop,
    ),
    (
        "portals_for_children in an asyncio callback",
        RuntimeError,
        ["only supported.*running under Trio"],
        _tree_in_an_asyncio_callback,
    ),
    (
        "await_ in an asyncio callback",
        RuntimeError,
        ["not in async context"],
        _await_in_an_asyncio_callback,
    ),
    (
        "ensure_portal outside async context",
        RuntimeError,
        ["not in async context"],
        _ensure_portal_outside_any_loop,
    ),
    (
        "await_ on a non-awaitable",
        TypeError,
        ["int can't be used in 'await' expression"],
        _await_non_awaitable,
    ),
    (
        "with_portal_run of a function returning a non-awaitable",
        TypeError,
        ["int can't be used in 'await' expression"],
        _with_portal_run_non_awaitable,
    ),
    (
        "async_context of an object without __aexit__",
        _PROTOCOL_ERROR,
        [
            "'_OnlyEnter' object does not support the asynchronous context manager protocol "
            r"\(missed __aexit__ method\)"
            if _PY311
            else "type object '_OnlyEnter' has no attribute '__aexit__'"
        ],
        lambda lib: _async_context(lib, _OnlyEnter()),
    ),
    (
        "async_context of a plain object",
        _PROTOCOL_ERROR,
        [
            "'object' object does not support the asynchronous context manager protocol"
            if _PY311
            else "type object 'object' has no attribute '__aexit__'"
        ],
        lambda lib: _async_context(lib, object()),
    ),
    (
        "async_iter of a non-iterable",
        TypeError,
        ["'async_iter' requires an object with __aiter__ method, got int"],
        lambda lib: lib.async_iter(42),
    ),
    (
        "async_iter whose __aiter__ returns no iterator",
        TypeError,
        ["'async_iter' received an object from __aiter__ that does not implement __anext__: int"],
        lambda lib: lib.async_iter(_BadAiter()),
    ),
]


@pytest.mark.parametrize("lib_name", ["greenback", "greenportal"])
@pytest.mark.parametrize(
    ("error", "patterns", "provoke"),
    [case[1:] for case in GREENBACK_ERRORS],
    ids=[case[0] for case in GREENBACK_ERRORS],
)
def test_greenbacks_error_phrases_match_ours(
    lib_name: str,
    error: type[BaseException],
    patterns: list[str],
    provoke: Callable[[Any], None],
) -> None:
    lib = greenback if lib_name == "greenback" else greenportal
    for pattern in patterns:
        with pytest.raises(error, match=pattern.replace("{lib}", lib_name)):
            provoke(lib)
    gc_collect_harder()  # a "never awaited" warning would fail the test here
