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
``run()`` packs the work into a :class:`~._backends.Job` whose ``done`` lock starts out
held, hands it to the loop thread (``RunnerLoop.spawn``), and blocks acquiring
the lock.  On the loop the job becomes a task that awaits the work, stores the
outcome on the job and releases the lock.  That is two thread wake-ups per
round trip (the loop's, then the caller's), the least a thread hop can cost,
and the design keeps each as cheap as it can be:

* the loop's wake-up: on asyncio and uvloop, an ``eventfd`` write that the
  loop watches with ``add_reader`` (``_backends/_wake.py``), where
  ``call_soon_threadsafe`` would cost a socket ``send``, two ``recv`` calls
  and a handle with a copied context (or, on uvloop, a loop phase more);
  Trio: ``TrioToken.run_sync_soon``.  The caller's context is copied in the
  caller's thread and the task runs in that copy;
* the task's first step runs in the wake-up's callback, not one loop
  iteration later: on 3.12+ the task starts eagerly, unless the loop has a
  task factory, which is then honoured; where there is no eager start (3.10,
  3.11, a task factory) and the loop is asyncio's own, the step that the new
  task queued is taken off the end of the loop's queue and run there and
  then (``_backends/_asyncio._step_now``; uvloop keeps its queue out of
  reach, and waits the iteration);
* the caller's wake-up: a bare ``threading.Lock``.
  ``asyncio.run_coroutine_threadsafe`` does the same hop through a
  ``concurrent.futures.Future``, a condition variable and two chained
  callbacks; we make a ``concurrent.futures.Future`` only for
  :meth:`Runner.submit`.

Rejected: stepping the coroutine without an asyncio Task (measured: barely
faster than an eager task, and ``asyncio.current_task()``, timeouts, task
groups, anyio and portals all need the task).  What remains above the
floor (``benchmarks/bench_threads.py``) is the loop's own iteration for each
time the work yields, and the work's task.

The task catches ``BaseException``: a ``KeyboardInterrupt`` or ``SystemExit``
raised by the work is the caller's to handle, and letting it escape would stop
the loop thread under every other caller.

Sync iterators and contexts
---------------------------
``wrap_iter``, ``wrap_context`` and ``enter_context`` are sync bridges over
the same jobs; they live in ``_bridges`` (each in one task on the loop).

Where the loops live
--------------------
This module knows no event loop library: the loop on the Runner's thread is
a :class:`~._backends.RunnerLoop` of the backend it was made for
(``_backends/_asyncio.py``, ``_backends/_trio.py``).

Shutdown order (``close``)
--------------------------
1. exit the contexts entered with ``enter_context``, last first, each given
   the exception in flight (``Runner.__exit__``'s, or one a later-exited
   context raised), as ``contextlib.ExitStack`` does (``_bridges.ExitReport``);
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
automatic default Runner is dropped, and a new one made on demand; a Runner
chosen with ``set_default_runner`` stays the default (reset like the rest,
so the child starts a fresh loop of the same kind on it).

Only the main thread receives ``SIGINT``, and CPython interrupts a blocked
``Lock.acquire`` to raise ``KeyboardInterrupt`` there.  The Runner then
cancels the work on the loop, waits for it to finish unwinding (a second
Ctrl-C stops waiting), and re-raises ``KeyboardInterrupt``.  Any other
exception that a signal handler raises in the waiting thread (a ``SystemExit``
from a SIGTERM handler, say) is treated the same way.

Known gaps: Trio runners need Trio installed; a Runner's loop thread cannot
call its own ``run()`` (it raises rather than deadlock).  On uvloop before
3.12 a call waits one loop iteration more before its work starts; Windows
(and any loop without ``add_reader``) wakes the loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import inspect
import os
import threading
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from . import _backends, _bridges
from ._backends import Job, RunnerClosedError, RunnerLoop
from ._bridges import SyncContext
from ._outcome import close_refused

if TYPE_CHECKING:
    import asyncio

__all__ = ["Runner", "RunnerClosedError", "SyncContext", "default_runner", "set_default_runner"]

