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
5. Any other thread: the default :class:`~greenportal.Runner`, so every such
   call in the process shares one long-lived loop.

Detection reads thread-locals and ``sys.modules``; nothing is imported.

Running the awaitable in the starting task (asyncio)
----------------------------------------------------
Trio's ``from_thread.run`` runs the awaitable *inside the task that started
the thread*, so the task's cancel scopes apply, with the context variables
the thread sees.  We give asyncio the same semantics: while the thread runs,
the starting task sits in :func:`_serve`, waiting for either the thread's end
or an await request.  It runs a request by stepping the awaitable itself,
each step inside a copy of the thread's context.  So a cancellation of the
starting task lands in the awaitable and reaches the thread as the native
``asyncio.CancelledError``, exactly as it would reach a native ``await``.

Rejected: ``asyncio.run_coroutine_threadsafe`` onto the loop (a new task:
cancelling the starting task would not reach it, and asyncio.timeout around
``to_thread`` would never fire inside it).

Cancellation while the thread runs plain sync code cannot interrupt it.  Like
Trio's default, the task waits for the thread: the cancellation is delivered
at the thread's next ``await_`` (once, as asyncio delivers a cancellation
once), or, if the thread never awaits again, raised in the task when the
thread returns.  The thread is never abandoned, so no work outlives the task.

Known gaps: threads from ``loop.run_in_executor`` and ``asyncio.to_thread``
carry no marker, so ``await_`` there uses the default Runner (a different
loop); the docs say to use :func:`to_thread` instead.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import _runner

if TYPE_CHECKING:
    import asyncio

P = ParamSpec("P")
T = TypeVar("T")


class _ThreadState(threading.local):
    # The _Host serving this thread, while it runs a to_thread() call.
    host: _Host | None = None


_state = _ThreadState()


# ---------------------------------------------------------------- dispatch


def await_without_portal(aw: Awaitable[T]) -> T:
    """Run *aw* for synchronous code outside any portal (see the module notes)."""
    host = _state.host
    if host is not None:
        return host.request(aw)
    trio = sys.modules.get("trio")
    if trio is not None and _in_trio_worker(trio):
        return _trio_from_thread(trio, aw)  # type: ignore[no-any-return]
    anyio = sys.modules.get("anyio")
    if anyio is not None and _in_anyio_worker():
        return _anyio_from_thread(aw)  # type: ignore[no-any-return]
    loop_name = _running_loop_here()
    if loop_name is not None:
        raise RuntimeError(
            f"await_() was called outside any portal on a thread that is running "
            f"{loop_name}: it cannot block here, since the awaitable needs that very "
            "loop to make progress. Give the calling task a portal ('await "
            "greenportal.ensure_portal()', or 'await greenportal.with_portal_run_sync(fn)'"
            "), or run the sync code in a worker thread with 'await "
            "greenportal.to_thread(fn)'"
        )
    runner = _runner.default_runner()
    _check_future_loop(aw, runner, "the default Runner")
    return _annotate_loop_errors(runner.run, aw, "the default Runner's loop")  # type: ignore[no-any-return]


def _running_loop_here() -> str | None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        return "an asyncio event loop"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            return "a Trio run"
    return None


def _in_trio_worker(trio: Any) -> bool:
    threads = getattr(trio, "_threads", None)
    data = getattr(threads, "PARENT_TASK_DATA", None)
    return data is not None and getattr(data, "token", None) is not None


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def _trio_from_thread(trio: Any, aw: Awaitable[Any]) -> Any:
    return trio.from_thread.run(_await, aw)


def _in_anyio_worker() -> bool:
    eventloop = sys.modules.get("anyio._core._eventloop")
    threadlocals = getattr(eventloop, "threadlocals", None)
    return threadlocals is not None and hasattr(threadlocals, "current_token")


