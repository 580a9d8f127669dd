"""asyncio (and uvloop, and anyio on asyncio) behind the backend interface.

What lives here
---------------
* :class:`AsyncioBackend`: the portal operations (find the task, read and
  replace its coroutine, the two kinds of yield), the task-tree scope, the
  cross-thread event and the ``to_thread`` host;
* :class:`Host`: the task that started a worker thread, serving the
  thread's ``await_`` calls (see "Running the awaitable in the starting
  task" below);
* :class:`RunnerLoop`: a Runner's event loop on its own thread.

The eager-factory guard (``_eager``), the checked write into the C Task
(``_ctask``) and the eventfd wake-up channel (``_wake``) are modules of their
own, used only from here.  This module is imported only once asyncio is
(``_backends.get_backend``), so it imports asyncio at the top.

Other threads reach a Runner's loop, and the loop of a ``to_thread`` host,
through the loop's wake-up channel (one per loop, see ``_wake``), or through
``call_soon_threadsafe`` on a loop that cannot have one; each sender sticks
to one of the two, so its calls arrive in the order it made them.  A
Runner's job runs its first step in the wake-up's callback
(``RunnerLoop._begin``): eagerly on 3.12+, through :func:`_step_now` before.

Running the awaitable in the starting task
------------------------------------------
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

Task trees
----------
asyncio has no hook for new tasks like Trio's instruments, but it has the
two things we need: a context that every task copies from the code that
creates it, and a per-loop task factory.  Entering the scope sets a context
variable; our factory, chained in front of whatever factory the loop already
had (eager ones included), wraps the coroutine of every task created where
that variable is set.  Each such task copies the variable into its own
context, so its children get portals too, transitively, and tasks created
after the scope has exited, or outside it, do not.  The factory is removed
when the last scope on the loop exits, if nobody has installed another
factory on top of it.  Known gap: an asyncio task created with an explicit
``context=`` follows that context, not the creating code's.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import collections
import concurrent.futures
import contextlib
import contextvars
import sys
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from typing import Any, Protocol, TypeVar

from .. import _await
from .._outcome import Outcome, close_refused
from .._portal import Portal
from . import _ctask, _eager, _wake
from ._common import (
    Job,
    Spawn,
    cancel_job,
    fail_closed,
    raised_in,
    settle,
    worker,
    wrong_library_error,
)

# Eager task factories exist from 3.12 on (see _eager).
_EAGER: bool = sys.version_info >= (3, 12)
# loop.create_task(context=) exists from 3.11 on.
_CREATE_TASK_CONTEXT: bool = sys.version_info >= (3, 11)

# Tasks started by spawn_future, until they are done (see there).
_detached: set[asyncio.Task[Any]] = set()

T = TypeVar("T")


@types.coroutine
def _bare_yield() -> Generator[None, None, None]:
    yield


class AsyncioBackend:
    name = "asyncio"
    sleep0 = "asyncio.sleep(0)"

    def __init__(self) -> None:
        self._pytask: type | None = getattr(asyncio.tasks, "_PyTask", None)
        self._ctask: type | None = getattr(asyncio.tasks, "_CTask", None)
        prepare_loop = _eager.guard_loop if _EAGER else None
        _await.bind_current_asyncio_task(
            asyncio.current_task, asyncio._get_running_loop, prepare_loop
        )

    # -- portal operations ---------------------------------------------------

    def current_task(self) -> object | None:
        try:
            return asyncio.current_task()
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
        return asyncio.sleep(0)

    async def schedule_point(self) -> None:
        task = asyncio.current_task()
        try:
            await _bare_yield()
        except asyncio.CancelledError as exc:
            # Not a cancellation point: hand the request back to the task so
            # that its next real await sees it.
            assert task is not None
            if sys.version_info >= (3, 11):
                task.uncancel()
            task.cancel(*exc.args)

    def task_id(self, task: Any) -> int | None:
        return id(task)

    def prepare(self) -> None:
        if _EAGER:
            _eager.guard_loop(asyncio.get_running_loop())

    def owns(self, task: object) -> bool:
        return isinstance(task, asyncio.Task) or (
            self._pytask is not None and isinstance(task, self._pytask)
        )

    # -- task trees, threads ---------------------------------------------------

    def children_scope(self) -> contextlib.AbstractContextManager[None]:
        return _children_scope()

    def new_event(self) -> Event:
        return Event(asyncio.get_running_loop())

    def spawn_future(
        self, coro: Coroutine[Any, Any, Any], future: concurrent.futures.Future[Any]
    ) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(coro)
        # The loop holds its tasks weakly: keep this one until it is done.
        _detached.add(task)

        def finished(task: asyncio.Task[Any]) -> None:
            _detached.discard(task)
            if task.cancelled():
                future.cancel()
            else:
                error = task.exception()
                settle(future, None if error is not None else task.result(), error)
                del error

        def cancelled(future: concurrent.futures.Future[Any]) -> None:
            if future.cancelled() and not task.done():
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(task.cancel)

        task.add_done_callback(finished)
        future.add_done_callback(cancelled)

    async def to_thread(self, fn: Callable[[], T], spawn: Spawn) -> T:
        host = Host(asyncio.get_running_loop())
        context = contextvars.copy_context()
        outcome: list[Outcome[T]] = []

        def work() -> Callable[[], None]:
            worker.host = host
            try:
                outcome.append(Outcome(context.run(fn)))
            except BaseException as error:
                outcome.append(Outcome(error=error))
            finally:
                worker.host = None
            return host.thread_done

        spawn(work)
        await _serve(host)
        return outcome.pop().unwrap()


# -- the cross-thread event ------------------------------------------------------


class Event:
    """Set from any thread, waited on by one task on *loop*; re-arms after each wait."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future = loop.create_future()

    async def wait(self) -> None:
        await self._future
        self._future = self._loop.create_future()

    def set(self) -> None:
        """Thread-safe; RuntimeError if the loop is closed."""
        self._loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)


