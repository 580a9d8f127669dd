"""What every backend shares: a Runner job, installing a portal, the worker's host.

Each backend module imports this one, never the package's ``__init__``
(which imports the backend modules): so the import graph has no cycle.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import inspect
import os
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

from .._outcome import Outcome, close_refused
from .._portal import Portal


class RunnerClosedError(RuntimeError):
    """The Runner was closed before, or while, it ran this call.

    A subclass of :exc:`RuntimeError`.
    """


def is_cancellation(error: BaseException) -> bool:
    """Is *error* the cancellation exception of a loaded event loop library?"""
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and isinstance(error, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(error, trio.Cancelled)


class Job(Outcome[Any]):
    """One call on a Runner's loop, and (being an :class:`Outcome`) its outcome.

    A job is its own outcome, rather than holding one, so that a Runner round
    trip allocates nothing more than the job.  Invariant: ``done`` is held
    from creation until the outcome is stored (``value``, or ``error`` for an
    exception); :meth:`finish` releases it exactly once.
    """

    __slots__ = (
        "__weakref__",
        "args",
        "cancel_requested",
        "closing",
        "context",
        "done",
        "fn",
        "future",
        "handle",
        "kwargs",
        "started",
    )

    def __init__(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.value = None
        self.error = None
        self.done = threading.Lock()
        self.done.acquire()
        # The asyncio Task (once created) or Trio CancelScope (once started).
        self.handle: Any = None
        # Whether the task began to run (an asyncio task cancelled before its
        # first step never runs its body, so nothing would finish the job).
        self.started = False
        self.cancel_requested = False
        self.closing = False  # cancelled by Runner.close
        self.future: concurrent.futures.Future[Any] | None = None
        # A copy of the caller's context variables, for backends that take
        # it in the caller's thread (asyncio's RunnerLoop.spawn).
        self.context: contextvars.Context | None = None

    def make_awaitable(self) -> Awaitable[Any]:
        fn, args, kwargs = self.fn, self.args, self.kwargs
        self.fn = None
        self.args = ()
        self.kwargs = {}
        if not callable(fn):
            return fn  # type: ignore[no-any-return]
        aw = fn(*args, **kwargs)
        if type(aw) is not types.CoroutineType and not inspect.isawaitable(aw):
            raise TypeError(
                f"Runner.run() expected an async function, but {fn!r} returned "
                f"{type(aw).__qualname__!r}, which is not awaitable"
            )
        return aw

    def fail(self, error: BaseException) -> None:
        self.error = error

    def finish(self) -> None:
        future = self.future
        if future is not None:
            error = self.error
            try:
                if error is None:
                    future.set_result(self.value)
                elif self.closing:
                    future.set_exception(closed_error(error))
                elif is_cancellation(error):
                    future.cancel()
                else:
                    future.set_exception(error)
            except concurrent.futures.InvalidStateError:
                pass  # the caller cancelled the future first
            del error
        self.done.release()

    def result(self) -> Any:
        """The work's value; or raise its exception (RunnerClosedError if closed under it)."""
        error = self.error
        if error is None:
            return self.value
        if self.closing:
            raise closed_error(error)
        del error
        return self.unwrap()


def raised_in(error: BaseException, package: str) -> bool:
    """Was *error* raised by code of *package* (its innermost traceback frame)?"""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__")
    return isinstance(module, str) and (module == package or module.startswith(package + "."))


def wrong_library_error(message: str, cause: BaseException) -> RuntimeError:
    """The RuntimeError that replaces *cause*: an awaitable reached a loop it cannot run on."""
    error = RuntimeError(message)
    error.__cause__ = cause
    return error


def closed_error(cause: BaseException) -> RunnerClosedError:
    error = RunnerClosedError("the Runner was closed while this call was running")
    error.__cause__ = cause
    return error


def cancel_job(job: Job, call_soon: Callable[[Callable[[], object]], None]) -> None:
    """Cancel *job* on its loop if it runs, or make it fail when it starts (thread-safe).

    *call_soon* runs a function on the loop thread.  A job that has not
    started is only flagged: its task checks the flag first thing.  The flag
    is set here, in the calling thread, so that a job whose task starts
    eagerly (asyncio 3.12+), before the queued cancel runs, still sees it.
    """
    job.cancel_requested = True

    def cancel() -> None:
        if job.started:  # its handle (an asyncio Task or a Trio CancelScope) is live
            job.handle.cancel()

    call_soon(cancel)


def fail_closed(job: Job, cause: BaseException) -> None:
    """Finish *job*, if it is still waited for, with the Runner-closed error."""
    close_refused(job.fn)  # a coroutine that never ran: no "never awaited"
    if job.done.locked():
        job.closing = True
        job.fail(cause)
        job.finish()


class _PortalOps(Protocol):
    def get_coro(self, task: Any) -> object: ...
    def set_coro(self, task: Any, coro: object) -> None: ...
    def prepare(self) -> None: ...
    def task_id(self, task: Any) -> int | None: ...


def install_portal(backend: _PortalOps, task: Any) -> Portal:
    """Replace *task*'s coroutine with a portal that wraps it."""
    coro = backend.get_coro(task)
    if coro is None or getattr(coro, "cr_frame", True) is None:
        raise RuntimeError(f"cannot give a portal to {task!r}: it has already finished")
    backend.prepare()
    portal = Portal(cast(Coroutine[Any, Any, Any], coro), None, backend.task_id(task))
    backend.set_coro(task, portal)
    return portal


class ThreadHost(Protocol):
    """The task serving a worker thread's ``await_`` calls (see ``_asyncio.Host``)."""

    def request(self, aw: Awaitable[Any]) -> Any: ...


class _WorkerState(threading.local):
    # The host serving this thread, while it runs a to_thread() call.
    host: ThreadHost | None = None


worker = _WorkerState()


def _after_fork_in_child() -> None:
    worker.host = None  # its task and loop do not exist in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


Spawn = Callable[[Callable[[], Callable[[], None]]], None]
"""How a backend starts a job in a worker thread (``_threads``' thread cache).

The job returns the callable that announces its end; see ``_threads``."""


def settle(future: concurrent.futures.Future[Any], value: Any = None, error: Any = None) -> None:
    """Store an outcome in *future*, unless it was cancelled (from any thread) first."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled from another thread in between: the outcome is dropped
