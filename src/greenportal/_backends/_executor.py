"""await_ in asyncio's executor threads: finding the loop that started the work.

The problem
-----------
``asyncio.to_thread(fn)`` and ``loop.run_in_executor(executor, fn)`` run
``fn`` in a ``concurrent.futures.ThreadPoolExecutor`` thread and leave no
marker there: no thread-local, no context variable (``to_thread`` copies the
task's context, but nothing in it names the loop).  Before this module,
``await_`` in such a thread ran the awaitable on the default Runner, a
different loop, so awaiting the serving loop's queue or connection hung.

How the loop is found
---------------------
Both spellings end in ``loop.run_in_executor``, which on asyncio's loops and
on uvloop alike submits the call and then chains the executor's
``concurrent.futures.Future`` to an asyncio future of the loop
(``asyncio.wrap_future``).  The chaining adds a done callback to the
executor's future whose closure holds ``dest_loop`` and ``destination``.  So,
in a worker thread:

1. walk up the stack to the frame of ``concurrent.futures.thread._WorkItem.run``
   and take its work item (``self``);
2. look for the chaining callback among the item's future's callbacks, and
   read the loop and the asyncio future from its closure.

Step 1 costs a walk of the frames between ``await_`` and the pool's worker
(tens of nanoseconds each) on every call, except in the main thread, which
is never a pool's worker (so a sync program's awaits there do not pay for a
walk to the bottom of its stack); the route found is cached per thread for
the work item, so step 2 runs once per item.

Semantics
---------
The awaitable runs on the starting loop in a task of its own, each step
inside a copy of the thread's context (for ``asyncio.to_thread`` that is the
starting task's context, copied again; ``run_in_executor`` passes none, so
it is the worker thread's own).  Cancellation: when the asyncio future the
starting task awaits is cancelled (the task was cancelled), the awaitable in
flight is cancelled and the thread's ``await_`` raises ``CancelledError``;
if the thread is in plain sync code then, the next ``await_`` raises it,
once.  Unlike :func:`greenportal.to_thread`, the starting task does not wait
for the thread: asyncio lets a cancelled ``run_in_executor`` call return at
once and the thread runs on.

The hop to the loop
-------------------
A request reaches the loop with ``call_soon_threadsafe`` the first time,
and through the loop's wake-up channel (``_wake``, opened there by that
first request) from then on; the awaitable's task takes its first step in
that callback (``_asyncio.start_task``: eagerly on 3.12+, by
``_asyncio._step_now`` before), and the thread is released as the
awaitable ends, not from the task's done callback an iteration later.  An
awaitable that never suspends thus costs one loop wake-up, as a Runner call
does.

Never a silent wrong loop
-------------------------
A worker whose item was not chained by ``run_in_executor`` (a plain
``executor.submit`` from sync code) is a sync program's thread, and ``await_``
uses the default Runner there, as in any thread.  But if some event loop runs
in the process at that moment, the item may belong to it: ``run_in_executor``
chains the future right after ``submit`` returns, so a worker that started at
once may look before the loop thread got there.  Then we wait for the
chaining a little (it needs only the GIL); if it never comes, ``await_``
raises ``RuntimeError`` saying which loop runs where and how to hand the
work over instead of guessing.  "Some loop runs" is judged from the other
threads' stacks (``sys._current_frames()``): an asyncio loop's
``run_forever``, ``asyncio.run`` or ``asyncio.Runner``, ``uvloop.run``,
``trio.run``, or a coroutine frame being stepped (a loop with no Python
frames of its own, such as uvloop's ``run_until_complete``, is stepping a
coroutine whenever it calls ``run_in_executor``, so the race above is always
seen); greenportal's own Runner threads are not counted.

:class:`LoopExecutor` needs none of this: its ``submit`` records the loop
running in the submitting thread, so ``executor.submit`` called on a loop's
thread (by a library, say) is bound too.

Rejected: patching ``BaseEventLoop.run_in_executor`` (uvloop's is a method
of an immutable C type, and the patch would be process-wide); a context
variable set in every task (needs a task factory: setup in the application).

Known gaps: a uvloop loop started by calling ``loop.run_forever()`` or
``run_until_complete`` directly has no Python frame, so while it is idle the
check above does not see it (a plain ``submit`` then uses the default
Runner); executors other than ``ThreadPoolExecutor`` (e.g. a custom
``Executor`` with its own threads) are not recognised.  The frame walk
relies on ``_WorkItem.run`` and ``asyncio.futures._chain_future``'s inner
``_call_set_state`` (both unchanged from 3.10 to 3.14); if either is missing,
this module recognises nothing and ``await_`` behaves as in a plain thread.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread
import contextvars
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Collection
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._outcome import Outcome, close_refused

if TYPE_CHECKING:
    import asyncio

P = ParamSpec("P")
T = TypeVar("T")

_RUN_CODE = getattr(getattr(concurrent.futures.thread, "_WorkItem", None), "run", None)
_RUN_CODE = getattr(_RUN_CODE, "__code__", None)

# How long a worker waits for run_in_executor to chain its future, while a
# loop runs elsewhere in the process.  The loop thread needs only the GIL.
CHAIN_WAIT = 0.25


def _chain_code() -> CodeType | None:
    """The code of ``_chain_future``'s ``_call_set_state``, or None."""
    futures = sys.modules.get("asyncio.futures")
    chain = getattr(futures, "_chain_future", None)
    for const in getattr(getattr(chain, "__code__", None), "co_consts", ()):
        if isinstance(const, CodeType) and const.co_name == "_call_set_state":
            return const
    return None


