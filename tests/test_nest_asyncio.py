"""greenportal.nest_asyncio: nested asyncio.run() and run_until_complete() suspend one task.

apply() patches asyncio for the whole process, so every test that applies it
runs in a child interpreter (``-W error``: a warning there fails the test
through its stderr) and this process stays unpatched.  The children check
with ``check()``, not ``assert``, so that they check under ``-O`` too, and
print one ``OK`` line with what they saw, which the test compares.

The scenario matrix runs on every asyncio configuration of conftest (C Task,
pure-Python Task, eager factories on 3.12+, debug mode, uvloop) in two
modes: ``before`` (apply() at the top of the script, then the loop starts)
and ``running`` (the loop is already running when a task calls apply()).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import greenportal

pytestmark = pytest.mark.subprocess

CONFIGS = ["asyncio-c", "asyncio-py", "asyncio-debug", "uvloop"]
if sys.version_info >= (3, 12):
    CONFIGS[2:2] = ["asyncio-eager", "asyncio-py-eager"]

_SRC = str(pathlib.Path(greenportal.__file__).resolve().parent.parent)

# What every child starts with: a loop factory per configuration, the check
# helper, and the launcher that runs a main coroutine as each mode wants.
PRELUDE = '''
import asyncio, asyncio.tasks, gc, sys, threading
import uvloop
import greenportal
from greenportal import nest_asyncio

PY_TASK = getattr(asyncio.tasks, "_PyTask", asyncio.Task)
V311 = sys.version_info >= (3, 11)
V312 = sys.version_info >= (3, 12)

def check(condition, what):
    if not condition:
        raise SystemExit(f"FAILED: {what}")

def py_factory(loop, coro, **kwargs):
    return PY_TASK(coro, loop=loop, **kwargs)

def new_loop(config):
    loop = uvloop.new_event_loop() if config == "uvloop" else asyncio.new_event_loop()
    if config == "asyncio-debug":
        loop.set_debug(True)
    elif config == "asyncio-py":
        loop.set_task_factory(py_factory)
    elif config == "asyncio-eager":
        loop.set_task_factory(asyncio.eager_task_factory)
    elif config == "asyncio-py-eager":
        loop.set_task_factory(asyncio.create_eager_task_factory(PY_TASK))
    return loop

def launch(config, main):
    """Run main() on a fresh loop of *config*, the way a program would."""
    if config == "asyncio-c":
        return asyncio.run(main())
    if config == "asyncio-debug":
        return asyncio.run(main(), debug=True)
    if config == "uvloop":
        return uvloop.run(main())
    if V311:
        with asyncio.Runner(loop_factory=lambda: new_loop(config)) as runner:
            return runner.run(main())
    loop = new_loop(config)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()

def text(error):
    """An exception's message with its notes (the hint is a note on 3.11+)."""
    return "\\n".join([str(error), *getattr(error, "__notes__", [])])
'''

# The scenario: nested calls in the main task and in a task created after
# apply(), on the outer loop, while the outer loop goes on serving others.
SCENARIO = '''
CONFIG, MODE = sys.argv[1], sys.argv[2]
EXPECTED_TASK = PY_TASK if CONFIG.startswith("asyncio-py") else asyncio.Task

async def produce(queue, n):
    for i in range(n):
        await asyncio.sleep(0.001)
        queue.put_nowait(i)

async def tick(ticks):
    while True:
        await asyncio.sleep(0)
        ticks[0] += 1

async def take(queue, ticks, add):
    """Wait for the outer loop's producer, on the outer loop; return item + add."""
    check(asyncio.get_running_loop() is OUTER, "the nested coroutine runs on the outer loop")
    check(type(asyncio.current_task()) is EXPECTED_TASK, "the task factory chain is kept")
    before = ticks[0]
    await asyncio.sleep(0.001)
    check(ticks[0] > before, "the ticker ran while the nested call waited")
    # Bound to the outer loop, fed by a task of the outer loop.
    return await queue.get() + add

