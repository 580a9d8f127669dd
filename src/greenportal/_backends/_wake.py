"""A cheaper ``call_soon_threadsafe`` for the loops greenportal hands work to.

Why
---
A thread round trip is two wake-ups: the loop's, then the caller's.  The
caller's is a bare ``threading.Lock`` release; the loop's, through
``call_soon_threadsafe``, is a ``send`` on asyncio's self-pipe socket and,
on the loop, two ``recv`` calls (the second only to learn the socket is
drained) and a handle with a copied context.  On uvloop it is an
``uv_async_t`` that runs its callbacks one loop phase later.  Measured on
Linux (``benchmarks/bench_threads.py``'s floor row against a bare
lock-released-from-a-callback hop), that wake-up alone cost 1.5x to 1.9x the
floor on asyncio and 1.5x on uvloop; with an ``eventfd`` it costs 1.4x and
1.0x.

How
---
A :class:`Channel` is a deque of ``(function, argument)`` pairs and a file
descriptor the loop watches with ``add_reader``: an ``eventfd`` on Linux, a
non-blocking pipe on other POSIX systems.  :meth:`Channel.post` appends and
writes (one syscall); the reader callback reads once (an ``eventfd`` read
resets the counter) and then runs the pairs that are in the deque then, in
the order posted.  Reading before counting is what makes it safe without a
lock: a pair whose write we consumed was appended before our read, so it is
counted; one whose write comes after our read makes the descriptor readable
again and runs on the next wake-up (so a stream of posts cannot starve the
loop's other callbacks).  ``deque.append`` and ``popleft`` are atomic (also
on free-threaded builds).

Lifetime: a Runner closes its channel when its loop has stopped (posts are
refused from then on); a channel on another loop lives as long as the loop,
whose selector holds it.  The descriptors are closed only when the channel
is collected, so a thread that still holds it and posts late writes into
our own descriptor, never into a file that reused its number.

Unlike ``call_soon_threadsafe`` a posted call runs in an empty context,
not a copy of the poster's: the poster passes what it needs (the Runner
copies the caller's context into the job).  Posted calls and
``call_soon_threadsafe`` callbacks are not ordered with each other.

Where it does not apply, :func:`open_channel` returns None and callers use
``call_soon_threadsafe``: Windows (no ``add_reader`` on a proactor loop, no
pipes in a selector), and any loop whose ``add_reader`` refuses.

Fork: the child inherits the descriptors.  An at-fork hook forgets every
channel in the child, so nothing there posts to one, and closes the
descriptors of the Runners' channels (their loop threads are gone); a
channel on another loop keeps them, since that loop may go on running in
the child (asyncio does not support that, but closing a descriptor its
selector still watches would invite a reused number).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

_EVENTFD = hasattr(os, "eventfd")

# The channels of Runner loops (open_channel(owned=True)), closed after fork.
_owned: weakref.WeakSet[Channel] = weakref.WeakSet()


class Channel:
    """Calls posted from any thread, run on one loop's thread (see the module notes).

    The descriptors are closed when the channel is collected (or, in a fork
    child, by the at-fork hook), never while a thread may still hold it: a
    late ``post`` then writes into our own descriptor, not into whatever
    file reused its number.
    """

    def __init__(self, loop: Any, read_fd: int, write_fd: int) -> None:
        # Weakly: the per-loop table below must not keep its loops alive.
        self._loop = weakref.ref(loop)
        # Invariant: a pair is in _calls only after post() and until the
        # drain that follows the next read of _read_fd runs it.
        self._calls: deque[tuple[Callable[[Any], object], Any]] = deque()
        self._read_fd = read_fd
        self._write_fd = write_fd
        # Set by close(); posts are refused from then on.
        self._closed = False
        loop.add_reader(read_fd, self._drain)
        self._release_fds = weakref.finalize(self, _close_fds, read_fd, write_fd)

    def post(self, fn: Callable[[Any], object], arg: Any) -> None:
        """Run ``fn(arg)`` on the loop thread soon (thread-safe).

        Raises RuntimeError once the channel is closed.
        """
        if self._closed:
            raise RuntimeError("the event loop is closed (its wake-up channel is)")
        self._calls.append((fn, arg))
        if _EVENTFD:
            os.eventfd_write(self._write_fd, 1)
            return
        try:  # pragma: no cover - not Linux
            os.write(self._write_fd, b"\0")
        except BlockingIOError:  # pragma: no cover
            pass  # the pipe is full: the loop has a wake-up pending anyway

    def _drain(self) -> None:
        try:
            if _EVENTFD:
                os.eventfd_read(self._read_fd)
            else:
                os.read(self._read_fd, 65536)
        except BlockingIOError:
            pass
        # Only what was posted before the read: a later post writes again, and
        # is run on the next wake-up, after the loop's other callbacks.
        calls = self._calls
        for _ in range(len(calls)):
            fn, arg = calls.popleft()
            try:
                fn(arg)
            except Exception as error:
                loop = self._loop()
                if loop is not None:
                    loop.call_exception_handler(
                        {"message": "greenportal: a posted call failed", "exception": error}
                    )
                del loop
            del fn, arg

    def take_pending(self) -> list[Any]:
        """The arguments of calls posted and not run (the loop has stopped)."""
        pending = []
        while self._calls:
            pending.append(self._calls.popleft()[1])
        return pending

    def close(self) -> None:
        """Stop watching the descriptor and refuse posts; the loop must not be running."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop()
        if loop is not None:
            if _by_loop.get(loop) is self:
                del _by_loop[loop]
            with contextlib.suppress(Exception):  # the loop may be closed already
                loop.remove_reader(self._read_fd)


def _close_fds(*fds: int) -> None:
    for fd in set(fds):
        with contextlib.suppress(OSError):
            os.close(fd)


# One channel per loop that greenportal posts to: a Runner's (closed with
# the Runner), or one opened for to_thread hosts on a loop we do not own
# (collected with the loop, whose selector holds it).
_by_loop: weakref.WeakKeyDictionary[Any, Channel] = weakref.WeakKeyDictionary()


def channel_for(loop: Any) -> Channel | None:
    """The channel onto *loop*, opened on first use (call on the loop's thread)."""
    channel = _by_loop.get(loop)
    if channel is None and loop not in _refused:
        channel = open_channel(loop, owned=False)
        if channel is None:
            _refused.add(loop)
    return channel


_refused: weakref.WeakSet[Any] = weakref.WeakSet()


def open_channel(loop: Any, *, owned: bool) -> Channel | None:
    """A channel onto *loop* (call on its thread); None if the loop cannot have one.

    *owned*: the loop is a Runner's, whose thread does not survive a fork.
    """
    if os.name != "posix":
        return None
    if _EVENTFD:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        read_fd = write_fd = fd
    else:  # pragma: no cover - not Linux
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
    try:
        # In an empty context: the loop runs the reader in a copy of the
        # context it was added in, which would otherwise be the first
        # caller's (a to_thread host task, an executor thread's call), and
        # would keep that caller's context variables alive with the loop.
        channel = contextvars.Context().run(Channel, loop, read_fd, write_fd)
    except (NotImplementedError, RuntimeError, OSError, AttributeError):
        for fd in {read_fd, write_fd}:
            os.close(fd)
        return None
    _by_loop[loop] = channel
    if owned:
        _owned.add(channel)
    return channel


def _after_fork_in_child() -> None:
    global _by_loop, _refused
    _by_loop = weakref.WeakKeyDictionary()
    _refused = weakref.WeakSet()
    for channel in list(_owned):
        # No other thread exists here to post to it.
        channel._closed = True
        channel._release_fds()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