def _chained_to(future: concurrent.futures.Future[Any]) -> tuple[Any, Any] | None:
    """(loop, asyncio future) that *future* was chained to by wrap_future, or None."""
    code = _chain_code()
    if code is None:
        return None
    names = code.co_freevars
    for callback in list(getattr(future, "_done_callbacks", ())):
        if getattr(callback, "__code__", None) is code:
            cells = dict(zip(names, callback.__closure__ or (), strict=False))
            try:
                loop = cells["dest_loop"].cell_contents
                destination = cells["destination"].cell_contents
            except (KeyError, ValueError):
                return None
            if loop is not None:
                return loop, destination
    return None


class _Call(Outcome[Any]):
    """One await_ call in flight on the loop; its outcome once ``done`` is released."""

    __slots__ = ("aw", "context", "done", "started")

    def __init__(self, aw: Awaitable[Any], context: contextvars.Context) -> None:
        self.value = None
        self.error = None
        self.aw: Awaitable[Any] | None = aw
        self.context = context
        self.started = False
        # Held until the outcome is stored.
        self.done = threading.Lock()
        self.done.acquire()


class LoopRoute:
    """Runs a worker thread's awaitables on the loop that started its work item.

    Thread side: :meth:`request`.  Loop side: everything else.  Invariants
    (loop thread only): ``current`` is the task of the call in flight, or
    None; ``undelivered`` is True when the starting task was cancelled while
    no call was in flight and that cancellation has not been raised yet.
    """

    __slots__ = (
        "__weakref__",
        "current",
        "destination",
        "in_context",
        "item",
        "loop",
        "post",
        "ready",
        "source",
        "start_task",
        "undelivered",
        "watching",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        destination: asyncio.Future[Any] | None,
        item: object,
    ) -> None:
        from . import _asyncio  # (asyncio is loaded: a loop of it started this work)

        self.in_context = _asyncio._InContext
        self.start_task = _asyncio.start_task
        self.loop = loop
        # The loop's queue, for start_task (read-only here).
        self.ready = _asyncio._ready_queue(loop)
        # How requests reach the loop: call_soon_threadsafe until the first
        # one has run there, then the loop's wake-up channel, if it has one
        # (see _wake; it is opened on the loop's thread).  Requests are one
        # at a time (the thread waits for each), so switching keeps order.
        self.post: Callable[[Callable[[Any], object], Any], None] | None = None
        self.destination = destination
        # The work item (weakly), to tell whether a cached route is this item's.
        self.item: Callable[[], object] | None = None
        if item is not None:
            try:
                self.item = weakref.ref(item)
            except TypeError:  # pragma: no cover - a work item type without weakrefs
                pass
        # A LoopExecutor's future, whose chaining (if any) is looked up late.
        self.source: concurrent.futures.Future[Any] | None = None
        self.current: asyncio.Task[Any] | None = None
        self.undelivered = False
        self.watching = False

    def __repr__(self) -> str:
        return f"<LoopRoute to {self.loop!r}>"

    def request(self, aw: Awaitable[T]) -> T:
        loop = self.loop
        if loop.is_closed() or not loop.is_running():
            close_refused(aw)
            state = "closed" if loop.is_closed() else "no longer running"
            raise RuntimeError(
                f"await_() in this executor thread would run on {loop!r}, the event loop "
                f"that started the thread's work, but that loop is {state}"
            )
        get_loop = getattr(aw, "get_loop", None)
        if get_loop is not None and get_loop() is not loop:
            close_refused(aw)
            raise RuntimeError(
                f"await_() got a Future bound to {get_loop()!r}, but this executor thread's "
                f"work was started by {loop!r}, where await_() runs awaitables. A Future "
                "can only be awaited on its own loop"
            )
        call = _Call(aw, contextvars.copy_context())
        del aw
        post = self.post
        try:
            if post is not None:
                post(self._begin, call)
            else:
                loop.call_soon_threadsafe(self._begin, call)
        except RuntimeError:
            close_refused(call.aw)
            raise
        done = call.done
        while not done.acquire(timeout=1.0):
            if loop.is_closed():
                close_refused(call.aw)
                raise RuntimeError(
                    f"{loop!r} was closed while await_() in this executor thread waited on it"
                )
        return call.unwrap()  # type: ignore[no-any-return]

    # -- on the loop thread

    def _begin(self, call: _Call) -> None:
        if self.post is None:
            from . import _wake

            channel = _wake.channel_for(self.loop)
            if channel is not None:
                self.post = channel.post
        if not self.watching:
            self.watching = True
            self._watch()
        if self.undelivered:
            self.undelivered = False
            close_refused(call.aw)
            call.aw = None
            call.error = sys.modules["asyncio"].CancelledError()
            call.done.release()
            return
        # The first step runs here where it can (start_task).  The task's
        # own context (a copy of this callback's) holds nothing of ours:
        # each step of the awaitable runs in the thread's (in_context).
        task = self.start_task(self.loop, self.ready, self._drive(call), None, call)
        if not task.done():  # (it may have finished already)
            self.current = task
        task.add_done_callback(lambda _: self._ended(call))

    def _watch(self) -> None:
        destination = self.destination
        if destination is None and self.source is not None:
            # A LoopExecutor's work: run_in_executor, if it made this call, has
            # chained the future by now (it does so on this thread, right
            # after submit() returns, before this callback can run).
            found = _chained_to(self.source)
            destination = self.destination = found[1] if found is not None else None
        if destination is None:
            return
        if destination.done():
            self.undelivered = destination.cancelled()
        else:
            destination.add_done_callback(self._destination_done)

    def _destination_done(self, destination: asyncio.Future[Any]) -> None:
        if not destination.cancelled():
            return
        current = self.current
        if current is not None and not current.done():
            current.cancel()
        else:
            self.undelivered = True

    async def _drive(self, call: _Call) -> None:
        call.started = True
        aw, call.aw = call.aw, None
        assert aw is not None
        try:
            call.value = await self.in_context(aw, call.context)
        except BaseException as error:
            call.error = error
        finally:
            del aw
            # The thread goes on now, not when the task's done callbacks
            # run (a loop iteration later).
            call.done.release()

    def _ended(self, call: _Call) -> None:
        if self.current is not None and self.current.done():
            self.current = None
        if not call.started:  # cancelled before its first step (loop shutdown)
            close_refused(call.aw)
            call.aw = None
            call.error = sys.modules["asyncio"].CancelledError()
            call.done.release()


