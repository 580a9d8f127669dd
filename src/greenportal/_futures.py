"""Where a blocking call runs: through await_, or on the Runner its object is pinned to.

``run(runner, aw)`` is the one way :mod:`~greenportal._blocking` runs an
awaitable for sync code.  Without a Runner it is :func:`~greenportal.await_`.
With one, it is ``Runner.run`` where the caller may block, and, in a task on
another loop, a wait for the Runner's future that suspends only that task
(through ``await_``, so in a portal): a blocking call from a portal must not
stall its own loop while another loop does the work.

``submit`` starts a call without waiting.  Without a Runner it spends one
``await_`` to start a detached task on the loop ``await_`` reaches
(``Backend.spawn_future``), so the work lives where the object lives.  The
:class:`BlockingFuture` it returns waits through ``await_`` when asked for
its result in a task: blocking there could deadlock, as the work may need
that very loop.  Known gap: a result wait with a timeout, in a task, uses a
timer thread to end the wait.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from . import _backends
from ._await import await_

if TYPE_CHECKING:
    from ._runner import Runner

T = TypeVar("T")


# ---------------------------------------------------------------- where calls run


def run(runner: Runner | None, aw: Awaitable[T]) -> T:
    """Run *aw* for the calling sync code: through await_, or on *runner*."""
    if runner is None or runner.in_loop_thread():
        return await_(aw)
    if _backends.current_backend() is None:
        return runner.run(aw)
    # A task on another loop: wait there without blocking it (needs a portal).
    return await_(_on_runner(runner, aw))


async def _on_runner(runner: Runner, aw: Awaitable[T]) -> T:
    future = runner.submit(aw)
    try:
        await _until_done(future)
    except BaseException:
        future.cancel()
        raise
    return future.result()


async def _until_done(future: concurrent.futures.Future[Any], timeout: float | None = None) -> None:
    """Wait in the current task until *future* is done (or *timeout* passes)."""
    if future.done():
        return
    backend = _backends.current_backend()
    assert backend is not None
    event = backend.new_event()

    def wake(_: object = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            event.set()

    future.add_done_callback(wake)
    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, wake)
        timer.daemon = True
        timer.start()
    try:
        await event.wait()
    finally:
        if timer is not None:
            timer.cancel()


class BlockingFuture(concurrent.futures.Future[T]):
    """The :class:`concurrent.futures.Future` that ``.submit()`` returns.

    Its ``result()`` and ``exception()`` block the calling thread, as usual,
    except in a task: there they wait through :func:`~greenportal.await_`,
    suspending only the task (so they need a portal, and raise the usual
    ``RuntimeError`` without one), because blocking would stall the loop that
    may be running the work.  Cancelling the future cancels the work.
    """

    def result(self, timeout: float | None = None) -> T:
        """The call's result, waiting up to *timeout* seconds (None: no limit).

        Raises what the call raised; ``concurrent.futures.CancelledError`` if
        the future was cancelled, ``concurrent.futures.TimeoutError`` if the
        time ran out; in a task without a portal, ``RuntimeError``.
        """
        self._wait_in_task(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the call raised (None if none), waiting as :meth:`result` does."""
        self._wait_in_task(timeout)
        return super().exception(timeout)

    def _wait_in_task(self, timeout: float | None) -> None:
        if not self.done() and _backends.current_backend() is not None:
            await_(_until_done(self, timeout))
            if not self.done():
                raise concurrent.futures.TimeoutError()


def _chain(inner: concurrent.futures.Future[Any], outer: BlockingFuture[Any]) -> None:
    def copy(inner: concurrent.futures.Future[Any]) -> None:
        if inner.cancelled():
            outer.cancel()
            return
        error = inner.exception()
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(inner.result())
        del error

    def cancel(outer: concurrent.futures.Future[Any]) -> None:
        if outer.cancelled():
            inner.cancel()

    inner.add_done_callback(copy)
    outer.add_done_callback(cancel)


async def _spawn(coro: Coroutine[Any, Any, Any], future: BlockingFuture[Any]) -> None:
    backend = _backends.current_backend()
    assert backend is not None
    backend.spawn_future(coro, future)


def submit(runner: Runner | None, work: Coroutine[Any, Any, T]) -> BlockingFuture[T]:
    """Start *work* where a blocking call would run it; return its future at once.

    *work* is closed if it cannot be started.
    """
    future: BlockingFuture[T] = BlockingFuture()
    try:
        backend = _backends.current_backend()
        if runner is not None and not runner.in_loop_thread():
            _chain(runner.submit(work), future)
        elif backend is not None:
            backend.spawn_future(work, future)  # a task runs here: start one beside it
        else:
            # One await_ to start a task on the loop that await_ reaches.
            await_(_spawn(work, future))
    except BaseException:
        if inspect.getcoroutinestate(work) == inspect.CORO_CREATED:
            work.close()
        raise
    return future
