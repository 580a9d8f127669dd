"""A real SIGINT while a portal task is suspended in await_ behaves as in native code.

Each scenario runs in a child interpreter (signal handlers are process-wide),
once with the task waiting in native code and once in sync code through a
portal; both runs must end the same way.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import pytest

from .conftest import run_python

SCRIPT = textwrap.dedent(
    """
    import signal, sys
    config, mode = sys.argv[1], sys.argv[2]
    # A parent started with SIGINT ignored (nohup, 'cmd &') passes that on;
    # start from Python's default so the scenario is the interactive one.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import greenportal

    def log(msg):
        print(msg, flush=True)

    if config == "trio":
        import trio
        sleep_forever, sleep = trio.sleep_forever, trio.sleep
    else:
        import asyncio
        async def sleep_forever():
            await asyncio.Event().wait()
        sleep = asyncio.sleep

    def sync_wait():
        try:
            greenportal.await_(sleep_forever())
        finally:
            log("sync finally")

    async def native_wait():
        try:
            await sleep_forever()
        finally:
            log("sync finally")

    def interrupter():
        # From another thread, so that the signal lands while the event loop
        # waits for I/O, as a user's Ctrl-C usually does.
        import os, time
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    async def main():
        import threading
        threading.Thread(target=interrupter, daemon=True).start()
        await body()

    async def body():
        try:
            if mode == "portal":
                await greenportal.ensure_portal()
                sync_wait()
            else:
                await native_wait()
        finally:
            log("main finally")

    try:
        if config == "trio":
            trio.run(main)
        elif sys.version_info >= (3, 11):
            def factory():
                if config == "uvloop":
                    import uvloop
                    return uvloop.new_event_loop()
                loop = asyncio.new_event_loop()
                py_task = asyncio.tasks._PyTask
                if config == "asyncio-py":
                    loop.set_task_factory(lambda loop, coro, **kw: py_task(coro, loop=loop, **kw))
                elif config == "asyncio-eager":
                    loop.set_task_factory(asyncio.eager_task_factory)
                return loop
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(main())
        else:
            if config == "uvloop":
                import uvloop
                uvloop.install()
            asyncio.run(main())
    except KeyboardInterrupt:
        log("KeyboardInterrupt")
    else:
        log("no exception")
    """
)


def run(config: str, mode: str) -> list[str]:
    out = run_python("-W", "error", "-c", SCRIPT, config, mode)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


@pytest.mark.parametrize("config", ["asyncio", "asyncio-py", "asyncio-eager", "uvloop", "trio"])
def test_sigint_while_suspended_in_await(config: Any) -> None:
    if config == "trio":
        pytest.importorskip("trio")
    if config not in {"asyncio", "trio"} and sys.version_info < (3, 11):
        pytest.skip("this configuration needs asyncio.Runner(loop_factory=...), 3.11+")
    if config == "asyncio-eager" and sys.version_info < (3, 12):
        pytest.skip("eager task factories are 3.12+")
    native = run(config, "native")
    portal = run(config, "portal")
    assert portal == native
    assert "KeyboardInterrupt" in portal
    assert "sync finally" in portal and "main finally" in portal


BUSY_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config, mode = sys.argv[1], sys.argv[2]
    import greenportal

    def busy():
        # CPU-bound sync code that never yields: Ctrl-C must still reach it
        # wherever it would reach it natively.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.2:
            pass
        return "ran to the end"

    def interrupter():
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    async def busy_async():
        return busy()

    started = []

    async def main():
        started.append(time.monotonic())
        threading.Thread(target=interrupter, daemon=True).start()
        if mode == "native":
            return busy()
        if mode == "ensure_portal":
            await greenportal.ensure_portal()
            return busy()
        if mode == "with_portal_run":
            return await greenportal.with_portal_run(busy_async)
        return await greenportal.with_portal_run_sync(busy)

    try:
        if config == "trio":
            import trio
            outcome = trio.run(main)
        else:
            import asyncio
            outcome = asyncio.run(main())
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    # Ctrl-C comes 0.2 s after main() starts and busy() would end at 1.2 s:
    # "prompt" is an interrupt that did not wait for it (with room for a
    # loaded machine), measured from main()'s start so imports do not count.
    print(outcome, "prompt" if time.monotonic() - started[0] < 1.0 else "late")
    """
)


@pytest.mark.parametrize("config", ["asyncio", "trio"])
@pytest.mark.parametrize("mode", ["ensure_portal", "with_portal_run", "with_portal_run_sync"])
def test_sigint_reaches_busy_sync_code_as_natively(config: str, mode: str) -> None:
    """Ctrl-C during CPU-bound sync code in a portal lands as it would natively.

    Regression: on Trio a portal greenlet's frame chain ended in greenportal's
    drivers, which Trio counted as KI-protected, so Ctrl-C waited for a yield.
    """
    if config == "trio":
        pytest.importorskip("trio")

    def run_busy(which: str) -> str:
        out = run_python("-c", BUSY_SCRIPT, config, which)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run_busy(mode) == run_busy("native")
