"""await_ outside a portal: worker threads, plain threads, and the loop thread.

Where ``await_`` sends an awaitable when the current task has no portal
-----------------------------------------------------------------------
1. A worker thread started by :func:`to_thread` (or :func:`asyncify`): to the
   task that started the thread, which serves the thread's awaits while it
   waits for the thread to finish.
2. A worker thread of ``trio.to_thread.run_sync`` (also anyio's worker
   threads under Trio): ``trio.from_thread.run``, which does the same.
3. An anyio worker thread under asyncio: ``anyio.from_thread.run``.
4. A thread where an event loop is running (outside any portal): refuse with
   ``RuntimeError``.  Blocking would stall the very loop the awaitable needs.
5. A thread of ``asyncio.to_thread``, ``loop.run_in_executor`` or a
   :class:`~greenportal.LoopExecutor`: the loop that started the work
   (``_backends/_executor.py`` tells how it is found, and when it refuses to
   guess).
6. Any other thread: the default :class:`~greenportal.Runner`, so every such
   call in the process shares one long-lived loop.

:func:`route` gives the row; :func:`await_without_portal` follows it, and
so does :func:`home_runner` (which Runner ``blocking()`` pins an object to).
Rows 1 to 3 are the backends' (``_backends.thread_route``); how the asyncio
host runs the awaitable inside the starting task, so that its cancellation
reaches the thread as the native exception, is told in
``_backends/_asyncio.py``.  Detection reads thread-locals and
``sys.modules``; nothing is imported.

This module keeps what is the same on every loop: the dispatch above, the
cache of worker threads, :class:`ThreadLimiter`, :func:`to_thread` and
:func:`asyncify`.

Cancellation while the thread runs plain sync code cannot interrupt it.  Like
Trio's default, the task waits for the thread: the cancellation is delivered
at the thread's next ``await_`` (once, as asyncio delivers a cancellation
once), or, if the thread never awaits again, raised in the task when the
thread returns.  The thread is never abandoned, so no work outlives the task.

Known gaps: the executor threads of row 5 are recognised only for
``ThreadPoolExecutor`` (and subclasses); other executors are not.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from . import _backends, _runner
from ._guards import CoroutineType, describe, is_async_callable, refuse_coroutine
from ._outcome import close_refused

P = ParamSpec("P")
T = TypeVar("T")


# ---------------------------------------------------------------- dispatch


# What route() gives: a callable that runs an awaitable on the loop that
# started this thread (rows 1 to 3 and 5), the name of the loop running in
# this thread (row 4), or the default Runner (row 6).
Route = Callable[[Awaitable[Any]], Any] | str | _runner.Runner


def route() -> Route:
    """Where ``await_`` with no portal goes from this thread: the rows of the module notes.

    Raises ``RuntimeError`` in an executor thread whose starting loop cannot
    be told (row 5).
    """
    request = _backends.thread_route()
    if request is not None:
        return request
    loop_name = _backends.running_loop_name()
    if loop_name is not None:
        return loop_name
    request = _backends.executor_route(_runner.loop_threads)
    if request is not None:
        return request
    return _runner.default_runner()


def await_without_portal(aw: Awaitable[T]) -> T:
    """Run *aw* for synchronous code outside any portal (see the module notes)."""
    where = route()
    if isinstance(where, _runner.Runner):
        _check_future_loop(aw, where, "the default Runner")
        result: T = _annotate_loop_errors(where.run, aw, "the default Runner's loop")
        return result
    if isinstance(where, str):
        # No task runs here (await_slow checked): a loop callback.  greenback's
        # phrase for it (sniffio's) leads, so that patterns written for
        # greenback match.
        lead = "No task is running here (not in async context): "
        raise RuntimeError(
            f"{lead}await_() was called outside any portal on a thread that is running "
            f"{where}: it cannot block here, since the awaitable needs that very "
            "loop to make progress. Give the calling task a portal ('await "
            "greenportal.ensure_portal()', or 'await greenportal.with_portal_run_sync(fn)'"
            "), or run the sync code in a worker thread with 'await "
            "greenportal.to_thread(fn)'"
        )
    return where(aw)  # type: ignore[no-any-return]


def home_runner() -> _runner.Runner | None:
    """The Runner whose loop ``await_`` in this thread would use, if it is a Runner's.

    Follows :func:`route`: a thread running a loop (a task on a Runner's
    loop thread, say) gives the Runner of that loop if there is one; a
    worker or executor thread of a loop gives None (their awaits go to that
    loop); any other thread gives the default Runner.  ``blocking()`` pins an
    object made here to the Runner returned (see ``_blocking``).
    """
    try:
        where = route()
    except RuntimeError:
        return None  # an executor thread whose loop cannot be told: not ours either
    if isinstance(where, str):
        return _runner.runner_of_this_thread()
    return where if isinstance(where, _runner.Runner) else None


def _check_future_loop(aw: object, runner: _runner.Runner, where: str) -> None:
    if getattr(aw, "get_loop", None) is None:
        return
    if runner._ensure_started().is_foreign(aw):
        close_refused(aw)
        raise RuntimeError(
            f"await_() got a Future bound to another event loop than {where}, where "
            f"await_() runs awaitables in this thread: it belongs to {_describe_loop(aw)}. "
            "A Future (and any resource made on a loop, such as a connection pool) can "
            "only be awaited on its own loop: make it through await_() in this thread, or "
            "await it on its loop (a thread started from that loop with asyncio.to_thread() "
            "or greenportal.to_thread() awaits there)"
        )


def _describe_loop(aw: object) -> str:
    """ "<loop repr>, running in thread 'name'" for a Future's loop (as far as known)."""
    try:
        loop = aw.get_loop()  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - a get_loop() that fails
        return "another loop"
    ident = getattr(loop, "_thread_id", None)  # asyncio's loops keep it while running
    if ident is not None:
        for thread in threading.enumerate():
            if thread.ident == ident:
                return f"{loop!r}, running in thread {thread.name!r}"
    return repr(loop)