async def fail():
    await asyncio.sleep(0)
    raise KeyError("nested")

def nested_calls(queue, ticks):
    """Plain sync code: every spelling of a nested run, with values and errors."""
    loop = asyncio.get_running_loop()
    got = [
        asyncio.run(take(queue, ticks, 100)),
        loop.run_until_complete(take(queue, ticks, 200)),
        asyncio.get_event_loop().run_until_complete(take(queue, ticks, 300)),
        # a Future and a Task are waited for as they are
        loop.run_until_complete(asyncio.ensure_future(take(queue, ticks, 400))),
    ]
    for call in (asyncio.run, loop.run_until_complete):
        try:
            call(fail())
        except KeyError as error:
            got.append(f"KeyError {error.args[0]}")
    # nested twice: asyncio.run inside a nested asyncio.run
    async def deeper():
        return asyncio.run(take(queue, ticks, 500))
    got.append(asyncio.run(deeper()))
    return got

async def cancellation():
    """Cancelling the caller reaches the nested coroutine, then the caller."""
    marks = []
    for name in ("run", "run_until_complete"):
        started = asyncio.Event()

        async def sleeper():
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                marks.append(f"{name}: nested coroutine cancelled")
                raise

        def sync_caller():
            try:
                if name == "run":
                    asyncio.run(sleeper())
                else:
                    asyncio.get_running_loop().run_until_complete(sleeper())
            except asyncio.CancelledError:
                marks.append(f"{name}: caller cancelled")
                raise

        async def body():
            sync_caller()

        task = asyncio.create_task(body())
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        check(task.cancelled(), "the calling task ends cancelled")
    if V311:
        async def timed():
            async with asyncio.timeout(0.01):
                asyncio.run(asyncio.sleep(30))
        try:
            await asyncio.create_task(timed())
        except TimeoutError:
            marks.append("asyncio.timeout around a nested run: TimeoutError")
    return marks

def from_callback(loop, record):
    """A task created in a plain callback: a portal; eager on eager loops."""
    async def first_step():
        record.append(greenportal.has_portal())
    loop.create_task(first_step())
    record.append("eager" if record else "lazy")

async def scenario():
    global OUTER
    OUTER = loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    ticks = [0]
    ticker = asyncio.create_task(tick(ticks))
    producer = asyncio.create_task(produce(queue, 12))
    check(greenportal.has_portal(), "the main task has a portal")
    in_main = nested_calls(queue, ticks)

    async def child():
        check(greenportal.has_portal(), "a task created after apply() has a portal")
        return nested_calls(queue, ticks)

    in_child = await asyncio.create_task(child())
    await producer
    marks = await cancellation()
    record = []
    loop.call_soon(from_callback, loop, record)
    await asyncio.sleep(0.01)
    ticker.cancel()
    debug = loop.get_debug()
    asyncio.run(asyncio.sleep(0), debug=not debug)
    check(loop.get_debug() is debug, "a nested debug= leaves the outer loop's mode alone")
    print("OK main", in_main)
    print("OK child", in_child)
    print("OK cancel", marks)
    print("OK callback", record, "debug" if debug else "no-debug")

async def apply_here():
    """The running mode: apply() inside the main task, created before it."""
    nest_asyncio.apply()
    coro = asyncio.sleep(0)
    try:
        asyncio.run(coro)
    except RuntimeError as error:
        coro.close()
        check("cannot be called from a running event loop" in str(error), "the original error")
        check("starts working once the task has yielded" in text(error), text(error))
    else:
        check(False, "the portal is active before the task yields")
    await asyncio.sleep(0)  # the bestowed portal becomes active
    await scenario()

if MODE == "before":
    nest_asyncio.apply()
    launch(CONFIG, scenario)
else:
    launch(CONFIG, apply_here)
