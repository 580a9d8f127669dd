"""Everything that knows an event-loop library, behind one small interface.

The interface
-------------
:class:`Backend` is what greenportal needs from an event loop library inside
one of its tasks: find the current task, read and replace a task's coroutine,
two kinds of yield (a checkpoint, and a schedule point that is not a
cancellation point), a scope that gives the tasks started in it portals, an
event that any thread may set, and a way to run a sync call in a worker
thread whose ``await_`` calls come back to the task.  :class:`RunnerLoop` is
what a :class:`~greenportal.Runner` needs from a loop it runs on a thread of
its own, and :class:`LoopEvent` the cross-thread event both hand out.

The implementations are ``_asyncio`` (asyncio, uvloop, anyio on asyncio, with
``_eager``, ``_ctask`` and ``_wake``, the cheap cross-thread wake-up), ``_trio``
(Trio, anyio on Trio) and ``_anyio`` (anyio's worker threads).  Outside this
package no module of greenportal (integrations aside) compares library names,
looks for ``trio`` in ``sys.modules`` or imports an event loop library;
``tests/test_layout.py`` checks that, and that imports go one way:
``_accel`` <- ``_portal`` <- ``_backends`` <- the rest <- ``__init__``.

The interfaces are protocols, not base classes: the implementation modules
import ``_common`` (what they share), never this module, which imports them.
So the import graph has no cycle, and mypy still checks every implementation
against its protocol where this module hands it out.

Detection never imports an event loop: Trio is consulted only if ``trio`` is
already in ``sys.modules``, asyncio only if ``asyncio`` is (the approach of
sniffio); ``_asyncio`` itself is imported only once asyncio is.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from .. import _await
from . import _anyio, _executor, _trio
from ._common import Job, RunnerClosedError, Spawn, install_portal, is_cancellation, worker

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "LOOP_DISTRIBUTIONS",
    "Backend",
    "Job",
    "LoopEvent",
    "RunnerClosedError",
    "RunnerLoop",
    "backend_for_task",
    "current_backend",
    "current_backend_and_task",
    "executor_route",
    "get_backend",
    "install_portal",
    "is_cancellation",
    "running_loop_name",
    "runner_loop",
    "thread_route",
    "unsupported_library",
]

T = TypeVar("T")

# The event loop libraries greenportal runs on or with, besides asyncio, by
# distribution name: ``python -m greenportal`` reports their versions.
LOOP_DISTRIBUTIONS = ("uvloop", "trio", "anyio")

BackendName = Literal["asyncio", "trio"]
NAMES: tuple[BackendName, ...] = ("asyncio", "trio")


class LoopEvent(Protocol):
    """Set from any thread, waited on by one task on the loop."""

    async def wait(self) -> None: ...

    def set(self) -> None:
        """Thread-safe; RuntimeError if the loop is gone."""
        ...


class Backend(Protocol):
    """Operations on one event loop library, from inside one of its tasks."""

    name: str
    # How to spell a bare yield in this library, for error messages.
    sleep0: str

    def current_task(self) -> object | None: ...
    def get_coro(self, task: Any) -> object: ...
    def set_coro(self, task: Any, coro: object) -> None: ...

    def checkpoint(self) -> Awaitable[None]:
        """A cancellation point and a schedule point."""
        ...

    def schedule_point(self) -> Awaitable[None]:
        """Let other tasks run; a pending cancellation stays pending."""
        ...

    def task_id(self, task: Any) -> int | None:
        """What a portal of *task* records to recognise its task, if needed."""
        ...

    def prepare(self) -> None:
        """Called before a portal is made on the current loop."""
        ...

    def owns(self, task: object) -> bool: ...

    def children_scope(self) -> contextlib.AbstractContextManager[None]:
        """Give a portal to every task started (transitively) inside the block."""
        ...

    def new_event(self) -> LoopEvent:
        """A cross-thread event on the current loop."""
        ...

    def spawn_future(
        self, coro: Coroutine[Any, Any, Any], future: concurrent.futures.Future[Any]
    ) -> None:
        """Run *coro* in a new task on the current loop; its outcome goes to *future*.

        The task is detached: it outlives the caller.  Cancelling *future*,
        from any thread, cancels the task; if the task is cancelled (the loop
        shutting down, say), so is *future*.
        """
        ...

    async def to_thread(self, fn: Callable[[], T], spawn: Spawn) -> T:
        """Run *fn* in a worker thread whose ``await_`` calls come back to this task.

        *spawn* starts a job in a thread of greenportal's cache, for backends
        that use it.
        """
        ...


class RunnerLoop(Protocol):
    """What a Runner needs from one event loop library, on the loop's own thread."""

    thread_id: int

    def start(self, name: str) -> None: ...

    def spawn(self, job: Job) -> None:
        """Start *job* on the loop (thread-safe)."""
        ...

    def cancel(self, job: Job) -> None:
        """Cancel *job* if it runs, or make it fail when it starts (thread-safe)."""
        ...

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run *fn* on the loop thread (thread-safe)."""
        ...

    def new_event(self) -> LoopEvent:
        """An event that loop tasks wait on and any thread sets."""
        ...

    def native_loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop; RuntimeError for other libraries."""
        ...

    def is_foreign(self, aw: object) -> bool:
        """Is *aw* bound to another loop than this one (so it cannot run here)?"""
        ...

    def shutdown(self, before: Callable[[], Awaitable[None]]) -> None:
        """Run *before* on the loop, then the shutdown sequence; join the thread.  Once."""
        ...


