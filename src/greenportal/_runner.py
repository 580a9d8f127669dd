"""Runner: an event loop kept alive in a daemon thread, for synchronous programs.

Why a long-lived loop
---------------------
A sync program that calls ``asyncio.run(coro)`` for every async call gets a
new loop each time, and everything bound to a loop (an asyncpg pool, an
aiohttp session, an ``asyncio.Lock``) dies with it.  A Runner keeps one loop
running in a daemon thread; callers in any thread hand it work and block for
the result, so loop-bound resources live as long as the Runner.  When no event
loop runs in a thread, :func:`greenportal.await_` uses :func:`default_runner`.

How a call travels
------------------
``run()`` packs the work into a :class:`_Job` whose ``done`` lock starts out
held, schedules the job's start on the loop thread (``call_soon_threadsafe``
for asyncio, ``TrioToken.run_sync_soon`` for Trio), and blocks acquiring the
lock.  On the loop the job becomes a task that awaits the work, stores the
outcome on the job and releases the lock.  That is two thread wake-ups per
round trip (the loop's self-pipe, then the caller's lock), the least a thread
hop can cost.  ``asyncio.run_coroutine_threadsafe`` does the same hop through
a ``concurrent.futures.Future``, a condition variable and two chained
callbacks; we keep a bare lock on the hot path and make a
``concurrent.futures.Future`` only for :meth:`Runner.submit`.

The task catches ``BaseException``: a ``KeyboardInterrupt`` or ``SystemExit``
raised by the work is the caller's to handle, and letting it escape would stop
the loop thread under every other caller.

Contexts and iterators live in one task
---------------------------------------
``wrap_context`` enters and exits the async context manager inside one
long-lived *holder* task, which sleeps between ``__aenter__`` and
``__aexit__``: cancel scopes, task groups and ``asyncio.timeout`` must be
entered and exited by the same task.  ``wrap_iter`` likewise drives the whole
iteration in one task and closes the iterator there when the consumer stops,
breaks, is collected, or the Runner closes.

Shutdown order (``close``)
--------------------------
1. exit the contexts entered with ``enter_context``, last first;
2. cancel every remaining task and wait for it;
3. close async generators (``loop.shutdown_asyncgens``);
4. shut down the default executor;
5. stop the loop and join the thread, then close the loop.
Trio does 3 and 4 itself when its run ends.

Fork and Ctrl-C
---------------
After ``fork()`` the child has the Runner objects but not their threads; an
at-fork hook resets every Runner to "not started", so the child gets a fresh
loop on first use (contexts entered in the parent are not re-entered).  The
default Runner is dropped, and a new one made on demand.

Only the main thread receives ``SIGINT``, and CPython interrupts a blocked
``Lock.acquire`` to raise ``KeyboardInterrupt`` there.  The Runner then
cancels the work on the loop, waits for it to finish unwinding (a second
Ctrl-C stops waiting), and re-raises ``KeyboardInterrupt``.

Known gaps: Trio runners need Trio installed; a Runner's loop thread cannot
call its own ``run()`` (it raises rather than deadlock).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextvars
import inspect
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

if TYPE_CHECKING:
    import asyncio

P = ParamSpec("P")
T = TypeVar("T")

_UNSET: Any = object()


class RunnerClosedError(RuntimeError):
    """The Runner was closed before, or while, it ran this call.

    A subclass of :exc:`RuntimeError`.
    """


class _Job:
    """One call on the runner's loop, and its outcome.

    Invariant: ``done`` is held from creation until the outcome is stored;
    ``_finish`` releases it exactly once.
    """

    __slots__ = (
        "__weakref__",
        "args",
        "cancel_requested",
        "closing",
        "done",
        "error",
        "fn",
        "future",
        "handle",
        "kwargs",
        "started",
        "value",
    )

    def __init__(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()
        # The asyncio Task (once created) or Trio CancelScope (once started).
        self.handle: Any = None
        # Whether the asyncio task began to run (a task cancelled before its
        # first step never runs its body, so nothing would finish the job).
        self.started = False
        self.cancel_requested = False
        self.closing = False  # cancelled by Runner.close
        self.future: concurrent.futures.Future[Any] | None = None

    def make_awaitable(self) -> Awaitable[Any]:
        fn, args, kwargs = self.fn, self.args, self.kwargs
        self.fn = None
        self.args = ()
        self.kwargs = {}
        if not callable(fn):
            return fn  # type: ignore[no-any-return]
        aw = fn(*args, **kwargs)
        if not inspect.isawaitable(aw):
            raise TypeError(
                f"Runner.run() expected an async function, but {fn!r} returned "
                f"{type(aw).__qualname__!r}, which is not awaitable"
            )
        return aw

    def finish(self) -> None:
        future = self.future
        if future is not None:
            try:
                if self.error is None:
                    future.set_result(self.value)
                elif self.closing:
                    future.set_exception(_closed_error(self.error))
                elif _is_cancellation(self.error):
                    future.cancel()
                else:
                    future.set_exception(self.error)
            except concurrent.futures.InvalidStateError:
                pass  # the caller cancelled the future first
        self.done.release()

    def outcome(self) -> Any:
        error = self.error
        if error is None:
            return self.value
        if self.closing:
            raise _closed_error(error)
        self.error = None  # no cycle through the traceback
        try:
            raise error
        finally:
            del error


def _closed_error(cause: BaseException) -> RunnerClosedError:
    error = RunnerClosedError("the Runner was closed while this call was running")
    error.__cause__ = cause
    return error


def _is_cancellation(error: BaseException) -> bool:
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and isinstance(error, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(error, trio.Cancelled)


class _Loop:
    """What a Runner needs from one event loop library, on its thread."""

    thread_id: int = 0

    def start(self, name: str) -> None:
        raise NotImplementedError

    def spawn(self, job: _Job) -> None:
        """Start *job* on the loop (thread-safe)."""
        raise NotImplementedError

    def cancel(self, job: _Job) -> None:
        """Cancel *job* if it runs, or make it fail when it starts (thread-safe)."""

        def cancel() -> None:
            job.cancel_requested = True
            if job.started:  # its handle (Task or CancelScope) is live
                job.handle.cancel()

        self.call_soon(cancel)

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run *fn* on the loop thread (thread-safe)."""
        raise NotImplementedError

    def new_event(self) -> _LoopEvent:
        """An event that loop tasks wait on and any thread sets."""
        raise NotImplementedError

    def shutdown(self, contexts: list[_Holder]) -> None:
        """Run the shutdown sequence and join the thread.  Called once."""
        raise NotImplementedError


