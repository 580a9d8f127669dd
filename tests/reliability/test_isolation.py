"""Isolation: a request's identity never leaks into another request, and no foreign caller gets in.

A "request" is a task (or a thread) that puts its own user identity in a
context variable and then runs sync code that reads it after every
``await_``, while many other requests do the same at once.  Then the
hostile callers: a foreign thread, a finalizer, a signal handler and a
weakref callback, each checked for what greenportal does with it.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import greenportal
from greenportal import await_, ensure_portal

from ..conftest import CONFIGS, Backend
from ._support import count, peak, volume

user: contextvars.ContextVar[str] = contextvars.ContextVar("reliability_user")

ISO_CONFIGS = [c for c in ("asyncio-c", "asyncio-py", "uvloop", "trio") if c in CONFIGS]
if sys.version_info >= (3, 12):
    ISO_CONFIGS.append("asyncio-eager")


async def whoami(step: int) -> str:
    """The awaitable side of a request: yields a varying number of times, reads the identity."""
    for _ in range(step % 3):
        await anyio.sleep(0)
    return user.get()


def handle_request(name: str, rounds: int, all_in: Callable[[], None] | None) -> list[str]:
    """The sync side: reads the identity after every await_; returns what it saw that was wrong."""
    wrong: list[str] = []
    for step in range(rounds):
        seen_by_awaitable = await_(whoami(step + len(name)))
        seen_after = user.get()
        if seen_by_awaitable != name or seen_after != name:
            wrong.append(f"{name} saw {seen_by_awaitable}/{seen_after}")
        if step == 0 and all_in is not None:
            all_in()
        # a request may change its own identity; nobody else may see it
        user.set(name)
    return wrong


@pytest.mark.timeout(volume(60, 1200))
@pytest.mark.parametrize("config", ISO_CONFIGS)
def test_concurrent_requests_see_only_their_own_identity(config: str) -> None:
    n_requests = volume(1000, 10_000)
    rounds = volume(5, 20)
    wrong: list[str] = []
    suspended = 0
    max_suspended = 0

    async def request(i: int, gate: anyio.Event) -> None:
        nonlocal suspended, max_suspended
        name = f"user-{i}"
        user.set(name)
        await ensure_portal()

        def all_in() -> None:
            # Every request waits here until all of them got this far, so
            # that all portals are suspended at once.
            nonlocal suspended, max_suspended
            suspended += 1
            max_suspended = max(max_suspended, suspended)
            if suspended == n_requests:
                gate.set()
            await_(gate.wait())
            if user.get() != name:
                wrong.append(f"{name} saw {user.get()} after the gate")

        wrong.extend(handle_request(name, rounds, all_in))

    async def main() -> None:
        gate = anyio.Event()
        async with anyio.create_task_group() as tg:
            for i in range(n_requests):
                tg.start_soon(request, i, gate)

    Backend(config).run(main)
    assert wrong == []
    assert max_suspended == n_requests
    count("isolation: requests (tasks)", n_requests)
    count("isolation: identity checks after await_", n_requests * (rounds * 2 + 1))
    peak("isolation: requests suspended at once", max_suspended)


@pytest.mark.timeout(volume(60, 1200))
@pytest.mark.parametrize("config", [c for c in ("asyncio-c", "trio") if c in CONFIGS])
def test_requests_in_worker_threads_see_only_their_own_identity(config: str) -> None:
    n_requests = volume(200, 2000)
    rounds = volume(3, 10)
    wrong: list[str] = []

    async def request(i: int) -> None:
        name = f"user-{i}"
        user.set(name)
        wrong.extend(await greenportal.to_thread(handle_request, name, rounds, None))
        if user.get() != name:
            wrong.append(f"{name} saw {user.get()} after to_thread")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(n_requests):
                tg.start_soon(request, i)

    Backend(config).run(main)
    assert wrong == []
    count("isolation: requests (worker threads)", n_requests)
    count("isolation: identity checks after await_", n_requests * rounds * 2)


@pytest.mark.timeout(volume(60, 1200))
@pytest.mark.parametrize("where", ["runner", "default-runner"])
def test_threads_calling_a_runner_see_only_their_own_identity(where: str) -> None:
    n_threads = volume(8, 50)
    calls = volume(100, 1000)
    runner = greenportal.Runner() if where == "runner" else greenportal.default_runner()
    barrier = threading.Barrier(n_threads)
    wrong: list[str] = []

    async def check_and_change(name: str) -> str:
        await asyncio.sleep(0)
        seen = user.get()
        user.set("changed on the loop")  # stays in the call's copy of the context
        return seen

    def thread_main(i: int) -> None:
        name = f"thread-{i}"
        user.set(name)
        barrier.wait(30)
        for _ in range(calls):
            if where == "runner":
                seen = runner.run(check_and_change, name)
            else:
                seen = await_(check_and_change(name))
            if seen != name or user.get() != name:
                wrong.append(f"{name} saw {seen}/{user.get()}")

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(n_threads)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(volume(50, 1000))
        assert not any(t.is_alive() for t in threads)
    finally:
        if where == "runner":
            runner.close()
    assert wrong == []
    count("isolation: Runner calls from threads", n_threads * calls)


# --- hostile callers ------------------------------------------------------------

# What await_ says on the loop's greenlet: asyncio runs callbacks outside
# every task; Trio runs them in a system task, which has no portal.
REFUSALS = {
    "asyncio": (
        "No task is running here (not in async context): await_() was called outside any portal"
    ),
    "trio": "await_() needs a portal in the current task, and this task has none",
}


def try_await(record: list[Any], aw_factory: Callable[[], Any]) -> None:
    """Call await_ and record what happened (a result, or the exception type and message)."""
    try:
        record.append(("ok", await_(aw_factory())))
    except BaseException as exc:
        record.append((type(exc).__name__, str(exc)))


def on_hub(backend: Backend, fn: Callable[[], None]) -> None:
    """Schedule *fn* as a loop callback: it runs on the loop's own greenlet, outside every task."""
    if backend.is_trio:
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(fn)
    else:
        asyncio.get_running_loop().call_soon(fn)