# -- the to_thread host ------------------------------------------------------------


class Host:
    """The asyncio task that started a worker thread, serving its await_ calls.

    Thread side: :meth:`request` stores an awaitable and a copy of the
    thread's context in ``pending``, wakes the task, and blocks on ``reply``.
    Loop side: :func:`_serve` runs it and stores the outcome.  Invariants:
    at most one request is pending (the thread blocks on it); ``reply`` is
    held except between the task's answer and the thread taking it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # How the thread wakes the task: the loop's channel (see _wake), or
        # call_soon_threadsafe where it has none.  Both requests and the
        # thread's end go the same way, so they arrive in order.
        channel = _wake.channel_for(loop)
        self._post = channel.post if channel is not None else _post_threadsafe(loop)
        self.pending: tuple[Awaitable[Any], contextvars.Context] | None = None
        # The reply to the pending request; None while there is none.
        self.answer: Outcome[Any] | None = None
        self.reply = threading.Lock()
        self.reply.acquire()
        self.finished = False
        self.waiter: asyncio.Future[None] | None = None

    def request(self, aw: Awaitable[T]) -> T:
        if self.loop.is_closed():
            close_refused(aw)
            raise RuntimeError("the event loop that started this thread is closed")
        get_loop = getattr(aw, "get_loop", None)
        if get_loop is not None and get_loop() is not self.loop:
            raise RuntimeError(
                "await_() got a Future bound to another event loop than the one that "
                "started this worker thread; await it on its own loop"
            )
        self.pending = (aw, contextvars.copy_context())
        del aw
        self._post(Host.wake, self)
        self.reply.acquire()
        answer, self.answer = self.answer, None
        assert answer is not None
        return answer.unwrap()  # type: ignore[no-any-return]

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def thread_done(self) -> None:
        self.finished = True
        try:
            self._post(Host.wake, self)
        except RuntimeError:  # pragma: no cover - the loop closed under us
            pass


def _post_threadsafe(
    loop: asyncio.AbstractEventLoop,
) -> Callable[[Callable[[Any], object], Any], None]:
    """A channel's post() spelled with call_soon_threadsafe (for loops without a channel)."""

    def post(fn: Callable[[Any], object], arg: Any) -> None:
        loop.call_soon_threadsafe(fn, arg)

    return post


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