_LOOP_HINTS = ("different loop", "different event loop", "another loop")


def _annotate_loop_errors(run: Callable[[Any], T], aw: Any, where: str) -> T:
    try:
        return run(aw)
    except RuntimeError as error:
        text = str(error)
        if any(hint in text for hint in _LOOP_HINTS) and hasattr(error, "add_note"):
            error.add_note(
                f"greenportal: await_() ran this awaitable on {where}. Something it "
                "used belongs to another event loop; objects bound to a loop (pools, "
                "sessions, locks, futures) must be made and used on the same loop"
            )
        raise


# ------------------------------------------------------------ worker threads


class _ThreadCache:
    """Idle worker threads, reused; one that stays idle for 10 s exits.

    A job runs in a worker and returns a callable that announces its end; the
    worker parks itself on the idle list *before* calling it (as Trio's thread
    cache does), so the next ``to_thread`` that the announcement lets run
    reuses this thread instead of starting a new one.
    """

    IDLE_SECONDS = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def run(self, job: Callable[[], Callable[[], None]]) -> None:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
        worker.give(job)

    def park(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """Take *worker* off the idle list; False if someone just claimed it."""
        with self._lock:
            try:
                self._idle.remove(worker)
            except ValueError:
                return False
            return True


class _Worker:
    def __init__(self, cache: _ThreadCache) -> None:
        self._cache = cache
        self._jobs: deque[Callable[[], Callable[[], None]]] = deque()
        self._ready = threading.Semaphore(0)
        thread = threading.Thread(target=self._main, name="greenportal-worker", daemon=True)
        thread.start()

    def give(self, job: Callable[[], Callable[[], None]]) -> None:
        self._jobs.append(job)
        self._ready.release()

    def _main(self) -> None:
        while True:
            if not self._ready.acquire(timeout=self._cache.IDLE_SECONDS):
                if self._cache.retire(self):
                    return
                self._ready.acquire()  # claimed just now: a job is coming
            job = self._jobs.popleft()
            announce = job()
            del job
            self._cache.park(self)
            announce()
            del announce


_threads = _ThreadCache()


def _after_fork_in_child() -> None:
    # The child has the idle list but not the threads on it: a job given to
    # one of them would never run, and to_thread() would hang.  Start afresh.
    # Likewise the slots that the parent's threads held, and the tasks that
    # waited for them, do not exist in the child.
    global _threads
    _threads = _ThreadCache()
    for limiter in list(_limiters):
        limiter._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_limiters: weakref.WeakSet[ThreadLimiter] = weakref.WeakSet()


class ThreadLimiter:
    """At most *total* worker threads at once, for :func:`to_thread` calls that share it.

    Works under asyncio and Trio, and across event loops.  The default
    limiter, used when none is given, allows 40 threads per process.
    """

    def __init__(self, total: int) -> None:
        self._reset()
        self.total = total
        _limiters.add(self)

    def _reset(self) -> None:
        # Invariant: _borrowed <= _total, except just after total is lowered;
        # a waiter is in _waiters until it is granted a slot or gives up.
        self._lock = threading.Lock()
        self._borrowed = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def total(self) -> int:
        """The limit, an int of at least 1.

        It may be changed at any time.  Raising it lets waiting calls start at
        once; lowering it makes new calls wait until enough of the threads
        running have finished.
        """
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ThreadLimiter total must be an int >= 1, got {value!r}")
        with self._lock:
            self._total = value
        self._wake_waiters()

    @property
    def borrowed(self) -> int:
        """How many threads hold a slot now."""
        return self._borrowed

    def __repr__(self) -> str:
        return f"<greenportal.ThreadLimiter {self._borrowed}/{self._total}>"

    async def _acquire(self, backend: _backends.Backend) -> None:
        with self._lock:
            if self._borrowed < self._total and not self._waiters:
                self._borrowed += 1
                return
            waiter = _Waiter(backend)
            self._waiters.append(waiter)
        try:
            await waiter.wait()
        except BaseException:
            with self._lock:
                if waiter.granted:
                    granted = True
                else:
                    granted = False
                    self._waiters.remove(waiter)
            if granted:
                self._release()
            raise

    def _release(self) -> None:
        with self._lock:
            self._borrowed -= 1
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        while True:
            with self._lock:
                if not self._waiters or self._borrowed >= self._total:
                    return
                waiter = self._waiters.popleft()
                waiter.granted = True
                self._borrowed += 1
            try:
                waiter.wake()
            except RuntimeError:
                # The waiter's event loop is gone (closed, or its Trio run
                # finished): nobody will take the slot, so offer it on.
                with self._lock:
                    self._borrowed -= 1


class _Waiter:
    """One task waiting for a ThreadLimiter slot, on its own event loop."""

    def __init__(self, backend: _backends.Backend) -> None:
        self.granted = False
        self._event = backend.new_event()
        # Thread-safe; RuntimeError if the waiter's loop is gone.
        self.wake = self._event.set

    async def wait(self) -> None:
        await self._event.wait()


_default_limiter = ThreadLimiter(40)


def default_thread_limiter() -> ThreadLimiter:
    """The :class:`ThreadLimiter` that :func:`to_thread` uses by default (40 threads)."""
    return _default_limiter


async def to_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in a worker thread and return its result.

    Inside the thread :func:`~greenportal.await_` works: it runs awaitables on
    the calling task's event loop, inside the calling task (its cancel scopes
    apply) and with the thread's context variables.  The thread starts with a
    copy of the caller's context variables.  At most
    ``default_thread_limiter().total`` threads run at once (see
    :func:`asyncify` for another limiter).

    Cancellation: a running thread cannot be interrupted, so the task waits
    for the thread.  The cancellation reaches the thread as the native
    exception (``asyncio.CancelledError``, or Trio's ``Cancelled``) at its
    next ``await_``.  If the thread never awaits again: under asyncio the
    cancellation is raised here when the thread returns; under Trio this
    returns the thread's result and the cancelled scope raises at the task's
    next checkpoint, as with ``trio.to_thread.run_sync``.

    Raises:
        TypeError: *fn* is async (an async function, a ``functools.partial``
            of one, or an object whose ``__call__`` is async); it is not
            called.  Or *fn* returned a coroutine, which is closed.
        RuntimeError: not called from an asyncio or Trio task.
    """
    return await _to_thread(fn, args, kwargs, _default_limiter)


async def _to_thread(
    fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], limiter: ThreadLimiter
) -> T:
    if not callable(fn):
        raise TypeError(f"to_thread() needs a callable, got {type(fn).__qualname__!r}")
    if is_async_callable(fn):
        raise TypeError(
            f"to_thread() got an async function ({describe(fn)}); a worker thread would "
            "only make a coroutine of it. Await it directly ('await fn(*args)'), or pass "
            "the sync function to run in the thread"
        )
    # A task, not just a loop: a Trio guest run on an asyncio host steps its
    # tasks in asyncio callbacks, where a loop runs but no asyncio task.
    backend = _backends.current_backend()
    if backend is None:
        raise RuntimeError("to_thread() must be called from an asyncio or Trio task")
    await limiter._acquire(backend)
    try:
        call = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
        result = await backend.to_thread(call, _threads.run)
    finally:
        limiter._release()
    if type(result) is CoroutineType:
        refuse_coroutine(
            result, fn, "to_thread()", "await it in the thread with greenportal.await_(...)"
        )
    return result


# Coroutine functions, not just functions returning awaitables, so that the
# results can go where a coroutine is required (asyncio.create_task,
# TaskGroup.start_soon).
@overload
def asyncify(
    fn: Callable[P, T], /, *, limiter: ThreadLimiter | None = None
) -> Callable[P, Coroutine[Any, Any, T]]: ...
@overload
def asyncify(
    fn: None = None, /, *, limiter: ThreadLimiter | None = None
) -> Callable[[Callable[P, T]], Callable[P, Coroutine[Any, Any, T]]]: ...
def asyncify(fn: Any = None, /, *, limiter: ThreadLimiter | None = None) -> Any:
    """Make a sync function into an async one that runs it with :func:`to_thread`.

    Use as ``@asyncify`` or ``@asyncify(limiter=ThreadLimiter(4))``.  The
    sync original stays reachable as ``.sync``.

    Raises:
        TypeError: *fn* is async already (see :func:`to_thread`), when
            decorating; or, when called, it returned a coroutine.
    """
    chosen = _default_limiter if limiter is None else limiter
    if not isinstance(chosen, ThreadLimiter):
        raise TypeError(f"limiter must be a ThreadLimiter, got {type(chosen).__qualname__!r}")

    def decorate(sync_fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
        if not callable(sync_fn):
            raise TypeError(f"asyncify() needs a callable, got {type(sync_fn).__qualname__!r}")
        if is_async_callable(sync_fn):
            raise TypeError(
                f"asyncify() got an async function ({describe(sync_fn)}), which is async "
                "already: await it directly ('await fn(*args)'). asyncify() makes a sync "
                "function awaitable by running it in a worker thread"
            )

        @functools.wraps(sync_fn)
        async def run_in_thread(*args: P.args, **kwargs: P.kwargs) -> T:
            return await _to_thread(sync_fn, args, kwargs, chosen)

        run_in_thread.sync = sync_fn  # type: ignore[attr-defined]
        return run_in_thread

    if fn is None:
        return decorate
    return decorate(fn)