P = ParamSpec("P")
T = TypeVar("T")


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
    interpreter exit, and so does any Runner still open then.  The ``with``
    block passes its exception to the contexts entered with
    :meth:`enter_context`, which may suppress it (see :meth:`__exit__`).
    """

    def __init__(
        self,
        backend: Literal["asyncio", "trio"] = "asyncio",
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        debug: bool | None = None,
        name: str = "greenportal-runner",
    ) -> None:
        self._backend = _backends.check_runner_options(backend, loop_factory, debug)
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
        self._impl: RunnerLoop | None = None
        self._contexts: list[_bridges.Holder] = []
        self._closed_event = threading.Event()

    def __repr__(self) -> str:
        return f"<greenportal.Runner {self._backend} {self._state}>"

    @property
    def backend(self) -> str:
        """``"asyncio"`` or ``"trio"``."""
        return self._backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has begun: true while it shuts down and after.

        New calls on a closed runner raise :exc:`RunnerClosedError`.  After
        ``fork()`` the child's copy is open again (a fresh loop on next use).
        """
        return self._state in ("closing", "closed")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio event loop (started if need be).  asyncio runners only."""
        return self._ensure_started().native_loop()

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
        return job.result()

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
        return _bridges.iterate(self, aiterable)

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
        first thing in :meth:`close`, as in a ``contextlib.ExitStack``:
        leaving the Runner's ``with`` block with an exception passes it to
        them, and one of them may suppress it (see :meth:`__exit__`).
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
            BaseException: what the ``__aexit__`` of a context entered with
                :meth:`enter_context` raised (the last one, with the earlier
                ones as its ``__context__``), once the runner is closed.
        """
        self._close(None)

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Close the runner, passing the exception in flight to the entered contexts.

        As ``contextlib.ExitStack`` does: the contexts entered with
        :meth:`enter_context` exit last first, each given the exception in
        flight, or the one that a context exited after it raised (chained to
        the one it replaced).  If one of them returns true the exception is
        suppressed and this returns True.
        """
        return self._close(exc)

    def _close(self, exc: BaseException | None) -> bool:
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
            return False
        report = _bridges.ExitReport(exc)
        try:
            if impl is not None:
                impl.shutdown(lambda: _bridges.exit_holders(self._contexts, report))
        finally:
            with self._lock:
                self._state = "closed"
                self._impl = None
            closed_event.set()
        pending, report.pending = report.pending, None
        if pending is None or pending is exc:
            return report.suppressed and pending is None
        # Raising here would make the exception in flight (if any) its
        # __context__, replacing the chain built on the loop; put it back.
        context = pending.__context__
        try:
            raise pending
        except BaseException:
            pending.__context__ = context
            raise
        finally:
            del pending, context

    # -- internals ----------------------------------------------------------

    def _ensure_started(self) -> RunnerLoop:
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
            impl = _backends.runner_loop(self._backend, self._loop_factory, self._debug)
            impl.start(self._name)
            self._impl = impl
            self._state = "running"
            return impl

    def _job(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
        if callable(fn):
            return Job(fn, args, kwargs)
        if args or kwargs:
            close_refused(fn)
            raise TypeError("Runner.run() takes arguments only with an async function")
        if not inspect.isawaitable(fn):
            raise TypeError(
                "Runner.run() needs an awaitable or an async function, got "
                f"{type(fn).__qualname__!r}"
            )
        return Job(fn, (), {})

    def _start_job(self, job: Job) -> None:
        try:
            impl = self._ensure_started()
        except BaseException:
            close_refused(job.fn)  # refused: no "never awaited" warning
            raise
        if impl.thread_id == threading.get_ident():
            close_refused(job.fn)
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
                close_refused(job.fn)
                raise RunnerClosedError(
                    "this Runner is closed; make a new Runner (or use greenportal.default_runner())"
                )
            impl.spawn(job)

    def _wait(self, job: Job, lock: threading.Lock | threading.Semaphore | None = None) -> None:
        """Block until the job is done, or until *lock* is released (and take it).

        ``job.done`` is a flag: once released it stays released.  Any other
        *lock* is a hand-over: the caller keeps it acquired.  On Ctrl-C the
        job is cancelled, its end awaited, and ``KeyboardInterrupt`` raised;
        likewise for any exception a signal handler raises while we wait.
        """
        done = lock is None
        lock = job.done if lock is None else lock
        try:
            lock.acquire()
        except BaseException:
            # Ctrl-C, or whatever else a signal handler raised here.
            impl = self._impl
            if impl is not None:
                impl.cancel(job)
                try:
                    job.done.acquire()
                    job.done.release()
                except BaseException:
                    pass  # a second signal: stop waiting for the work to unwind
            raise
        if done:
            lock.release()

    def _after_fork(self) -> None:
        self._init_state()


# ------------------------------------------------------------ default runner

# The automatic default Runner (made on demand), and the one chosen with
# set_default_runner(), which wins while set.  Both change under _default_lock.
_auto: Runner | None = None
_chosen: Runner | None = None
_default_lock = threading.Lock()


def default_runner() -> Runner:
    """The process-wide :class:`Runner` that :func:`greenportal.await_` uses without a loop.

    :func:`greenportal.await_` (and so :func:`greenportal.blocking`) runs its
    awaitable on it in threads where no event loop runs.  It is the Runner
    chosen with :func:`set_default_runner` if one is set; otherwise an
    asyncio Runner made on first use, closed at interpreter exit, made anew
    after ``fork()`` in the child and, if you close it, on the next call.

    Raises:
        RunnerClosedError: the Runner chosen with :func:`set_default_runner`
            is closed (greenportal does not fall back to another loop behind
            your back: set another, or ``set_default_runner(None)``).
    """
    global _auto
    chosen = _chosen
    if chosen is None:
        runner = _auto
        if runner is not None and runner._state in ("new", "running"):
            return runner
        with _default_lock:
            chosen = _chosen
            if chosen is None:
                if _auto is None or _auto._state not in ("new", "running"):
                    _auto = Runner(name="greenportal-default-runner")
                return _auto
    if chosen._state in ("new", "running"):
        return chosen
    raise RunnerClosedError(
        f"the default Runner chosen with greenportal.set_default_runner() ({chosen!r}) is "
        "closed; choose another with set_default_runner(runner), or go back to the "
        "automatic one with set_default_runner(None)"
    )


def set_default_runner(runner: Runner | None) -> Runner | None:
    """Choose the :class:`Runner` that :func:`default_runner` returns; None: the automatic one.

    From then on :func:`greenportal.await_` and :func:`greenportal.blocking`
    run awaitables on *runner* in threads where no event loop runs, for
    example ``set_default_runner(Runner(backend="trio"))`` for Trio code or
    ``set_default_runner(Runner(loop_factory=uvloop.new_event_loop))``.

    Returns the Runner chosen before, or None if the automatic one was in
    use, so that ``set_default_runner(previous)`` restores exactly what was
    there.  Thread-safe.  The automatic Runner, if one was made, is left
    running: work in flight on it finishes, objects bound to its loop stay
    usable, and ``set_default_runner(None)`` makes it the default again.
    greenportal closes *runner* at interpreter exit, as it closes every Runner
    still open then; close it yourself to choose when.  After ``fork()`` it
    stays the default in the child, where it starts a fresh loop of its kind.

    Raises:
        TypeError: *runner* is neither a :class:`Runner` nor None.
        RunnerClosedError: *runner* is closed (a :exc:`RuntimeError`).
    """
    global _chosen
    if runner is not None and not isinstance(runner, Runner):
        raise TypeError(
            f"set_default_runner() needs a greenportal.Runner or None, got "
            f"{type(runner).__qualname__!r}"
        )
    with _default_lock:
        if runner is not None and runner.closed:
            raise RunnerClosedError(
                f"set_default_runner() got a closed Runner ({runner!r}); make a new one"
            )
        previous, _chosen = _chosen, runner
    return previous


def runner_of_this_thread() -> Runner | None:
    """The Runner whose loop runs on the calling thread, if one does."""
    ident = threading.get_ident()
    for runner in list(_runners):
        impl = runner._impl
        if impl is not None and impl.thread_id == ident:
            return runner
    return None


def loop_threads() -> set[int]:
    """The thread ids of every running Runner's loop."""
    return {impl.thread_id for runner in list(_runners) if (impl := runner._impl) is not None}


def _close_all_at_exit() -> None:
    for runner in list(_runners):
        try:
            runner.close()
        except Exception:  # pragma: no cover - exit must go on
            pass


def _after_fork_in_child() -> None:
    global _auto, _default_lock
    _auto = None  # a chosen Runner stays chosen, and is reset below like the rest
    _default_lock = threading.Lock()
    for runner in list(_runners):
        runner._after_fork()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
