"""The optional C accelerator and its pure-Python twin.

The whole suite runs on whichever implementation is active; CI runs it on
both (``GREENPORTAL_PURE_PYTHON=1`` selects the Python one).  These tests
check the selection itself and the accelerator's own argument handling.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from typing import Any

import pytest

import greenportal
from greenportal import _accel, _portal
from greenportal._portal import Portal

COMPILED = _portal.SPEEDUPS


def test_the_selected_implementation_is_active() -> None:
    if os.environ.get("GREENPORTAL_PURE_PYTHON", "") not in ("", "0"):
        assert not COMPILED
        assert Portal.send is _portal._PurePortal.send
    elif os.environ.get("GREENPORTAL_REQUIRE_SPEEDUPS"):
        assert COMPILED, "greenportal._speedups was not built (is a C compiler installed?)"
    else:
        built = importlib.util.find_spec("greenportal._speedups") is not None
        assert built == COMPILED
    if COMPILED:
        assert type(Portal.__dict__.get("send", Portal.send)).__name__ != "function"


def test_environment_variable_selects_pure_python_in_a_fresh_process() -> None:
    code = "import greenportal._portal as p; print(p.SPEEDUPS, p.Portal.__mro__[1].__name__)"
    env = {**os.environ, "GREENPORTAL_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "_PurePortal"]


def test_public_await_keeps_its_python_signature() -> None:
    import inspect

    assert list(inspect.signature(greenportal.await_).parameters) == ["aw"]
    assert "suspending only the current task" in (greenportal.await_.__doc__ or "")


async def _body() -> int:
    return 7


def test_portal_constructor_arguments() -> None:
    coro = _body()
    by_position = Portal(coro, None, 5)
    assert (by_position.coro, by_position.fn, by_position.task_id) == (coro, None, 5)
    by_name = Portal(fn=len, task_id=None)
    assert (by_name.coro, by_name.fn, by_name.task_id) == (None, len, None)
    with pytest.raises(TypeError):
        Portal(None, None, None, None)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="bogus"):
        Portal(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Portal(None, coro=coro)  # type: ignore[misc]
    by_position.close()  # never stepped: closes the coroutine, no warning
    assert coro.cr_frame is None


def test_portal_runs_and_reports_like_a_coroutine() -> None:
    async def main() -> Any:
        value = await Portal(_body())
        with pytest.raises(StopIteration) as stop:
            Portal(None, lambda: (1, 2)).send(None)
        return value, stop.value.value

    assert asyncio.run(main()) == (7, (1, 2))


@pytest.mark.skipif(not COMPILED, reason="the C accelerator is not in use")
def test_swap_coro_refuses_bad_offsets() -> None:
    speedups: Any = _accel._speedups

    async def main() -> None:
        task: Any = asyncio.current_task()
        old = task.get_coro()
        other = _body()
        with pytest.raises(ValueError, match="bad coroutine offset"):
            speedups.swap_coro(task, 3, old, other)
        with pytest.raises(ValueError, match="bad coroutine offset"):
            speedups.swap_coro(task, 1 << 20, old, other)
        # A word that does not hold the current coroutine: nothing is written.
        assert speedups.swap_coro(task, 8 * 2, object(), other) == 0
        assert task.get_coro() is old
        other.close()

    asyncio.run(main())


def test_a_stray_switch_to_the_hub_is_a_clear_error(backend: Any) -> None:
    """A greenlet in a portal that switches to the loop's greenlet gets an explanation."""
    import greenlet

    def rogue() -> None:
        hub = greenlet.getcurrent().parent
        assert hub is not None
        hub.switch("surprise")  # the portal's hub is the loop's greenlet

    async def main() -> None:
        with pytest.raises(RuntimeError, match="must not switch to that greenlet itself"):
            await greenportal.with_portal_run_sync(rogue)

    backend.run(main)


# -- checked twins: every compiled function has a Python twin, named in _accel.TWINS


def _reference(target: str) -> Any:
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, name)


def test_every_compiled_export_is_in_the_table() -> None:
    import types

    built = importlib.util.find_spec("greenportal._speedups")
    if built is None:
        pytest.skip("the C accelerator is not built here")
    speedups = importlib.import_module("greenportal._speedups")
    exported = {
        name
        for name, value in vars(speedups).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(_accel.TWINS), (
        f"exported but not in _accel.TWINS: {sorted(exported - set(_accel.TWINS))}; "
        f"in the table but not exported: {sorted(set(_accel.TWINS) - exported)}"
    )


def test_every_twin_in_the_table_is_a_python_reference_that_keeps_its_name() -> None:
    import inspect

    for compiled, target in _accel.TWINS.items():
        if target is None:
            continue
        module, reference = _reference(target)
        name = target.partition(":")[2]
        # A Python function or class, defined in that module under that name:
        # never rebound to the compiled one.
        assert inspect.isfunction(reference) or inspect.isclass(reference), target
        assert reference.__module__ == module.__name__, target
        assert reference.__name__ == name, target
        assert reference.__qualname__ == name, target
        if inspect.isclass(reference):
            assert all(
                inspect.isfunction(v) or not callable(v) for v in vars(reference).values()
            ), f"{target} holds compiled methods"
        if COMPILED:
            assert reference is not getattr(_accel._speedups, compiled), target


def test_pick_refuses_what_the_table_does_not_twin() -> None:
    with pytest.raises(KeyError, match="not a twinned function"):
        _accel.pick("configure", len)
    with pytest.raises(KeyError, match="not a twinned function"):
        _accel.pick("no_such_function", len)


def test_the_implementation_in_use_matches_the_build() -> None:
    from greenportal import _await

    picked = {
        "acquire": _portal.acquire,
        "release": _portal.release,
        "run_job": _portal.run_job,
        "drive_await": _await.drive_await,
        "await_box": _await.await_box,
        "portal_of_current_task": _await.current_portal,
        "inline_task_id": _await.inline_portal_id,
    }
    for compiled, active in picked.items():
        _, reference = _reference(_accel.TWINS[compiled] or "")
        expected = getattr(_accel._speedups, compiled) if COMPILED else reference
        assert active is expected, compiled


SUBINTERPRETER_PROBE = """
import sys
import greenportal._speedups as compiled
try:
    import _interpreters as interpreters
except ImportError:
    import _xxsubinterpreters as interpreters
code = '''
import importlib.util
spec = importlib.util.spec_from_file_location("greenportal._speedups", %r)
try:
    importlib.util.module_from_spec(spec)
except ImportError as error:
    raise SystemExit("refused: " + str(error))
raise SystemExit("loaded")
''' % compiled.__file__
interp = interpreters.create()
try:
    result = interpreters.run_string(interp, code)
    print(getattr(result, "msg", result))
except Exception as error:  # 3.12 raises what the code raised
    print(error)
finally:
    interpreters.destroy(interp)
"""


@pytest.mark.skipif(not COMPILED, reason="the C accelerator is not in use")
@pytest.mark.skipif(sys.version_info < (3, 12), reason="Py_mod_multiple_interpreters is 3.12+")
def test_extension_uses_multi_phase_init_and_declares_its_slots() -> None:
    """The module is made by PEP 489's slots (which is also where it declares
    Py_mod_gil): a sub-interpreter refuses it, as Py_mod_multiple_interpreters says."""
    out = subprocess.run(
        [sys.executable, "-c", SUBINTERPRETER_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "does not support loading in subinterpreters" in out.stdout, out.stdout
