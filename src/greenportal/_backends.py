"""The two event loops behind one small interface.

Everything greenportal needs from an event loop fits in :class:`Backend`:
find the current task, read and replace a task's coroutine, and two kinds of
yield (a checkpoint, and a schedule point that is not a cancellation point).
The rest of the library calls through a backend object and never branches on
library names.

Detection never imports an event loop: Trio is consulted only if ``trio`` is
already in ``sys.modules``, asyncio only if ``asyncio`` is (the approach of
sniffio).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from . import _ctask


class Backend:
    """Operations on one event loop library.  Subclasses fill them in."""

    name: str = ""
    # How to spell a bare yield in this library, for error messages.
    sleep0: str = ""

    def current_task(self) -> object | None:
        raise NotImplementedError

    def get_coro(self, task: Any) -> object:
        raise NotImplementedError

    def set_coro(self, task: Any, coro: object) -> None:
        raise NotImplementedError

    def checkpoint(self) -> Awaitable[None]:
        """A cancellation point and a schedule point."""
        raise NotImplementedError

    def schedule_point(self) -> Awaitable[None]:
        """Let other tasks run; a pending cancellation stays pending."""
        raise NotImplementedError

    def task_id(self, task: Any) -> int | None:
        """What a portal of *task* records to recognise its task, if needed."""
        return None

    def prepare(self) -> None:
        """Called before a portal is made on the current loop."""

    def owns(self, task: object) -> bool:
        raise NotImplementedError


class AsyncioBackend(Backend):
    name = "asyncio"
    sleep0 = "asyncio.sleep(0)"

    def __init__(self) -> None:
        import asyncio
        import asyncio.tasks

        from . import _portal

        self._asyncio = asyncio
        self._pytask: type | None = getattr(asyncio.tasks, "_PyTask", None)
        self._ctask: type | None = getattr(asyncio.tasks, "_CTask", None)
        prepare_loop = None
        if sys.version_info >= (3, 12):
            from . import _eager

            prepare_loop = _eager.guard_loop
        _portal.bind_current_asyncio_task(
            asyncio.current_task, asyncio._get_running_loop, prepare_loop
        )

    def current_task(self) -> object | None:
        try:
            return self._asyncio.current_task()
        except RuntimeError:
            return None

    def get_coro(self, task: Any) -> object:
        if task.done():
            # A finished task has no coroutine to speak of; and on CPython
            # 3.12.0-3.12.2, get_coro() on a task finished by an eager factory
            # crashes the interpreter (it returns NULL).
            return None
        return task.get_coro()

    def set_coro(self, task: Any, coro: object) -> None:
        if self._ctask is not None and isinstance(task, self._ctask):
            _ctask.set_coro(task, coro)
        else:
            task._coro = coro

    def checkpoint(self) -> Awaitable[None]:
        return self._asyncio.sleep(0)

    async def schedule_point(self) -> None:
        task = self._asyncio.current_task()
        try:
            await _bare_yield()
        except self._asyncio.CancelledError as exc:
            # Not a cancellation point: hand the request back to the task so
            # that its next real await sees it.
            assert task is not None
            if sys.version_info >= (3, 11):
                task.uncancel()
            task.cancel(*exc.args)

    def task_id(self, task: Any) -> int | None:
        return id(task)

    def prepare(self) -> None:
        if sys.version_info >= (3, 12):
            from . import _eager

            _eager.guard_loop(self._asyncio.get_running_loop())

    def owns(self, task: object) -> bool:
        return isinstance(task, self._asyncio.Task) or (
            self._pytask is not None and isinstance(task, self._pytask)
        )


class TrioBackend(Backend):
    name = "trio"
    sleep0 = "trio.sleep(0)"

    def __init__(self) -> None:
        import trio
        import trio.lowlevel

        self._trio = trio
        self._lowlevel = trio.lowlevel
        # Trio defers Ctrl-C while protected code runs, deciding by walking
        # the interrupted frame's callers.  A portal greenlet's frame chain
        # ends in our driver functions, and a chain that ends undecided counts
        # as protected, so code in inline portals would never see Ctrl-C until
        # it yielded.  The code on a portal greenlet is the task's own code:
        # mark the drivers unprotected, as task code is.  (Trio 0.27+ marks
        # code objects; with older Trio this is a no-op.  The compiled
        # drivers have no frames, so only the Python ones need marking.)
        from . import _portal

        for driver in (_portal._worker, _portal._drive_coroutine):
            if hasattr(driver, "__code__"):
                trio.lowlevel.disable_ki_protection(driver)

    def current_task(self) -> object | None:
        try:
            return self._lowlevel.current_task()
        except RuntimeError:
            return None

    def get_coro(self, task: Any) -> object:
        return task.coro

    def set_coro(self, task: Any, coro: Any) -> None:
        old = task.coro
        task.coro = coro
        # A task already in the run queue has its resume method bound
        # (Task._next_send_fn); rebind it to the new coroutine.
        pending = task._next_send_fn
        if pending is not None:
            if pending == old.send:
                task._next_send_fn = coro.send
            elif pending == old.throw:
                task._next_send_fn = coro.throw

    def checkpoint(self) -> Awaitable[None]:
        return self._lowlevel.checkpoint()

    def schedule_point(self) -> Awaitable[None]:
        return self._lowlevel.cancel_shielded_checkpoint()

    def owns(self, task: object) -> bool:
        return isinstance(task, self._lowlevel.Task)


@types.coroutine
def _bare_yield() -> Generator[None, None, None]:
    yield


_backends: dict[str, Backend] = {}
_FACTORIES: dict[str, Callable[[], Backend]] = {"asyncio": AsyncioBackend, "trio": TrioBackend}


def get_backend(name: str) -> Backend:
    backend = _backends.get(name)
    if backend is None:
        backend = _backends[name] = _FACTORIES[name]()
    return backend


def current_backend() -> Backend | None:
    """The backend running the current task, or None if no task is running."""
    asyncio = sys.modules.get("asyncio")
    # asyncio first, as it is cheap to ask; a Trio guest run on an asyncio
    # host steps its tasks in plain callbacks, where asyncio sees no task.
    if asyncio is not None:
        loop = asyncio._get_running_loop()
        if loop is not None and asyncio.current_task(loop) is not None:
            return get_backend("asyncio")
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except (RuntimeError, AttributeError):
            pass
        else:
            return get_backend("trio")
    return None


def _unsupported_library() -> str | None:
    sniffio = sys.modules.get("sniffio")
    if sniffio is None:
        return None
    try:
        name: str = sniffio.current_async_library()
    except Exception:
        return None
    return name


def current_backend_and_task() -> tuple[Backend, object]:
    """The current backend and task; RuntimeError that explains if there is none."""
    # The asyncio case inline (every new portal asks): the same questions as
    # current_backend(), without asking asyncio for the task twice.
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        loop = asyncio._get_running_loop()
        if loop is not None:
            task = asyncio.current_task(loop)
            if task is not None:
                return _backends.get("asyncio") or get_backend("asyncio"), task
    backend = current_backend()
    if backend is not None:
        task = backend.current_task()
        if task is not None:
            return backend, task
    other = _unsupported_library()
    if other is not None and other not in ("asyncio", "trio"):
        raise RuntimeError(
            f"greenportal does not support the {other!r} async library; it works under "
            "asyncio (including uvloop and anyio on asyncio) and Trio (including anyio on Trio)"
        )
    raise RuntimeError(
        "greenportal found no running async task in this thread: portals live in "
        "asyncio or Trio tasks. Call this from inside a task (for example under "
        "asyncio.run() or trio.run())"
    )


def backend_for_task(task: object) -> Backend:
    """The backend that owns *task*; TypeError if none does."""
    for name in ("trio", "asyncio"):
        if name in sys.modules:
            backend = get_backend(name)
            if backend.owns(task):
                return backend
    raise TypeError(
        f"expected an asyncio.Task or a trio.lowlevel.Task, got {type(task).__qualname__!r}"
    )
