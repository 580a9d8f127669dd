"""Sync views of async iterators and context managers, on a Runner's loop.

Contexts and iterators live in one task
---------------------------------------
``Runner.wrap_context`` enters and exits the async context manager inside one
long-lived *holder* task, which sleeps between ``__aenter__`` and
``__aexit__``: cancel scopes, task groups and ``asyncio.timeout`` must be
entered and exited by the same task.  ``Runner.wrap_iter`` likewise drives
the whole iteration in one task and closes the iterator there when the
consumer stops, breaks, is collected, or the Runner closes.

Each hand-over between the sync caller's thread and the task goes through a
lock or semaphore (the caller's side) and a :class:`~._backends.LoopEvent`
(the task's side); the invariants are written on the classes.

This module imports the Runner only for types: ``_runner`` calls into it.
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from ._backends import Job, LoopEvent, RunnerClosedError, RunnerLoop
from ._outcome import Outcome

if TYPE_CHECKING:
    from ._runner import Runner

T = TypeVar("T")


class Holder:
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
        self.exit_event: LoopEvent | None = None
        self.finished: LoopEvent | None = None
        self.exc: BaseException | None = None
        self.job: Job | None = None
        self.exited = False
        # How __aexit__ ended, when asked to exit (for exit_holders).
        self.exit_outcome: Outcome[bool] | None = None

    async def hold(self, runner_loop: RunnerLoop) -> bool:
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
            try:
                if exc is None:
                    suppress = bool(await cm.__aexit__(None, None, None))
                else:
                    suppress = bool(await cm.__aexit__(type(exc), exc, exc.__traceback__))
            except BaseException as error:
                self.exit_outcome = Outcome(error=error)
                raise
            finally:
                del exc
            self.exit_outcome = Outcome(suppress)
            return suppress
        finally:
            self.finished.set()


class ExitReport:
    """What leaving a Runner's contexts did to the exception in flight.

    ``pending`` starts as the exception ``Runner.__exit__`` got (None for
    ``close()``) and ends as the one to propagate: None if a context
    suppressed it, or a new one a context raised, chained to what it
    replaced.  ``suppressed``: some context returned true.
    """

    def __init__(self, exc: BaseException | None) -> None:
        self.pending = exc
        self.suppressed = False


def _chain(new: BaseException, old: BaseException) -> None:
    # As contextlib.ExitStack does: make *old* the end of *new*'s __context__
    # chain, unless it is on it already.
    seen: set[int] = set()
    while id(new) not in seen:
        seen.add(id(new))
        context = new.__context__
        if context is None or context is old:
            break
        new = context
    else:  # pragma: no cover - a cycle in the chain: leave it alone
        return
    if new.__context__ is None and new is not old:
        new.__context__ = old


async def exit_holders(holders: list[Holder], report: ExitReport) -> None:
    """Exit each entered context, last entered first, as ``contextlib.ExitStack`` does.

    Each context's ``__aexit__`` gets ``report.pending``; one returning true
    clears it, one raising replaces it (see :class:`ExitReport`).
    """
    while holders:
        holder = holders.pop()
        if holder.exited or holder.exit_event is None or holder.finished is None:
            continue
        holder.exited = True
        holder.exc = report.pending
        holder.exit_event.set()
        await holder.finished.wait()
        outcome, holder.exit_outcome = holder.exit_outcome, None
        if outcome is None:
            continue  # cancelled before it could exit (cannot happen while closing)
        error, outcome.error = outcome.error, None
        if error is None:
            if outcome.value and report.pending is not None:
                report.pending = None
                report.suppressed = True
        elif error is not report.pending:
            if report.pending is not None:
                _chain(error, report.pending)
            report.pending = error
        del error, outcome


class SyncContext(Generic[T]):
    """A synchronous view of an async context manager on a :class:`Runner`.

    Made by :meth:`Runner.wrap_context`.  ``__enter__`` runs ``__aenter__`` on
    the runner's loop and ``__exit__`` runs ``__aexit__`` there, both in one
    task.  Single use.
    """

    def __init__(self, runner: Runner, cm: Any, factory: Callable[[], Any] | None) -> None:
        self._runner = runner
        self._holder: Holder | None = Holder(cm, factory)
        self._used = False

    def __enter__(self) -> T:
        holder = self._holder
        if self._used or holder is None:
            raise RuntimeError("this SyncContext was already entered; make a new one")
        self._used = True
        runner = self._runner
        job = Job(holder.hold, (runner._ensure_started(),), {})
        holder.job = job
        runner._start_job(job)
        runner._wait(job, holder.entered)
        if not holder.enter_ok:
            self._holder = None
            runner._wait(job)
            job.result()  # raises the entry error
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
        return bool(job.result())


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
        self.event: LoopEvent | None = None
        self.replies: deque[Outcome[Any]] = deque()
        self.reply_ready = threading.Semaphore(0)

    def answer(self, reply: Outcome[Any]) -> None:
        self.replies.append(reply)
        self.reply_ready.release()


_STOP: Any = object()
_STARTED: Any = object()


async def _pump(aiterable: AsyncIterable[Any], state: _IterState, loop: RunnerLoop) -> None:
    state.event = loop.new_event()
    final: Outcome[Any] = Outcome(_STOP)
    iterator: Any = None
    try:
        iterator = aiterable.__aiter__()
        state.answer(Outcome(_STARTED))
        while True:
            await state.event.wait()
            if state.request == "close":
                return
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            state.answer(Outcome(item))
            del item
    except BaseException as error:
        final = Outcome(error=error)
        raise
    finally:
        try:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        except BaseException as error:
            final = Outcome(error=error)
            raise
        finally:
            state.answer(final)
            del final


def iterate(runner: Runner, aiterable: AsyncIterable[T]) -> Iterator[T]:
    state = _IterState()
    job = Job(_pump, (aiterable, state, runner._ensure_started()), {})
    del aiterable
    runner._start_job(job)
    runner._wait(job, state.reply_ready)
    finished = False
    try:
        while True:
            reply = state.replies.popleft()
            if not reply.ok or reply.value is _STOP:
                finished = True
                runner._wait(job)
                job.result()  # raises the iterator's error, or RunnerClosedError
                reply.unwrap()  # raises the iterator's error
                return
            value: T = reply.value  # type: ignore[assignment]
            del reply
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
                job.result()  # raises RunnerClosedError
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
                        job.result()  # an error from aclose()
