"""Trio behind the backend interface: portals, instruments, threads, a Runner's loop.

What lives here
---------------
* :class:`TrioBackend`: the portal operations, the task-tree scope, the
  cross-thread event and the ``to_thread`` host (Trio's own worker threads);
* :class:`AutoPortalInstrument` (public) and its hookup for tree scopes;
* Ctrl-C marking of the portal greenlet's driver frames;
* :class:`RunnerLoop`: a Runner's Trio run on its own thread;
* recognising a Trio worker thread, and awaiting from one.

Trio is optional, and ``import greenportal`` must not import it (the public
:class:`AutoPortalInstrument` is defined here): everything that needs the
``trio`` module imports it inside the function, which only ever runs under
a Trio run (or once a Trio Runner is asked for), when it is loaded already.

Task trees
----------
Trio tells instruments about every new task, so an instrument gives a portal
to each task spawned into a nursery that a registered task opened inside the
scope.  We record the parent's nursery count on entry, so that nurseries
opened *before* the scope (say, the one a task was started in) are not
affected.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _portal
from .._outcome import close_refused
from .._portal import Portal
from ._common import (
    Job,
    Spawn,
    cancel_job,
    fail_closed,
    install_portal,
    raised_in,
    settle,
    wrong_library_error,
)

if TYPE_CHECKING:
    import trio
    from trio.abc import Instrument as _Instrument
else:
    # Trio accepts any object with the hook methods; subclassing its ABC would
    # import Trio into asyncio programs.
    _Instrument = object

T = TypeVar("T")


class TrioBackend:
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
        for driver in (_portal._worker, _portal._run_job, _portal._drive_coroutine):
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

    def task_id(self, task: Any) -> int | None:
        return None  # a Trio task never steps inside another's portal greenlet

    def prepare(self) -> None:
        pass

    def owns(self, task: object) -> bool:
        return isinstance(task, self._lowlevel.Task)

    # -- task trees, threads ---------------------------------------------------

    def children_scope(self) -> contextlib.AbstractContextManager[None]:
        return _children_scope()

    def new_event(self) -> Event:
        return Event(self._trio, self._lowlevel.current_trio_token())

    def spawn_future(
        self, coro: Coroutine[Any, Any, Any], future: concurrent.futures.Future[Any]
    ) -> None:
        trio = self._trio
        token = self._lowlevel.current_trio_token()
        scope = trio.CancelScope()

        # A system task: it outlives the caller's nursery, as the future
        # asks.  Its exceptions must not escape (they would end the run).
        async def run() -> None:
            try:
                with scope:
                    settle(future, await coro)
            except trio.Cancelled:
                future.cancel()  # the run is ending
                raise
            except BaseException as error:
                settle(future, error=error)
                del error
                return
            if scope.cancelled_caught:
                future.cancel()  # our scope was cancelled: the future was

        def cancelled(future: concurrent.futures.Future[Any]) -> None:
            if future.cancelled():
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)

        self._lowlevel.spawn_system_task(run, context=contextvars.copy_context())
        future.add_done_callback(cancelled)

    async def to_thread(self, fn: Callable[[], T], spawn: Spawn) -> T:
        # Trio's own worker threads give trio.from_thread.run (and so await_)
        # the semantics we want; the caller's limiter replaces Trio's default.
        unlimited = self._trio.CapacityLimiter(float("inf"))
        return await self._trio.to_thread.run_sync(fn, limiter=unlimited)


_backend: TrioBackend | None = None


def backend() -> TrioBackend:
    global _backend
    if _backend is None:
        _backend = TrioBackend()
    return _backend


# -- the cross-thread event ------------------------------------------------------


class Event:
    """Set from any thread, waited on by one task of the run; re-arms after each wait."""

    def __init__(self, trio: Any, token: Any) -> None:
        self._trio = trio
        self._token = token
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = self._trio.Event()

    def set(self) -> None:
        """Thread-safe; RuntimeError (RunFinishedError) if the run is over."""
        self._token.run_sync_soon(self._set)

    def _set(self) -> None:
        self._event.set()


# -- task trees ------------------------------------------------------------------


class AutoPortalInstrument(_Instrument):
    """A Trio instrument that gives new tasks portals.

    :func:`portals_for_children` and :func:`with_portal_run_tree` add one for
    the duration of their scope.  Pass an instance to ``trio.run(...,
    instruments=[AutoPortalInstrument()])`` to give every task of the run a
    portal, system tasks included.
    """

    def __init__(self) -> None:
        # {task: number of child nurseries it had when its scope began};
        # children spawned into nurseries at or past that index get portals.
        self._tasks: dict[Any, int] = {}
        # How many scopes (or the trio.run() that was given us) use us.
        self._refs = 0

    def before_run(self) -> None:
        """Trio's hook, called only when the instrument was passed to ``trio.run()``."""
        self._refs = 1
        _instrument_var().set(self)

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        """Trio's hook: give *task* a portal if its parent's scope covers it."""
        nursery = task.parent_nursery
        if nursery is None:  # the init task: seen only when given to trio.run()
            self._adopt(task)
            return
        parent = nursery.parent_task
        depth = self._tasks.get(parent)
        if depth is not None and parent.child_nurseries.index(nursery) >= depth:
            self._adopt(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        """Trio's hook: forget *task*."""
        self._tasks.pop(task, None)

    def _adopt(self, task: trio.lowlevel.Task) -> None:
        coro: object = task.coro
        if not isinstance(coro, Portal):
            install_portal(backend(), task)
        self._tasks[task] = 0


_trio_runvar: Any = None


def _instrument_var() -> Any:
    global _trio_runvar
    if _trio_runvar is None:
        import trio.lowlevel

        _trio_runvar = trio.lowlevel.RunVar("greenportal_instrument", default=None)
    return _trio_runvar


@contextlib.contextmanager
def _children_scope() -> Iterator[None]:
    import trio.lowlevel

    task = trio.lowlevel.current_task()
    var = _instrument_var()
    instrument: AutoPortalInstrument | None = var.get()
    if instrument is None:
        instrument = AutoPortalInstrument()
        trio.lowlevel.add_instrument(instrument)
        var.set(instrument)
    elif task in instrument._tasks:
        yield  # an enclosing scope of this task already covers us
        return
    instrument._tasks[task] = len(task.child_nurseries)
    instrument._refs += 1
    try:
        yield
    finally:
        instrument._tasks.pop(task, None)
        instrument._refs -= 1
        if instrument._refs == 0:
            var.set(None)
            trio.lowlevel.remove_instrument(instrument)


# -- worker threads ----------------------------------------------------------------


def in_worker_thread() -> bool:
    """Is this a worker thread of ``trio.to_thread.run_sync`` (which can call back)?"""
    trio = sys.modules.get("trio")
    threads = getattr(trio, "_threads", None)
    data = getattr(threads, "PARENT_TASK_DATA", None)
    return data is not None and getattr(data, "token", None) is not None


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def from_thread(aw: Awaitable[T]) -> T:
    """Run *aw* in the task that started this worker thread."""
    import trio.from_thread

    return trio.from_thread.run(_await, aw)


def running_here() -> bool:
    """Does a Trio run own this thread?"""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


# -- a Runner's loop -------------------------------------------------------------

ASYNCIO_ON_TRIO = (
    "an asyncio awaitable (or one of another library than Trio) reached a Trio Runner, "
    "which can only run Trio code. Run it on an asyncio Runner: for await_() and "
    "blocking() in threads with no event loop, greenportal.set_default_runner(None) (the "
    "automatic asyncio Runner) or greenportal.set_default_runner(greenportal.Runner()); "
    "for explicit calls, greenportal.Runner().run(...)"
)


def _asyncio_here(error: BaseException) -> BaseException:
    """*error*, or a clear RuntimeError if it says that asyncio code ran in this run.

    asyncio code in a Trio run finds no asyncio loop ("no running event
    loop", or an AttributeError on a missing loop), or yields what Trio does
    not understand ("unrecognized yield message", a Future, say).
    """
    if isinstance(error, TypeError) and "unrecognized yield message" in str(error):
        return wrong_library_error(ASYNCIO_ON_TRIO, error)
    if type(error) in (RuntimeError, AttributeError) and raised_in(error, "asyncio"):
        return wrong_library_error(ASYNCIO_ON_TRIO, error)
    return error


class RunnerLoop:
    """A Trio run in its own thread, for a Runner."""

    def __init__(self) -> None:
        import trio

        self._trio = trio
        self.thread_id = 0
        self._token: Any = None
        self._stop: Any = None
        # Jobs begun and not finished.  Touched on the loop thread only.
        self._jobs: set[Job] = set()
        self._idle: Any = None  # a trio.Event while shutting down
        self._closing = False
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self, name: str) -> None:
        trio = self._trio
        ready = threading.Event()

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self.thread_id = threading.get_ident()
            ready.set()
            await self._stop.wait()

        def run() -> None:
            try:
                trio.run(main)
            except BaseException as error:  # pragma: no cover - Trio internal failure
                self._failure = error
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        ready.wait()
        if self._token is None:
            raise RuntimeError("the Trio runner failed to start") from self._failure

    def native_loop(self) -> Any:
        raise RuntimeError("Runner.loop is for asyncio runners; this one runs Trio")

    def is_foreign(self, aw: object) -> bool:
        return False  # Trio has no loop-bound futures to check

    def spawn(self, job: Job) -> None:
        context = contextvars.copy_context()
        self._token.run_sync_soon(self._begin, job, context)

    def _begin(self, job: Job, context: contextvars.Context) -> None:
        if self._closing:
            fail_closed(job, self._trio.RunFinishedError("the Runner is closing"))
            return
        self._jobs.add(job)
        self._trio.lowlevel.spawn_system_task(self._drive, job, context=context)

    async def _drive(self, job: Job) -> None:
        try:
            with self._trio.CancelScope() as scope:
                job.handle = scope
                job.started = True
                try:
                    if job.cancel_requested or job.closing:
                        scope.cancel()
                        # Raises Cancelled, so that the work does not start (it
                        # would run up to its first checkpoint otherwise).
                        await self._trio.lowlevel.checkpoint()
                    job.value = await job.make_awaitable()
                except BaseException as error:
                    job.fail(_asyncio_here(error))
                    close_refused(job.fn)
        finally:
            self._jobs.discard(job)
            if not self._jobs and self._idle is not None:
                self._idle.set()
            job.finish()

    def cancel(self, job: Job) -> None:
        """Cancel *job* if it runs, or make it fail when it starts (thread-safe)."""
        cancel_job(job, self.call_soon)

    def call_soon(self, fn: Callable[[], object]) -> None:
        self._token.run_sync_soon(fn)

    def new_event(self) -> Event:
        return Event(self._trio, self._token)

    def shutdown(self, before: Callable[[], Awaitable[None]]) -> None:
        """Run *before* in the run, then cancel what is left; join the thread."""
        assert self._thread is not None
        trio = self._trio

        async def sequence() -> None:
            await before()
            self._closing = True
            if self._jobs:
                self._idle = trio.Event()
                for job in self._jobs:
                    job.closing = True
                    if job.started:
                        job.handle.cancel()
                await self._idle.wait()
            self._stop.set()

        self._token.run_sync_soon(lambda: trio.lowlevel.spawn_system_task(sequence))
        self._thread.join()
        for job in list(self._jobs):  # pragma: no cover - jobs end before the run does
            fail_closed(job, trio.RunFinishedError("the Runner closed"))