async def _serve(host: Host) -> None:
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
                close_refused(aw)
                host.answer = Outcome(error=undelivered)
                undelivered = None
            else:
                try:
                    host.answer = Outcome(await _InContext(aw, context))
                except BaseException as error:
                    host.answer = Outcome(error=error)
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


# -- task trees ------------------------------------------------------------------

# True in the context of code (and of tasks created from it) inside a tree scope.
_in_tree: contextvars.ContextVar[bool] = contextvars.ContextVar("greenportal_tree", default=False)


def _wrap_for_tree(coro: Any, context: contextvars.Context | None) -> tuple[Any, Portal | None]:
    """Wrap *coro* in a portal if the task is being created inside a tree scope."""
    active = context.get(_in_tree, False) if context is not None else _in_tree.get()
    if not active or type(coro) is Portal or not asyncio.iscoroutine(coro):
        return coro, None
    portal = Portal(coro)
    return portal, portal


# Decides whether a new task's coroutine gets a portal: (coro, context) ->
# (what the task runs, the portal made for it or None).
Wrap = Callable[[Any, contextvars.Context | None], tuple[Any, Portal | None]]


def _tree_factory(
    inner: Callable[..., Any] | None, wrap: Wrap = _wrap_for_tree
) -> Callable[..., Any]:
    """A task factory that behaves like *inner* and gives tree tasks portals.

    *wrap* decides which coroutines get one (``_wrap_for_tree``: those of
    tasks created inside a tree scope; ``_nest`` passes one that wraps all).
    """
    ctor = _eager.eager_constructor(inner) if _EAGER else None
    if ctor is not None:
        # Made by asyncio.create_eager_task_factory(ctor): we make another one
        # around our own constructor rather than wrapping the factory, because
        # code that must not start tasks eagerly (anyio's task groups)
        # recognises such factories and calls their constructor itself.
        return _eager.make_eager_factory(ctor, wrap)

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        coro, portal = wrap(coro, kwargs.get("context"))
        if inner is not None:
            task = inner(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if portal is not None:
            portal.task_id = id(task)
        return task

    return factory


class _TreeState:
    """Our task factory on one loop, and how to take it out again."""

    def __init__(self, inner: Callable[..., Any] | None) -> None:
        # The factory the loop had before us.
        self.inner = inner
        # What we installed in its place.
        self.factory = _tree_factory(inner)
        # Number of scopes on this loop that are active now; 0 => uninstall.
        self.scopes = 0


_tree_states: weakref.WeakKeyDictionary[Any, _TreeState] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _children_scope() -> Iterator[None]:
    loop = asyncio.get_running_loop()
    state = _tree_states.get(loop)
    if state is None or loop.get_task_factory() is not state.factory:
        state = _tree_states[loop] = _TreeState(loop.get_task_factory())
        loop.set_task_factory(state.factory)
    state.scopes += 1
    token = _in_tree.set(True)
    try:
        yield
    finally:
        _in_tree.reset(token)
        state.scopes -= 1
        if state.scopes == 0 and loop.get_task_factory() is state.factory:
            loop.set_task_factory(state.inner)
            del _tree_states[loop]


# -- a Runner's loop -------------------------------------------------------------

TRIO_ON_ASYNCIO = (
    "a Trio awaitable reached an asyncio Runner, whose asyncio event loop cannot run "
    "Trio code. Run it on a Trio Runner: for await_() and blocking() in threads with no "
    'event loop, greenportal.set_default_runner(greenportal.Runner(backend="trio")); '
    'for explicit calls, greenportal.Runner(backend="trio").run(...)'
)


def _trio_here(error: BaseException) -> BaseException:
    """*error*, or a clear RuntimeError if it says that Trio code ran on this loop.

    Trio code outside a Trio run fails in Trio ("must be called from async
    context", or an AttributeError on the missing run) or yields a Trio trap
    that asyncio rejects ("Task got bad yield").  Either way the awaitable
    has finished, by raising; only the message changes.
    """
    if type(error) in (RuntimeError, AttributeError) and raised_in(error, "trio"):
        return wrong_library_error(TRIO_ON_ASYNCIO, error)
    if type(error) is RuntimeError:
        text = str(error)
        if text.startswith("Task got bad yield") and "trio" in text:
            return wrong_library_error(TRIO_ON_ASYNCIO, error)
    return error


def _call(fn: Callable[[], object]) -> None:
    fn()


class _Startable(Protocol):
    started: bool  # set by the first step of the task's coroutine


def start_task(
    loop: asyncio.AbstractEventLoop,
    ready: collections.deque[Any] | None,
    coro: Coroutine[Any, Any, None],
    context: contextvars.Context | None,
    unit: _Startable,
) -> asyncio.Task[None]:
    """The task of a call handed to *loop* from another thread, its first step run now.

    For a Runner's job and for an executor thread's ``await_`` (*unit*,
    whose ``started`` the coroutine's first step sets).  The first step runs
    in the callback that received the call, not one loop iteration later: on
    3.12+ the task starts eagerly, unless the loop has a task factory, which
    is then honoured; otherwise, on a loop whose queue is *ready*
    (:func:`_ready_queue`), :func:`_step_now` runs the step the task queued.
    Work that finishes without suspending then never waits for the loop.
    *context*: the task's context (None: a copy of the current one).
    """
    task: asyncio.Task[None]
    if _EAGER and loop.get_task_factory() is None:
        task = asyncio.Task(coro, loop=loop, context=context, eager_start=True)  # type: ignore[call-arg]
    elif _CREATE_TASK_CONTEXT:
        task = loop.create_task(coro, context=context)  # type: ignore[call-arg]
    elif context is not None:
        task = context.run(loop.create_task, coro)
    else:
        task = loop.create_task(coro)
    if ready is not None and not unit.started:
        _step_now(loop, ready, task)
    return task


def _ready_queue(loop: asyncio.AbstractEventLoop) -> collections.deque[Any] | None:
    """The queue of callbacks of a pure-Python asyncio *loop*, or None (see _step_now)."""
    ready = getattr(loop, "_ready", None) if isinstance(loop, asyncio.BaseEventLoop) else None
    return ready if type(ready) is collections.deque else None


def _step_now(loop: asyncio.AbstractEventLoop, ready: collections.deque[Any], task: object) -> None:
    """Run *task*'s first step now, if it is the last callback in *loop*'s *ready* queue.

    Without eager tasks (3.10, 3.11, or a loop with a task factory), a new
    task's first step waits for the next loop iteration: a selector poll and
    a pass over the loop's queue before the work begins.  A pure-Python
    asyncio loop keeps that queue in ``_ready`` (:func:`_ready_queue`); when
    the step that the task just queued is its last entry, this takes it out
    and runs it here, as an eager start would.  Other loops (uvloop has no
    ``_ready``) and anything else at the end of the queue are left alone:
    the step then runs when the loop gets to it.
    """
    if not ready or asyncio.current_task(loop) is not None:
        # (Inside another task's step, the new task could not enter.)
        return
    handle = ready[-1]
    if type(handle) is not asyncio.Handle or handle.cancelled():
        return
    if getattr(getattr(handle, "_callback", None), "__self__", None) is not task:
        return
    ready.pop()
    handle._run()


class RunnerLoop:
    """An asyncio event loop running in its own thread, for a Runner.

    Invariant: every call from other threads into the loop (``spawn``,
    ``cancel``, ``call_soon``) goes through ``_channel`` if there is one,
    else through ``call_soon_threadsafe``, never both; so they run in the
    order they were made.
    """

    def __init__(
        self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, debug: bool | None
    ) -> None:
        self._factory = loop_factory or asyncio.new_event_loop
        self._debug = debug
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread_id = 0
        self._thread: threading.Thread | None = None
        # Jobs begun and not finished.  Touched on the loop thread only.
        self._jobs: set[Job] = set()
        self._closing = False
        # How spawn() reaches the loop: an eventfd channel (see _wake), or
        # None for call_soon_threadsafe.  Set once, before the loop runs.
        self._channel: _wake.Channel | None = None
        # The loop's queue of callbacks, if _step_now can use it.  Set once,
        # before the loop runs.
        self._ready: collections.deque[Any] | None = None

    def start(self, name: str) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                loop = self._factory()
                if self._debug is not None:
                    loop.set_debug(self._debug)
                asyncio.set_event_loop(loop)
                self._channel = _wake.open_channel(loop, owned=True)
                self._ready = _ready_queue(loop)
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
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                asyncio.set_event_loop(None)

        self._thread = threading.Thread(target=main, name=name, daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]

    def native_loop(self) -> asyncio.AbstractEventLoop:
        assert self.loop is not None
        return self.loop

    def is_foreign(self, aw: object) -> bool:
        """Is *aw* a Future bound to another loop than this one?"""
        get_loop = getattr(aw, "get_loop", None)
        return get_loop is not None and get_loop() is not self.loop

    def spawn(self, job: Job) -> None:
        # The work runs in a copy of the caller's context, taken here, in
        # the caller's thread (a posted call carries no context of its own).
        job.context = contextvars.copy_context()
        channel = self._channel
        if channel is not None:
            channel.post(self._begin, job)
        else:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._begin, job)

    def _begin(self, job: Job) -> None:
        if self._closing:
            fail_closed(job, asyncio.CancelledError())
            return
        loop = self.loop
        assert loop is not None and job.context is not None
        context, job.context = job.context, None
        self._jobs.add(job)
        coro = self._drive(job)
        try:
            job.handle = start_task(loop, self._ready, coro, context, job)
        except BaseException as error:
            # No task (a task factory that failed, say): the caller gets the error.
            self._jobs.discard(job)
            if not job.started:
                coro.close()
                close_refused(job.fn)
                job.fail(error)
                job.finish()

    async def _drive(self, job: Job) -> None:
        # Cancellation before the task's first step would skip this body and
        # leave the job unfinished, so cancel() and close() only flag a job
        # that has not started, and it checks the flags here.
        job.started = True
        try:
            if job.cancel_requested or job.closing:
                close_refused(job.fn)
                job.fail(asyncio.CancelledError())
            else:
                # (Inline rather than through Job.run: one coroutine frame less
                # on every step of the work.)
                try:
                    job.value = await job.make_awaitable()
                except BaseException as error:
                    job.error = _trio_here(error)
        finally:
            self._jobs.discard(job)
            job.finish()

    def cancel(self, job: Job) -> None:
        """Cancel *job* if it runs, or make it fail when it starts (thread-safe)."""
        cancel_job(job, self.call_soon)

    def call_soon(self, fn: Callable[[], object]) -> None:
        # Through the same channel as spawn(), when there is one: a cancel()
        # must not overtake the start of the job it cancels.
        channel = self._channel
        if channel is not None:
            channel.post(_call, fn)
        else:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(fn)

    def new_event(self) -> Event:
        assert self.loop is not None
        return Event(self.loop)

    def shutdown(self, before: Callable[[], Awaitable[None]]) -> None:
        """Run *before* on the loop, then the shutdown sequence; join the thread."""
        loop = self.loop
        assert loop is not None and self._thread is not None

        async def sequence() -> None:
            await before()
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
        # Make sure no caller waits for a job that never ran (or was posted
        # and never reached the loop).
        self._closing = True
        late = self._channel.take_pending() if self._channel is not None else []
        for job in [*self._jobs, *(arg for arg in late if isinstance(arg, Job))]:
            fail_closed(job, asyncio.CancelledError())
        if self._channel is not None:
            self._channel.close()
        loop.close()