gc.collect()
'''


def run_child(code: str, *args: str) -> list[str]:
    """Run *code* in a child interpreter; return its stdout lines, checking it is clean."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH")) if p)
    env.pop("PYTHONASYNCIODEBUG", None)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # No warning, no "Exception ignored", no "never awaited".
    assert done.stderr == ""
    return done.stdout.splitlines()


@pytest.mark.parametrize("mode", ["before", "running"])
@pytest.mark.parametrize("config", CONFIGS)
def test_nested_runs(config: str, mode: str) -> None:
    out = run_child(SCENARIO, config, mode)
    # Items 0..4 of the producer (each plus the call's offset), then 5..9.
    errors = "'KeyError nested', 'KeyError nested'"
    assert out[0] == f"OK main [100, 201, 302, 403, {errors}, 504]"
    assert out[1] == f"OK child [105, 206, 307, 408, {errors}, 509]"
    marks = [
        "run: nested coroutine cancelled",
        "run: caller cancelled",
        "run_until_complete: nested coroutine cancelled",
        "run_until_complete: caller cancelled",
    ]
    if sys.version_info >= (3, 11):
        marks.append("asyncio.timeout around a nested run: TimeoutError")
    assert out[2] == f"OK cancel {marks}"
    # A task created in a plain callback has a portal; on an eager loop it
    # still starts eagerly (its first step ran inside create_task).
    record = "[True, 'eager']" if config.endswith("eager") else "['lazy', True]"
    debug = "debug" if config == "asyncio-debug" else "no-debug"
    assert out[3] == f"OK callback {record} {debug}"
    assert len(out) == 4


IDEMPOTENT = """
import asyncio.runners
def patched():
    return (asyncio.run, asyncio.runners.run, asyncio.BaseEventLoop.run_until_complete,
            uvloop.Loop.run_until_complete, getattr(asyncio, "Runner", None) and asyncio.Runner.run)
before = patched()
nest_asyncio.apply()
first = patched()
nest_asyncio.apply()
check(patched() == first, "a second apply() patches nothing more")
check(all(a is not b for a, b in zip(before, first) if a is not None), "apply() patched all")

async def main():
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    check(factory is not None, "the loop has the portal factory")
    nest_asyncio.apply()
    nest_asyncio.apply(loop)
    check(loop.get_task_factory() is factory, "applying again keeps the factory")
    with greenportal.portals_for_children():
        nest_asyncio.apply()  # under a tree scope: ours is the scope factory's inner
        inside = loop.get_task_factory()
    check(loop.get_task_factory() is factory, "the tree scope gave our factory back")
    check(inside is not factory, "the tree scope had a factory of its own")

    async def nested():
        return type(asyncio.current_task().get_coro()).__name__

    async def child():
        task = asyncio.current_task()
        portal = task.get_coro()
        return (type(portal).__name__, type(portal.coro).__name__,
                asyncio.run(nested()))

    print("OK", await asyncio.create_task(child()))

asyncio.run(main())
"""


def test_apply_is_idempotent() -> None:
    """apply() again, on the same loop or under a tree scope, wraps nothing twice."""
    assert run_child(IDEMPOTENT) == ["OK ('Portal', 'coroutine', 'Portal')"]


HINTS = """
HINT = "greenportal.nest_asyncio"

def refused(call, *args):
    coro = asyncio.sleep(0)
    try:
        call(*args, coro)
    except RuntimeError as error:
        return text(error)
    finally:
        coro.close()
    raise SystemExit("FAILED: the call was not refused")

def report(what, message, original, hint):
    check(original in message, f"{what}: the original error ({message})")
    check(HINT in message and hint in message, f"{what}: the hint ({message})")
    print("OK", what)

def in_task_without_portal(loop):
    message = refused(asyncio.run)
    report("asyncio.run in a task without portal", message,
           "cannot be called from a running event loop", "created before nest_asyncio.apply()")
    message = refused(loop.run_until_complete)
    report("run_until_complete in a task without portal", message,
           "already running", "ensure_portal()")

async def main():
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()

    async def old_task():  # created before apply(): no portal
        await gate.wait()
        in_task_without_portal(loop)

    old = asyncio.create_task(old_task())
    await asyncio.sleep(0)
    nest_asyncio.apply()
    await asyncio.sleep(0)  # main's own portal (bestowed by apply) is active now
    gate.set()
    await old

    done = asyncio.Event()
    def callback():
        try:
            report("run_until_complete in a callback", refused(loop.run_until_complete),
                   "already running", "plain callback")
            report("asyncio.run in a callback", refused(asyncio.run),
                   "cannot be called from a running event loop", "plain callback")
        finally:
            done.set()
    loop.call_soon(callback)
    await done.wait()

    other = asyncio.new_event_loop()
    try:
        report("another loop's run_until_complete", refused(other.run_until_complete),
               "another loop is running", "another loop")
    finally:
        other.close()
    if V311:
        runner = asyncio.Runner()  # not entered: run() refuses before making a loop
        report("Runner.run", refused(runner.run), "running event loop", "asyncio.Runner")

    # asyncio.run in a thread with no loop: a fresh loop as ever, with portals,
    # that cancels the tasks main leaves behind and closes.
    result = []
    async def fresh():
        left = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0)
        result.append(asyncio.get_running_loop())
        result.append(left)
        return greenportal.has_portal()
    thread = threading.Thread(target=lambda: result.append(asyncio.run(fresh())))
    thread.start()
    thread.join()
    fresh_loop, left, had_portal = result
    check(fresh_loop is not loop and fresh_loop.is_closed(), "a fresh loop, closed after")
    check(left.cancelled(), "the task main left behind was cancelled, as asyncio.run does")
    print("OK fresh asyncio.run", had_portal)

asyncio.run(main())
"""


def test_refused_calls_keep_the_error_and_add_a_hint() -> None:
    """Outside a portal on a running loop: asyncio's RuntimeError, with a hint naming the fix."""
    expected = [
        "OK asyncio.run in a task without portal",
        "OK run_until_complete in a task without portal",
        "OK run_until_complete in a callback",
        "OK asyncio.run in a callback",
        "OK another loop's run_until_complete",
        "OK Runner.run",
        "OK fresh asyncio.run True",
    ]
    if sys.version_info < (3, 11):
        expected.remove("OK Runner.run")  # no asyncio.Runner
    assert run_child(HINTS) == expected


ERRORS = """
nest_asyncio.apply()

def raised(fn):
    try:
        fn()
    except Exception as error:
        return error
    raise SystemExit("FAILED: nothing raised")

def in_fresh_thread(fn):
    # What asyncio itself raises where no loop runs (the unpatched checks).
    box = []
    thread = threading.Thread(target=lambda: box.append(raised(fn)))
    thread.start()
    thread.join()
    return box[0]

def same(what, nested, fresh):
    check(type(nested) is type(fresh) and str(nested) == str(fresh),
          f"{what}: nested {nested!r}, fresh {fresh!r}")
    print("OK", what, type(nested).__name__)

async def agen():
    yield 1

async def coro_fn():
    return 1

async def on_which_loop():
    return asyncio.get_running_loop()

async def main():
    loop = asyncio.get_running_loop()
    check(greenportal.has_portal(), "loop.run_until_complete(main()) gives main a portal")
    future = loop.create_future()
    for what, obj in [("int", 42), ("Future", future), ("async generator", agen()),
                      ("coroutine function", coro_fn)]:
        same(f"asyncio.run({what})", raised(lambda: asyncio.run(obj)),
             in_fresh_thread(lambda: asyncio.run(obj)))

    def fresh_loop_run(obj):
        other = asyncio.new_event_loop()
        try:
            other.run_until_complete(obj)
        finally:
            other.close()
    same("run_until_complete(int)", raised(lambda: loop.run_until_complete(42)),
         in_fresh_thread(lambda: fresh_loop_run(42)))
    same("run_until_complete(another loop's Future)",
         raised(lambda: loop.run_until_complete(FOREIGN)),
         in_fresh_thread(lambda: fresh_loop_run(FOREIGN)))

    coro = asyncio.sleep(0)
    fresh = asyncio.sleep(0)
    same("asyncio.run(coro, bogus=1)", raised(lambda: asyncio.run(coro, bogus=1)),
         in_fresh_thread(lambda: asyncio.run(fresh, bogus=1)))
    coro.close()
    fresh.close()
    if V312:
        # The nested run uses the outer loop whatever loop_factory says.
        got = asyncio.run(on_which_loop(), loop_factory=asyncio.new_event_loop, debug=True)
        check(got is loop, "loop_factory is not called by a nested asyncio.run")
        print("OK loop_factory")
    await ordering()

async def ordering():
    # Each nested call returns when its own coroutine is done, whatever else waits.
    done = []
    def waits(name, seconds):
        asyncio.run(asyncio.sleep(seconds))
        done.append(name)
    async def short():
        await asyncio.sleep(0)
        waits("short", 0.02)
    async def long():
        # Not inside short's call: short's sync frames are not on this stack.
        import inspect
        check("waits" not in [f.function for f in inspect.stack()], "a separate stack")
        waits("long", 0.2)
    await asyncio.gather(long(), short())
    print("OK order", done)

FOREIGN = asyncio.new_event_loop().create_future()
loop = asyncio.new_event_loop()
loop.run_until_complete(main())
loop.close()
FOREIGN.get_loop().close()
del FOREIGN
gc.collect()
"""


def test_what_is_not_a_coroutine_is_refused_as_asyncio_refuses_it() -> None:
    """Nested calls raise what asyncio raises on a fresh loop, and leak nothing."""
    expected = [
        "OK asyncio.run(int) ValueError",
        "OK asyncio.run(Future) ValueError",
        "OK asyncio.run(async generator) ValueError",
        "OK asyncio.run(coroutine function) ValueError",
        "OK run_until_complete(int) TypeError",
        "OK run_until_complete(another loop's Future) ValueError",
        "OK asyncio.run(coro, bogus=1) TypeError",
        "OK loop_factory",
        # (nest_asyncio returns the short call only after the long one.)
        "OK order ['short', 'long']",
    ]
    if sys.version_info < (3, 12):
        expected.remove("OK loop_factory")  # asyncio.run has no loop_factory
    assert run_child(ERRORS) == expected


UVLOOP_C_TYPE = """
import warnings
check(getattr(uvloop.Loop.run_until_complete, "_greenportal_nest", False) is False, "unpatched")
loop = uvloop.loop.Loop()  # the C type itself, not uvloop's Python subclass uvloop.Loop
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    nest_asyncio.apply(loop)
    nest_asyncio.apply(loop)
check([str(w.message).split(",")[0] for w in caught]
      == ["greenportal.nest_asyncio cannot patch uvloop.loop.Loop"], caught)
check(getattr(uvloop.Loop.run_until_complete, "_greenportal_nest", False), "uvloop.Loop patched")

async def main():
    nested = asyncio.run(asyncio.sleep(0, "asyncio.run nests"))
    ran = []
    async def stray():
        ran.append("the refused coroutine ran anyway, as a task of its own")
    try:
        loop.run_until_complete(stray())
    except RuntimeError as error:
        message = str(error)
    # uvloop made the coroutine a task before refusing: it runs, unwaited for.
    await asyncio.sleep(0.01)
    print("OK", nested, "|", message, "|", *ran)

loop.run_until_complete(main())
loop.close()
"""


def test_uvloop_c_type() -> None:
    """uvloop.Loop is patched; a loop of the bare C type warns at apply() and
    nests asyncio.run() only, its run_until_complete raising uvloop's error."""
    assert run_child(UVLOOP_C_TYPE) == [
        "OK asyncio.run nests | this event loop is already running. | "
        "the refused coroutine ran anyway, as a task of its own"
    ]