async def settle() -> None:
    for _ in range(3):
        await anyio.sleep(0)


@pytest.mark.parametrize("config", [c for c in ("asyncio-c", "asyncio-py", "trio") if c in CONFIGS])
def test_foreign_thread_cannot_drive_or_enter_a_tasks_portal(config: str) -> None:
    """A thread holding another task's portal cannot step it; its await_ never runs in the task."""
    backend = Backend(config)
    seen: list[Any] = []

    async def main() -> None:
        user.set("owner")
        await ensure_portal()
        # An installed portal stands in for the task's coroutine (docs/principle.rst).
        if backend.is_trio:
            import trio

            portal = trio.lowlevel.current_task().coro
        else:
            portal = asyncio.current_task().get_coro()  # type: ignore[union-attr]
        assert type(portal).__name__ == "Portal"
        loop_future: Any = None
        if not backend.is_trio:
            loop_future = asyncio.get_running_loop().create_future()

        def foreign() -> None:
            user.set("intruder")
            for step in (lambda: portal.send(None), lambda: portal.throw(KeyError("injected"))):
                try:
                    step()
                    seen.append("stepped!")
                except BaseException as exc:
                    seen.append(type(exc).__name__)
            # await_ in this plain thread runs on the default Runner, in the
            # thread's own context, never in the task.
            try_await(seen, lambda: whoami(0))
            if loop_future is not None:
                try_await(seen, lambda: loop_future)

        def owner_sync() -> None:
            thread = threading.Thread(target=foreign)
            thread.start()
            await_(greenportal.to_thread(thread.join))
            # the task is intact: it still runs, as itself
            seen.append(("after", await_(whoami(1)), user.get()))

        owner_sync()

    backend.run(main)
    assert seen[0] == "ValueError"  # greenlet: "parent cannot be on a different thread"
    assert seen[1] == "ValueError"
    assert seen[2] == ("ok", "intruder")
    if not backend.is_trio:
        assert seen[3][0] == "RuntimeError"
        assert "bound to another event loop" in seen[3][1]
    assert seen[-1] == ("after", "owner", "owner")
    count("isolation: hostile callers refused or contained", len(seen) - 1)


class CallsAwaitInDel:
    def __init__(self, record: list[Any]) -> None:
        self.record = record

    def __del__(self) -> None:
        try_await(self.record, lambda: whoami(0))


@pytest.mark.parametrize("config", [c for c in ("asyncio-c", "asyncio-py", "trio") if c in CONFIGS])
@pytest.mark.parametrize("kind", ["finalizer", "weakref-callback", "signal-handler"])
def test_await_from_finalizers_callbacks_and_signal_handlers(config: str, kind: str) -> None:
    """On the loop's greenlet: refused with a clear RuntimeError.  Inside a portal task's code:
    they run as part of that task (the code they interrupted), as any sync call there would.
    """
    backend = Backend(config)
    record: list[Any] = []

    class Target:
        pass

    def trigger() -> None:
        if kind == "finalizer":
            CallsAwaitInDel(record)  # dropped at once
        elif kind == "weakref-callback":
            target = Target()
            ref = weakref.ref(target, lambda r: try_await(record, lambda: whoami(0)))
            del target
            assert ref() is None
        else:
            signal.raise_signal(signal.SIGUSR1)

    def handler(signum: int, frame: Any) -> None:
        try_await(record, lambda: whoami(0))

    async def main() -> None:
        user.set("the task")
        await ensure_portal()
        done = anyio.Event()

        def from_hub() -> None:
            user.set("the hub")
            try:
                trigger()
            finally:
                done.set()

        on_hub(backend, from_hub)
        await done.wait()
        await settle()
        trigger()  # now inside the portal task's sync code

    old = signal.signal(signal.SIGUSR1, handler) if kind == "signal-handler" else None
    try:
        backend.run(main)
        gc.collect()
    finally:
        if old is not None:
            signal.signal(signal.SIGUSR1, old)
    assert len(record) == 2, record
    assert record[0][0] == "RuntimeError"
    assert record[0][1].startswith(REFUSALS[backend.name]), record[0][1]
    assert record[1] == ("ok", "the task")
    count("isolation: hostile callers refused or contained", 2)