def _anyio_from_thread(aw: Awaitable[Any]) -> Any:
    import concurrent.futures

    import anyio.from_thread

    try:
        return anyio.from_thread.run(_await, aw)
    except concurrent.futures.CancelledError as error:
        # anyio turns the task's cancellation into the thread-side exception
        # type; sync code under asyncio expects asyncio's.
        asyncio = sys.modules["asyncio"]
        raise asyncio.CancelledError(*error.args) from None


def _check_future_loop(aw: object, runner: _runner.Runner, where: str) -> None:
    get_loop = getattr(aw, "get_loop", None)
    if get_loop is None or runner.backend != "asyncio":
        return
    if get_loop() is not runner.loop:
        _close(aw)
        raise RuntimeError(
            f"await_() got a Future bound to another event loop than {where}, where "
            "await_() runs awaitables in this thread. A Future (and any resource made on "
            "a loop, such as a connection pool) can only be awaited on its own loop: make "
            "it through await_() in this thread, or await it on its loop"
        )


def _close(aw: object) -> None:
    close = getattr(aw, "close", None)
    if close is not None and type(aw).__name__ == "coroutine":
        close()


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


# ------------------------------------------------------ to_thread (asyncio)


class _Host:
    """The asyncio task that started a worker thread, serving its await_ calls.

    Thread side: :meth:`request` stores an awaitable and a copy of the
    thread's context in ``pending``, wakes the task, and blocks on ``reply``.
    Loop side: :func:`_serve` runs it and stores the outcome.  Invariants:
    at most one request is pending (the thread blocks on it); ``reply`` is
    held except between the task's answer and the thread taking it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: tuple[Awaitable[Any], contextvars.Context] | None = None
        self.answer: tuple[bool, Any] = (True, None)
        self.reply = threading.Lock()
        self.reply.acquire()
        self.finished = False
        self.waiter: asyncio.Future[None] | None = None

    def request(self, aw: Awaitable[T]) -> T:
        if self.loop.is_closed():
            _close(aw)
            raise RuntimeError("the event loop that started this thread is closed")
        get_loop = getattr(aw, "get_loop", None)
        if get_loop is not None and get_loop() is not self.loop:
            raise RuntimeError(
                "await_() got a Future bound to another event loop than the one that "
                "started this worker thread; await it on its own loop"
            )
        self.pending = (aw, contextvars.copy_context())
        del aw
        self.loop.call_soon_threadsafe(self.wake)
        self.reply.acquire()
        answer, self.answer = self.answer, (True, None)
        return _unwrap(answer)  # type: ignore[no-any-return]

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def thread_done(self) -> None:
        self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.wake)
        except RuntimeError:  # pragma: no cover - the loop closed under us
            pass


class _InContext:
    """Await *aw*, running each of its steps inside *context*."""

    __slots__ = ("aw", "context")

    def __init__(self, aw: Awaitable[Any], context: contextvars.Context) -> None:
        self.aw = aw
        self.context = context

    def __await__(self) -> Generator[Any, Any, Any]:
        run = self.context.run
        it = run(_iter, self.aw)
        self.aw = None  # type: ignore[assignment]
        send = it.send
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                trap = run(send, value) if error is None else run(it.throw, error)
            except StopIteration as stop:
                return stop.value
            finally:
                error = None
            try:
                value = yield trap
            except BaseException as thrown:
                error = thrown
                value = None


def _iter(aw: Awaitable[Any]) -> Generator[Any, Any, Any]:
    return aw.__await__()


async def _serve(host: _Host, asyncio: Any) -> None:
    """Serve *host*'s thread until it finishes (see the module notes)."""
    loop = host.loop
    # A cancellation that arrived while the thread ran sync code, not yet
    # delivered to it.
    undelivered: BaseException | None = None
    while True:
        pending = host.pending
        if pending is not None:
            host.pending = None
            aw, context = pending
            del pending
            if undelivered is not None:
                _close(aw)
                host.answer = (False, undelivered)
                undelivered = None
            else:
                try:
                    host.answer = (True, await _InContext(aw, context))
                except BaseException as error:
                    host.answer = (False, error)
            del aw, context
            host.reply.release()
            continue
        if host.finished:
            break
        host.waiter = loop.create_future()
        try:
            await host.waiter
        except asyncio.CancelledError as error:
            undelivered = error
        finally:
            host.waiter = None
    if undelivered is not None:
        raise undelivered


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
    _state.host = None


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

    async def _acquire(self, backend: str) -> None:
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

    def __init__(self, backend: str) -> None:
        self.granted = False
        if backend == "asyncio":
            import asyncio

            loop = asyncio.get_running_loop()
            future = loop.create_future()

            def set_result() -> None:
                if not future.done():
                    future.set_result(None)

            def wake() -> None:
                loop.call_soon_threadsafe(set_result)

            self.wake = wake
            self._wait: Callable[[], Awaitable[Any]] = lambda: future
        else:
            import trio

            event = trio.Event()
            token = trio.lowlevel.current_trio_token()
            self.wake = lambda: token.run_sync_soon(event.set)
            self._wait = event.wait

    async def wait(self) -> None:
        await self._wait()


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
    """
    return await _to_thread(fn, args, kwargs, _default_limiter)


async def _to_thread(
    fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], limiter: ThreadLimiter
) -> T:
    if not callable(fn):
        raise TypeError(f"to_thread() needs a callable, got {type(fn).__qualname__!r}")
    asyncio = sys.modules.get("asyncio")
    trio = sys.modules.get("trio")
    # A task, not just a loop: a Trio guest run on an asyncio host steps its
    # tasks in asyncio callbacks, where a loop runs but no asyncio task.
    loop = asyncio._get_running_loop() if asyncio is not None else None
    on_asyncio = loop is not None and asyncio.current_task(loop) is not None  # type: ignore[union-attr]
    if not on_asyncio and trio is None:
        raise RuntimeError("to_thread() must be called from an asyncio or Trio task")
    await limiter._acquire("asyncio" if on_asyncio else "trio")
    try:
        if on_asyncio:
            return await _to_thread_asyncio(asyncio, fn, args, kwargs)
        # Trio's own worker threads give trio.from_thread.run (and so await_)
        # the semantics we want; our limiter replaces its default one.
        call = functools.partial(fn, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=_unlimited(trio))  # type: ignore[no-any-return,union-attr]
    finally:
        limiter._release()


def _unwrap(outcome: tuple[bool, Any]) -> Any:
    """Return the value of an ``(ok, value)`` outcome, or raise its exception."""
    ok, value = outcome
    if ok:
        return value
    try:
        raise value
    finally:
        del value, outcome


async def _to_thread_asyncio(
    asyncio: Any,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    host = _Host(asyncio.get_running_loop())
    context = contextvars.copy_context()
    outcome: list[Any] = []

    def work() -> Callable[[], None]:
        _state.host = host
        try:
            outcome.append((True, context.run(fn, *args, **kwargs)))
        except BaseException as error:
            outcome.append((False, error))
        finally:
            _state.host = None
        return host.thread_done

    _threads.run(work)
    await _serve(host, asyncio)
    return _unwrap(outcome.pop())  # type: ignore[no-any-return]


def _unlimited(trio: Any) -> Any:
    return trio.CapacityLimiter(float("inf"))


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
    """
    chosen = _default_limiter if limiter is None else limiter
    if not isinstance(chosen, ThreadLimiter):
        raise TypeError(f"limiter must be a ThreadLimiter, got {type(chosen).__qualname__!r}")

    def decorate(sync_fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
        if not callable(sync_fn):
            raise TypeError(f"asyncify() needs a callable, got {type(sync_fn).__qualname__!r}")

        @functools.wraps(sync_fn)
        async def run_in_thread(*args: P.args, **kwargs: P.kwargs) -> T:
            return await _to_thread(sync_fn, args, kwargs, chosen)

        run_in_thread.sync = sync_fn  # type: ignore[attr-defined]
        return run_in_thread

    if fn is None:
        return decorate
    return decorate(fn)