# -- finding the route ------------------------------------------------------------


class _State(threading.local):
    # The route of the work item this thread runs (or last ran).
    route: LoopRoute | None = None
    # A LoopExecutor binding, set while its work runs in this thread.
    bound: LoopRoute | None = None


_state = _State()


def _work_item() -> Any:
    """The ThreadPoolExecutor work item this thread is running, or None."""
    if _RUN_CODE is None or "concurrent.futures.thread" not in sys.modules:
        return None
    if threading.get_ident() == threading.main_thread().ident:
        return None  # a pool runs its items in threads of its own: skip the walk
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _RUN_CODE:
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


def route(exclude: Callable[[], Collection[int]]) -> LoopRoute | None:
    """The loop-bound route for ``await_`` in this thread; None if it is no loop's.

    *exclude* gives the thread ids of greenportal's own Runner loops (not
    counted as "a loop runs elsewhere"); it is called only when needed.
    Raises ``RuntimeError`` when the thread is an executor's whose work no
    loop claimed while some loop runs.
    """
    bound = _state.bound
    if bound is not None:
        return bound
    item = _work_item()
    if item is None:
        return None
    cached = _state.route
    if cached is not None and cached.item is not None and cached.item() is item:
        return cached
    future = getattr(item, "future", None)
    if future is None:
        return None
    found = _chained_to(future)
    if found is None:
        running = loop_running_elsewhere(exclude())
        if running is None:
            return None
        deadline = time.monotonic() + CHAIN_WAIT
        while found is None and time.monotonic() < deadline:
            time.sleep(0.001)
            found = _chained_to(future)
        if found is None:
            raise RuntimeError(
                "await_() was called in a concurrent.futures worker thread whose work no "
                f"event loop started, while {running}. greenportal will not guess which "
                "loop this call belongs to. Start the work from the loop with 'await "
                "asyncio.to_thread(fn)', 'await loop.run_in_executor(executor, fn)' or "
                "'await greenportal.to_thread(fn)', or submit it from the loop's thread "
                "to a greenportal.LoopExecutor; to use the background loop on purpose, "
                "call greenportal.default_runner().run(...)"
            )
    loop, destination = found
    new = LoopRoute(loop, destination, item)
    _state.route = new
    return new