# -- finding the backend -------------------------------------------------------

_backends: dict[str, Backend] = {}


def _make(name: str) -> Backend:
    if name == "asyncio":
        from . import _asyncio

        return _asyncio.AsyncioBackend()
    return _trio.backend()


def get_backend(name: str) -> Backend:
    backend = _backends.get(name)
    if backend is None:
        backend = _backends[name] = _make(name)
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


def unsupported_library() -> str | None:
    """The name of an async library sniffio sees running here that we do not support."""
    sniffio = sys.modules.get("sniffio")
    if sniffio is None:
        return None
    try:
        name: str = sniffio.current_async_library()
    except Exception:
        return None
    return None if name in NAMES else name


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
    # Key phrases of greenback's messages (tests/test_greenback_compat.py).
    other = unsupported_library()
    if other is not None:
        raise RuntimeError(
            f"greenportal does not support {other} (the async library sniffio reports "
            "here); it works under asyncio (including uvloop and anyio on asyncio) and "
            "Trio (including anyio on Trio)"
        )
    if asyncio is not None and asyncio._get_running_loop() is not None:
        raise RuntimeError(
            "No asyncio task is running: an asyncio event loop runs in this thread, but "
            "outside any task (in a callback, say), and portals live in tasks. Call this "
            "from inside a task"
        )
    raise RuntimeError(
        "greenportal found no running async task in this thread (not in async context): "
        "portals live in asyncio or Trio tasks. Call this from inside a task (for "
        "example under asyncio.run() or trio.run())"
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


def _inline_task_id_slow() -> int | None:
    backend, task = current_backend_and_task()
    backend.prepare()
    return backend.task_id(task)


_await.register_inline_slow(_inline_task_id_slow)


# -- threads -------------------------------------------------------------------


def thread_route() -> Callable[[Awaitable[Any]], Any] | None:
    """How ``await_`` in this thread reaches the loop that started it, if one did.

    A greenportal ``to_thread`` worker asks its host task; a Trio worker
    thread (anyio's under Trio too) ``trio.from_thread.run``; an anyio worker
    under asyncio ``anyio.from_thread.run``.  None: no loop started this thread.
    """
    host = worker.host
    if host is not None:
        return host.request
    if _trio.in_worker_thread():
        return _trio.from_thread
    if _anyio.in_worker_thread():
        return _anyio.from_thread
    return None


def executor_route(
    exclude: Callable[[], Collection[int]],
) -> Callable[[Awaitable[Any]], Any] | None:
    """How ``await_`` in this executor thread reaches the loop that started its work.

    For threads of ``asyncio.to_thread``, ``loop.run_in_executor`` and
    :class:`~greenportal.LoopExecutor` (see ``_executor``); None in other
    threads.  *exclude* gives the thread ids of greenportal's Runner loops.  Raises
    ``RuntimeError`` where the starting loop cannot be told while one runs.
    """
    route = _executor.route(exclude)
    return route.request if route is not None else None


def running_loop_name() -> str | None:
    """What event loop runs in this thread (for error messages), or None."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        return "an asyncio event loop"
    if _trio.running_here():
        return "a Trio run"
    return None


# -- Runner loops --------------------------------------------------------------


def check_runner_options(
    backend: object, loop_factory: object | None, debug: bool | None
) -> BackendName:
    """Validate a Runner's backend options; return the backend's name."""
    if backend not in NAMES:
        raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
    if backend == "trio" and (loop_factory is not None or debug is not None):
        raise ValueError("loop_factory and debug apply to the asyncio backend only")
    return "trio" if backend == "trio" else "asyncio"


def runner_loop(
    backend: BackendName,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    debug: bool | None,
) -> RunnerLoop:
    """A not-yet-started loop of *backend* for a Runner."""
    if backend == "trio":
        return _trio.RunnerLoop()
    from . import _asyncio

    return _asyncio.RunnerLoop(loop_factory, debug)