class _LoopEvent:
    """Set from any thread, waited on by one task on the loop."""

    async def wait(self) -> None:
        raise NotImplementedError

    def set(self) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------- asyncio


class _AsyncioEvent(_LoopEvent):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future = loop.create_future()

    async def wait(self) -> None:
        await self._future
        self._future = self._loop.create_future()

    def set(self) -> None:
        self._loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)


class _AsyncioLoop(_Loop):
    def __init__(
        self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, debug: bool | None
    ) -> None:
        import asyncio

        self._asyncio = asyncio
        self._factory = loop_factory or asyncio.new_event_loop
        self._debug = debug
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Jobs begun and not finished.  Touched on the loop thread only.
        self._jobs: set[_Job] = set()
        self._closing = False

    def start(self, name: str) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                loop = self._factory()
                if self._debug is not None:
                    loop.set_debug(self._debug)
                self._asyncio.set_event_loop(loop)
                self.loop = loop
                self.thread_id = threading.get_ident()
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
                # Run what was scheduled after the stop, here rather than in
                # the closing thread (which may be running a loop of its own):
                # late _begin calls fail their jobs.
                self._closing = True
                loop.run_until_complete(self._asyncio.sleep(0))
            finally:
                self._asyncio.set_event_loop(None)

        self._thread = threading.Thread(target=main, name=name, daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]

    def spawn(self, job: _Job) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._begin, job)

    def _begin(self, job: _Job) -> None:
        if self._closing:
            _fail_closed(job, self._asyncio.CancelledError())
            return
        assert self.loop is not None
        self._jobs.add(job)
        job.handle = self.loop.create_task(self._drive(job))

    async def _drive(self, job: _Job) -> None:
        # Cancellation before the task's first step would skip this body and
        # leave the job unfinished, so cancel() and close() only flag a job
        # that has not started, and it checks the flags here.
        job.started = True
        try:
            if job.cancel_requested or job.closing:
                _close_awaitable(job.fn)
                raise self._asyncio.CancelledError
            job.value = await job.make_awaitable()
        except BaseException as error:
            job.error = error
        finally:
            self._jobs.discard(job)
            job.finish()

    def call_soon(self, fn: Callable[[], object]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def new_event(self) -> _LoopEvent:
        assert self.loop is not None
        return _AsyncioEvent(self.loop)

    def shutdown(self, contexts: list[_Holder]) -> None:
        loop = self.loop
        assert loop is not None and self._thread is not None
        asyncio = self._asyncio

        async def sequence() -> None:
            await _exit_holders(contexts)
            self._closing = True
            for job in self._jobs:
                job.closing = True
            this = asyncio.current_task()
            # Jobs whose task has not started fail by themselves when it does.
            unstarted = {job.handle for job in self._jobs if not job.started}
            tasks = [t for t in asyncio.all_tasks() if t is not this]
            for task in tasks:
                if task not in unstarted:
                    task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()
            try:
                await loop.shutdown_default_executor()
            except RuntimeError as error:
                # Python 3.12 starts no thread at interpreter exit, and asyncio
                # needs one here; concurrent.futures' own exit hook, which runs
                # before atexit's, has already joined the executor's threads.
                if "interpreter shutdown" not in str(error):
                    raise

        def begin() -> None:
            task = loop.create_task(sequence())
            task.add_done_callback(lambda _: loop.stop())

        loop.call_soon_threadsafe(begin)
        self._thread.join()
        # Make sure no caller waits for a job that never ran.
        self._closing = True
        for job in list(self._jobs):
            _fail_closed(job, asyncio.CancelledError())
        loop.close()


def _fail_closed(job: _Job, cause: BaseException) -> None:
    _close_awaitable(job.fn)  # a coroutine that never ran: no "never awaited"
    if job.done.locked():
        job.closing = True
        job.error = cause
        job.finish()


# -------------------------------------------------------------------- trio


class _TrioEvent(_LoopEvent):
    def __init__(self, trio: Any, token: Any) -> None:
        self._trio = trio
        self._token = token
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = self._trio.Event()

    def set(self) -> None:
        self._token.run_sync_soon(self._set)

    def _set(self) -> None:
        self._event.set()


class _TrioLoop(_Loop):
    def __init__(self) -> None:
        import trio

        self._trio = trio
        self._token: Any = None
        self._stop: Any = None
        # Jobs begun and not finished.  Touched on the loop thread only.
        self._jobs: set[_Job] = set()
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

    def spawn(self, job: _Job) -> None:
        context = contextvars.copy_context()
        self._token.run_sync_soon(self._begin, job, context)

    def _begin(self, job: _Job, context: contextvars.Context) -> None:
        if self._closing:
            _fail_closed(job, self._trio.RunFinishedError("the Runner is closing"))
            return
        self._jobs.add(job)
        self._trio.lowlevel.spawn_system_task(self._drive, job, context=context)

    async def _drive(self, job: _Job) -> None:
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
                    job.error = error
                    _close_awaitable(job.fn)
        finally:
            self._jobs.discard(job)
            if not self._jobs and self._idle is not None:
                self._idle.set()
            job.finish()

    def call_soon(self, fn: Callable[[], object]) -> None:
        self._token.run_sync_soon(fn)

    def new_event(self) -> _LoopEvent:
        return _TrioEvent(self._trio, self._token)

    def shutdown(self, contexts: list[_Holder]) -> None:
        assert self._thread is not None
        trio = self._trio

        async def sequence() -> None:
            await _exit_holders(contexts)
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
            _fail_closed(job, trio.RunFinishedError("the Runner closed"))


# ---------------------------------------------------------- context holder


class _Holder:
    """An async context manager held open by one task on the runner's loop.

    The holder task enters the manager, reports the value, sleeps until asked
    to exit, exits with the exception it is given and reports whether the
    manager swallowed it.  Invariant: ``entered`` is held until the entry has
    finished, successfully or not; ``finished`` is set once the holder task
    is done with the manager.
    """

    def __init__(self, cm: Any, factory: Callable[[], Any] | None) -> None:
        self.cm = cm
        self.factory = factory
        self.value: Any = None
        self.entered = threading.Lock()
        self.entered.acquire()
        self.enter_ok = False
        self.exit_event: _LoopEvent | None = None
        self.finished: _LoopEvent | None = None
        self.exc: BaseException | None = None
        self.job: _Job | None = None
        self.exited = False

    async def hold(self, runner_loop: _Loop) -> bool:
        self.exit_event = runner_loop.new_event()
        self.finished = runner_loop.new_event()
        try:
            try:
                cm = self.factory() if self.factory is not None else self.cm
                self.factory = None
                if not hasattr(cm, "__aenter__") and inspect.isawaitable(cm):
                    cm = await cm
                if not (hasattr(cm, "__aenter__") and hasattr(cm, "__aexit__")):
                    raise TypeError(
                        "wrap_context() needs an async context manager, the factory made "
                        f"{type(cm).__qualname__!r}"
                    )
                self.cm = cm
                self.value = await cm.__aenter__()
                self.enter_ok = True
            finally:
                self.entered.release()
            try:
                await self.exit_event.wait()
            except BaseException as error:
                # Cancelled with the context open (the runner is closing):
                # exit it as ``async with`` does when its body is cancelled.
                if not await cm.__aexit__(type(error), error, error.__traceback__):
                    raise
                return False
            exc, self.exc = self.exc, None
            if exc is None:
                return bool(await cm.__aexit__(None, None, None))
            try:
                return bool(await cm.__aexit__(type(exc), exc, exc.__traceback__))
            finally:
                del exc
        finally:
            self.finished.set()


async def _exit_holders(holders: list[_Holder]) -> None:
    # Ask each entered context to exit, last entered first, and wait for it.
    while holders:
        holder = holders.pop()
        if holder.exited or holder.exit_event is None or holder.finished is None:
            continue
        holder.exited = True
        holder.exit_event.set()
        await holder.finished.wait()


class SyncContext(Generic[T]):
    """A synchronous view of an async context manager on a :class:`Runner`.

    Made by :meth:`Runner.wrap_context`.  ``__enter__`` runs ``__aenter__`` on
    the runner's loop and ``__exit__`` runs ``__aexit__`` there, both in one
    task.  Single use.
    """

    def __init__(self, runner: Runner, cm: Any, factory: Callable[[], Any] | None) -> None:
        self._runner = runner
        self._holder: _Holder | None = _Holder(cm, factory)
        self._used = False

    def __enter__(self) -> T:
        holder = self._holder
        if self._used or holder is None:
            raise RuntimeError("this SyncContext was already entered; make a new one")
        self._used = True
        runner = self._runner
        job = _Job(holder.hold, (runner._ensure_started(),), {})
        holder.job = job
        runner._start_job(job)
        runner._wait(job, holder.entered)
        if not holder.enter_ok:
            self._holder = None
            runner._wait(job)
            job.outcome()  # raises the entry error
            raise AssertionError("unreachable")  # pragma: no cover
        return holder.value  # type: ignore[no-any-return]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        holder, self._holder = self._holder, None
        if holder is None or holder.job is None:
            raise RuntimeError("SyncContext.__exit__ without a successful __enter__")
        if holder.exited:
            return False
        holder.exited = True
        holder.exc = exc
        job = holder.job
        event = holder.exit_event
        assert event is not None
        if self._runner.in_loop_thread():
            raise RuntimeError(
                "a wrapped context was exited on the Runner's own loop thread, which "
                "would deadlock it; exit it from another thread"
            )
        if job.done.locked():
            try:
                event.set()
            except RuntimeError:
                pass  # the loop is gone; the job was failed by close()
        self._runner._wait(job)
        return bool(job.outcome())


# ------------------------------------------------------------------ runner


_runners: weakref.WeakSet[Runner] = weakref.WeakSet()


class Runner:
    """An event loop running in a daemon thread, callable from any thread.

    Args:
        backend: ``"asyncio"`` (the default) or ``"trio"``.
        loop_factory: for asyncio, a callable that makes the event loop, such
            as ``uvloop.new_event_loop``.
        debug: for asyncio, the loop's debug mode (default: asyncio's default).
        name: the name of the loop thread.

    The loop starts on first use.  Use the Runner as a context manager, or call
    :meth:`close`, to shut it down; the :func:`default_runner` closes at
    interpreter exit, and so does any Runner still open then.
    """

    def __init__(
        self,
        backend: Literal["asyncio", "trio"] = "asyncio",
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        debug: bool | None = None,
        name: str = "greenportal-runner",
    ) -> None:
        if backend not in ("asyncio", "trio"):
            raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
        if backend == "trio" and (loop_factory is not None or debug is not None):
            raise ValueError("loop_factory and debug apply to the asyncio backend only")
        self._backend = backend
        self._loop_factory = loop_factory
        self._debug = debug
        self._name = name
        self._init_state()
        _runners.add(self)

    def _init_state(self) -> None:
        # Invariant: _impl is not None exactly while the state is "running" or
        # "closing"; every transition happens under _lock.
        self._lock = threading.Lock()
        self._state: Literal["new", "running", "closing", "closed"] = "new"
        self._impl: _Loop | None = None
        self._contexts: list[_Holder] = []
        self._closed_event = threading.Event()

    def __repr__(self) -> str:
        return f"<greenportal.Runner {self._backend} {self._state}>"

    @property
    def backend(self) -> str:
        """``"asyncio"`` or ``"trio"``."""
        return self._backend

    @property
    def closed(self) -> bool:
        return self._state in ("closing", "closed")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio event loop (started if need be).  asyncio runners only."""
        impl = self._ensure_started()
        if not isinstance(impl, _AsyncioLoop):
            raise RuntimeError("Runner.loop is for asyncio runners; this one runs Trio")
        assert impl.loop is not None
        return impl.loop

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this runner's loop thread."""
        impl = self._impl
        return impl is not None and impl.thread_id == threading.get_ident()

    # -- calls ------------------------------------------------------------

    @overload
    def run(self, aw: Awaitable[T], /) -> T: ...
    @overload
    def run(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    def run(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run an awaitable, or ``fn(*args, **kwargs)``, on the loop; block for the result.

        An async function is called on the loop thread.  The work runs in a
        new task, in a copy of the caller's context variables.  It returns
        what the work returns and raises what it raises.

        Raises:
            RuntimeError: called from this runner's own loop thread (it would
                deadlock).
            RunnerClosedError: the runner is closed, or closed while the call
                ran.
            KeyboardInterrupt: Ctrl-C arrived while waiting; the work was
                cancelled and has finished.
        """
        job = self._job(fn, args, kwargs)
        self._start_job(job)
        self._wait(job)
        return job.outcome()

    @overload
    def submit(self, aw: Awaitable[T], /) -> concurrent.futures.Future[T]: ...
    @overload
    def submit(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]: ...
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Like :meth:`run`, but return a :class:`concurrent.futures.Future` at once.

        Cancelling the future cancels the work on the loop.
        """
        job = self._job(fn, args, kwargs)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        job.future = future

        def on_done(f: concurrent.futures.Future[Any]) -> None:
            impl = self._impl
            if f.cancelled() and job.done.locked() and impl is not None:
                impl.cancel(job)

        future.add_done_callback(on_done)
        self._start_job(job)
        return future

    def wrap_iter(self, aiterable: AsyncIterable[T]) -> Iterator[T]:
        """A sync iterator over *aiterable*, iterated on the loop in one task.

        Breaking out, closing the iterator or dropping it closes the async
        iterator (``aclose()``) on the loop; so does closing the runner.
        """
        if not hasattr(aiterable, "__aiter__"):
            raise TypeError(
                f"wrap_iter() needs an async iterable, got {type(aiterable).__qualname__!r}"
            )
        return _iterate(self, aiterable)

    def wrap_context(
        self, cm: Any = None, *, factory: Callable[[], Any] | None = None
    ) -> SyncContext[Any]:
        """A sync context manager that enters and exits *cm* on the loop.

        Pass the async context manager, or a *factory* that makes it; the
        factory is called on the loop thread (where, for example, an
        ``aiohttp.ClientSession`` must be made).  It may return the manager, or
        an awaitable of it.
        """
        if (cm is None) == (factory is None):
            raise TypeError("wrap_context() takes a context manager or factory=, not both")
        if cm is not None and not (hasattr(cm, "__aenter__") and hasattr(cm, "__aexit__")):
            raise TypeError(
                f"wrap_context() needs an async context manager, got {type(cm).__qualname__!r}"
            )
        return SyncContext(self, cm, factory)

    def enter_context(self, cm: Any = None, *, factory: Callable[[], Any] | None = None) -> Any:
        """Enter *cm* (or what *factory* makes) on the loop, and keep it open until :meth:`close`.

        Returns what ``__aenter__`` returned.  Contexts exit in reverse order,
        first thing in :meth:`close`.
        """
        context = self.wrap_context(cm, factory=factory)
        value = context.__enter__()
        holder = context._holder
        assert holder is not None
        with self._lock:
            if self._state == "running":
                self._contexts.append(holder)
                return value
        context.__exit__(None, None, None)
        raise RuntimeError("the Runner closed while entering the context")

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Shut the loop down (see the module notes for the order).  Idempotent.

        Calls still running are cancelled and raise :exc:`RunnerClosedError`
        in their callers.  If another thread is closing the runner, this
        waits until it is closed.

        Raises:
            RuntimeError: called from the runner's own loop thread.
        """
        if self.in_loop_thread():
            raise RuntimeError(
                "Runner.close() called from the runner's own loop thread, which it "
                "would have to stop and join; call it from another thread"
            )
        with self._lock:
            state = self._state
            impl = self._impl
            if state in ("new", "running"):
                self._state = "closing"
            closed_event = self._closed_event
        if state in ("closing", "closed"):
            closed_event.wait()
            return
        try:
            if impl is not None:
                impl.shutdown(self._contexts)
        finally:
            with self._lock:
                self._state = "closed"
                self._impl = None
            closed_event.set()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _ensure_started(self) -> _Loop:
        impl = self._impl
        if impl is not None and self._state == "running":
            return impl
        with self._lock:
            if self._state == "running":
                assert self._impl is not None
                return self._impl
            if self._state != "new":
                raise RunnerClosedError(
                    "this Runner is closed; make a new Runner (or use greenportal.default_runner())"
                )
            impl = (
                _AsyncioLoop(self._loop_factory, self._debug)
                if self._backend == "asyncio"
                else _TrioLoop()
            )
            impl.start(self._name)
            self._impl = impl
            self._state = "running"
            return impl

    def _job(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Job:
        if callable(fn):
            return _Job(fn, args, kwargs)
        if args or kwargs:
            _close_awaitable(fn)
            raise TypeError("Runner.run() takes arguments only with an async function")
        if not inspect.isawaitable(fn):
            raise TypeError(
                "Runner.run() needs an awaitable or an async function, got "
                f"{type(fn).__qualname__!r}"
            )
        return _Job(fn, (), {})

    def _start_job(self, job: _Job) -> None:
        try:
            impl = self._ensure_started()
        except BaseException:
            _close_awaitable(job.fn)  # refused: no "never awaited" warning
            raise
        if impl.thread_id == threading.get_ident():
            _close_awaitable(job.fn)
            raise RuntimeError(
                "this call was made on the Runner's own event loop thread, and waiting "
                "here for the loop would deadlock it. Inside the runner's loop, await the "
                "work directly (or use greenportal.await_ from a task with a portal)"
            )
        # Scheduling under the lock orders every call either before close()
        # marks the runner closing (then the loop starts it before the
        # shutdown sequence, which cancels it) or after (then it is refused).
        with self._lock:
            if self._state != "running":
                _close_awaitable(job.fn)
                raise RunnerClosedError(
                    "this Runner is closed; make a new Runner (or use greenportal.default_runner())"
                )
            impl.spawn(job)

    def _wait(self, job: _Job, lock: threading.Lock | threading.Semaphore | None = None) -> None:
        """Block until the job is done, or until *lock* is released (and take it).

        ``job.done`` is a flag: once released it stays released.  Any other
        *lock* is a hand-over: the caller keeps it acquired.  On Ctrl-C the
        job is cancelled, its end awaited, and ``KeyboardInterrupt`` raised.
        """
        done = lock is None
        lock = job.done if lock is None else lock
        try:
            lock.acquire()
        except KeyboardInterrupt:
            impl = self._impl
            if impl is not None:
                impl.cancel(job)
                try:
                    job.done.acquire()
                    job.done.release()
                except KeyboardInterrupt:
                    pass  # a second Ctrl-C: stop waiting for the work to unwind
            raise
        if done:
            lock.release()

    def _after_fork(self) -> None:
        self._init_state()


def _close_awaitable(aw: object) -> None:
    close = getattr(aw, "close", None)
    if inspect.iscoroutine(aw) and close is not None:
        close()


class _IterState:
    """The hand-over between a sync consumer and the task iterating on the loop.

    One request at a time: the consumer sets ``request`` and the event, then
    blocks on ``reply_ready``; the task appends its answer to ``replies`` and
    releases the semaphore.  Invariant: ``reply_ready``'s count equals the
    number of unread replies; the task answers once when it starts, once per
    request, and once more when it ends (``_STOP`` or an error), so a
    cancellation at close cannot overwrite an item the consumer has not read.
    """

    def __init__(self) -> None:
        self.request: Literal["next", "close"] = "next"
        self.event: _LoopEvent | None = None
        self.replies: deque[tuple[bool, Any]] = deque()
        self.reply_ready = threading.Semaphore(0)

    def answer(self, reply: tuple[bool, Any]) -> None:
        self.replies.append(reply)
        self.reply_ready.release()


_STOP: Any = object()
_STARTED: Any = object()


async def _pump(aiterable: AsyncIterable[Any], state: _IterState, loop: _Loop) -> None:
    state.event = loop.new_event()
    final: tuple[bool, Any] = (True, _STOP)
    iterator: Any = None
    try:
        iterator = aiterable.__aiter__()
        state.answer((True, _STARTED))
        while True:
            await state.event.wait()
            if state.request == "close":
                return
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            state.answer((True, item))
            del item
    except BaseException as error:
        final = (False, error)
        raise
    finally:
        try:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        except BaseException as error:
            final = (False, error)
            raise
        finally:
            state.answer(final)
            del final


def _iterate(runner: Runner, aiterable: AsyncIterable[T]) -> Iterator[T]:
    state = _IterState()
    job = _Job(_pump, (aiterable, state, runner._ensure_started()), {})
    del aiterable
    runner._start_job(job)
    runner._wait(job, state.reply_ready)
    finished = False
    try:
        while True:
            ok, value = state.replies.popleft()
            if not ok or value is _STOP:
                finished = True
                runner._wait(job)
                job.outcome()  # raises the iterator's error, or RunnerClosedError
                if not ok:
                    raise value
                return
            if value is not _STARTED:
                yield value
            del value
            state.request = "next"
            assert state.event is not None
            try:
                state.event.set()
            except RuntimeError:  # the loop is gone: the runner closed
                finished = True
                runner._wait(job)
                job.outcome()  # raises RunnerClosedError
                raise RunnerClosedError("the Runner was closed while iterating") from None
            runner._wait(job, state.reply_ready)
    finally:
        if not finished and job.done.locked() and not runner.closed:
            # The consumer stopped early: ask the task to close the iterator.
            state.request = "close"
            assert state.event is not None
            try:
                state.event.set()
            except RuntimeError:  # the loop is gone
                pass
            else:
                if not runner.in_loop_thread():
                    runner._wait(job)
                    if not job.closing:
                        job.outcome()  # an error from aclose()


# ------------------------------------------------------------ default runner

_default: Runner | None = None
_default_lock = threading.Lock()


def default_runner() -> Runner:
    """The process-wide :class:`Runner` (asyncio), made on first use.

    :func:`greenportal.await_` uses it in threads where no event loop runs.
    It is closed at interpreter exit; after ``fork()`` the child makes its
    own.  If you close it, the next call makes a new one.
    """
    global _default
    runner = _default
    if runner is not None and runner._state in ("new", "running"):
        return runner
    with _default_lock:
        if _default is None or _default._state not in ("new", "running"):
            _default = Runner(name="greenportal-default-runner")
        return _default


def _close_all_at_exit() -> None:
    for runner in list(_runners):
        try:
            runner.close()
        except Exception:  # pragma: no cover - exit must go on
            pass


def _after_fork_in_child() -> None:
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()
    for runner in list(_runners):
        runner._after_fork()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