def loop_running_elsewhere(exclude: Collection[int]) -> str | None:
    """Describe an event loop running in another thread of the process, or None."""
    codes: dict[Any, str] = {}
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        base = sys.modules.get("asyncio.base_events")
        runners = sys.modules.get("asyncio.runners")
        for obj, what in (
            (getattr(getattr(base, "BaseEventLoop", None), "run_forever", None), "an asyncio loop"),
            (getattr(runners, "run", None), "asyncio.run()"),
            (getattr(getattr(runners, "Runner", None), "run", None), "an asyncio.Runner"),
            (getattr(sys.modules.get("uvloop"), "run", None), "uvloop.run()"),
        ):
            code = getattr(obj, "__code__", None)
            if code is not None:
                codes[code] = what
    trio = sys.modules.get("trio")
    if trio is not None:
        code = getattr(getattr(trio, "run", None), "__code__", None)
        if code is not None:
            codes[code] = "trio.run()"
    here = threading.get_ident()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident == here or ident in exclude:
            continue
        walk: FrameType | None = frame
        stepping = False
        while walk is not None:
            found = codes.get(walk.f_code)
            if found is not None:
                return f"{found} runs in thread {names.get(ident, ident)!r}"
            stepping = stepping or bool(walk.f_code.co_flags & _ASYNC_FLAGS)
            walk = walk.f_back
        if stepping:
            # A coroutine is running there, so something steps it: a loop
            # without Python frames of its own (uvloop's run_until_complete).
            return f"a coroutine runs in thread {names.get(ident, ident)!r}"
    return None


# A coroutine's or async generator's frame: CO_COROUTINE | CO_ITERABLE_COROUTINE
# | CO_ASYNC_GENERATOR (inspect's constants, without importing inspect).
_ASYNC_FLAGS = 0x80 | 0x100 | 0x200


# -- LoopExecutor --------------------------------------------------------------------


class LoopExecutor(concurrent.futures.ThreadPoolExecutor):
    """A thread pool whose work may call :func:`greenportal.await_` on the submitting loop.

    ``submit()`` called in a thread where an asyncio event loop runs (uvloop
    included) binds the work to that loop: ``await_`` in it runs awaitables
    there.  Work submitted from any other thread is not bound, and behaves
    as in a plain ``ThreadPoolExecutor``.

    Any ``ThreadPoolExecutor`` passed to ``loop.run_in_executor`` (or set
    with ``loop.set_default_executor``) is recognised without this class;
    use it when the work is submitted with ``executor.submit`` on the loop's
    thread, for example by a library that wraps the future itself.

    Each call also runs in a copy of the submitter's context variables, as
    with ``asyncio.to_thread``.
    """

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)``; bind it to the loop running in this thread, if any.

        Returns the ``concurrent.futures.Future`` of the call, as
        ``ThreadPoolExecutor.submit`` does.
        """
        asyncio = sys.modules.get("asyncio")
        loop = asyncio._get_running_loop() if asyncio is not None else None
        if loop is None:
            return super().submit(fn, *args, **kwargs)
        route = LoopRoute(loop, None, None)
        context = contextvars.copy_context()

        def bound() -> T:
            previous, _state.bound = _state.bound, route
            try:
                return context.run(fn, *args, **kwargs)
            finally:
                _state.bound = previous

        future = super().submit(bound)
        # The route finds the future's chaining (if run_in_executor made this
        # call) on the loop thread, at its first await_: see _watch.
        route.source = future
        return future
