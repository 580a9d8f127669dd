"""Thread round trips: Runner.run and await_ from worker threads, against the peers.

A sync caller in one thread asks an event loop in another thread to run a
coroutine and waits for the result.  Every way of doing it pays at least two
thread wake-ups (the loop's, then the caller's); the first row measures
exactly that with two threads handing a token back and forth through locks.

Rows (per round trip of ``await asyncio.sleep(0)``, median over rounds with
the spread of the per-round medians; all implementations interleaved round
by round in this one process):

* two thread wake-ups: the floor;
* a bare hop (an eventfd the loop watches, a task per call, a lock): no
  library, the least a hop with a task per call costs on the loop measured;
* sync caller -> loop thread: ``greenportal.Runner.run``, ``greenportal.await_``
  in a thread with no loop (the default Runner, here the one being measured,
  set with ``set_default_runner``), the thread-runner
  pattern (``asyncio.run_coroutine_threadsafe(...).result()``), synchronicity
  (``Synchronizer.create_blocking``), anyio's blocking portal
  (``start_blocking_portal().call``), asgiref's ``async_to_sync``;
* worker thread -> its starting loop: ``greenportal.await_`` inside
  ``greenportal.to_thread``, inside ``asyncio.to_thread`` and inside
  ``loop.run_in_executor``; ``asyncio.run_coroutine_threadsafe(...).result()``
  inside ``asyncio.to_thread`` (what code does by hand, given the loop);
  ``anyio.from_thread.run`` inside ``anyio.to_thread.run_sync``, and
  ``await_`` inside an anyio worker.

Usage::

    python benchmarks/bench_threads.py [--rounds N] [--n N] [--loop asyncio|uvloop]

Peers that are not installed are skipped, and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import greenportal


def wakeup_floor(n: int) -> float:
    """Two threads passing a token back and forth: two wake-ups per trip."""
    ping = threading.Lock()
    pong = threading.Lock()
    ping.acquire()
    pong.acquire()

    def other() -> None:
        for _ in range(n):
            ping.acquire()
            pong.release()

    thread = threading.Thread(target=other)
    thread.start()
    t0 = time.perf_counter()
    for _ in range(n):
        ping.release()
        pong.acquire()
    elapsed = time.perf_counter() - t0
    thread.join()
    return elapsed / n


async def checkpoint() -> None:
    await asyncio.sleep(0)


def per_call(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


class ThreadRunnerPattern:
    """The classic: a loop in a daemon thread, run_coroutine_threadsafe, .result()."""

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = loop_factory()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self) -> None:
        asyncio.run_coroutine_threadsafe(checkpoint(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


BARE = "bare hop: eventfd, a task, a lock"


class BareHop:
    """The least a hop with a task per call costs on this loop: the reference row.

    No library: the caller appends a lock to a deque and writes an eventfd
    that the loop watches with ``add_reader``; the reader callback starts a
    task per call with ``loop.create_task``, and the task releases the lock
    when the work ends.  No error handling, no cancellation, no context,
    no eager start: what is left is the loop's own cost of a task that
    yields once.  (A pipe where there is no eventfd.)
    """

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        if hasattr(os, "eventfd"):
            self.read_fd = self.write_fd = os.eventfd(0, os.EFD_NONBLOCK)
        else:  # pragma: no cover - not Linux
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.read_fd, False)
        self.calls: collections.deque[threading.Lock] = collections.deque()
        self.loop = loop_factory()
        self.loop.add_reader(self.read_fd, self._drain)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        os.read(self.read_fd, 8)
        while self.calls:
            self.loop.create_task(self._drive(self.calls.popleft()))

    @staticmethod
    async def _drive(done: threading.Lock) -> None:
        await checkpoint()
        done.release()

    def call(self) -> None:
        done = threading.Lock()
        done.acquire()
        self.calls.append(done)
        os.write(self.write_fd, b"\1\0\0\0\0\0\0\0")
        done.acquire()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.remove_reader(self.read_fd)
        self.loop.close()
        for fd in {self.read_fd, self.write_fd}:
            os.close(fd)


def build_callers(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> tuple[dict[str, Callable[[], object]], list[Callable[[], None]], list[str]]:
    callers: dict[str, Callable[[], object]] = {}
    closers: list[Callable[[], None]] = []
    skipped: list[str] = []

    runner = greenportal.Runner(loop_factory=loop_factory)
    callers["greenportal Runner.run"] = lambda: runner.run(checkpoint())
    closers.append(runner.close)
    previous = greenportal.set_default_runner(runner)
    callers["greenportal await_, no loop"] = lambda: greenportal.await_(checkpoint())
    closers.append(lambda: greenportal.set_default_runner(previous))

    bare = BareHop(loop_factory)
    callers[BARE] = bare.call
    closers.append(bare.close)

    pattern = ThreadRunnerPattern(loop_factory)
    callers["thread-runner pattern"] = pattern.call
    closers.append(pattern.close)

    try:
        from synchronicity import Synchronizer
    except ImportError:
        skipped.append("synchronicity (not installed)")
    else:
        synchronizer = Synchronizer()
        blocking_checkpoint = synchronizer.create_blocking(checkpoint)
        callers["synchronicity"] = blocking_checkpoint
        closers.append(synchronizer._close_loop)

    try:
        from anyio.from_thread import start_blocking_portal
    except ImportError:
        skipped.append("anyio (not installed)")
    else:
        portal_cm = start_blocking_portal()
        anyio_portal = portal_cm.__enter__()
        callers["anyio blocking portal"] = lambda: anyio_portal.call(checkpoint)
        closers.append(lambda: portal_cm.__exit__(None, None, None))

    try:
        from asgiref.sync import async_to_sync
    except ImportError:
        skipped.append("asgiref (not installed)")
    else:
        # async_to_sync runs a fresh loop per call when no loop is running in
        # the thread; that is its design, measured as it is.
        callers["asgiref async_to_sync"] = async_to_sync(checkpoint)
    return callers, closers, skipped


def worker_thread_rows(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], n: int
) -> dict[str, float]:
    """Per await from a worker thread back to the loop that started it."""
    results: dict[str, float] = {}

    async def main() -> None:
        def with_await_() -> float:
            return per_call(lambda: greenportal.await_(checkpoint()), n)

        results["greenportal await_ in to_thread"] = await greenportal.to_thread(with_await_)
        # asyncio's own executor threads (issue 12): found through the future
        # run_in_executor chains; each await_ also walks the thread's frames.
        results["greenportal await_ in asyncio.to_thread"] = await asyncio.to_thread(with_await_)
        loop = asyncio.get_running_loop()
        results["greenportal await_ in run_in_executor"] = await loop.run_in_executor(
            None, with_await_
        )

        def with_threadsafe() -> float:
            return per_call(
                lambda: asyncio.run_coroutine_threadsafe(checkpoint(), loop).result(), n
            )

        results["run_coroutine_threadsafe in asyncio.to_thread"] = await asyncio.to_thread(
            with_threadsafe
        )
        try:
            import anyio.from_thread
            import anyio.to_thread
        except ImportError:
            return

        def with_anyio() -> float:
            return per_call(lambda: anyio.from_thread.run(checkpoint), n)

        results["anyio from_thread.run in anyio worker"] = await anyio.to_thread.run_sync(
            with_anyio
        )
        results["greenportal await_ in anyio worker"] = await anyio.to_thread.run_sync(with_await_)

    loop = loop_factory()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return results


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=2000, help="calls per round")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        loop_factory = asyncio.new_event_loop

    callers, closers, skipped = build_callers(loop_factory)
    samples: dict[str, list[float]] = {"two thread wake-ups (floor)": []}
    samples.update({name: [] for name in callers})
    worker_samples: dict[str, list[float]] = {}
    try:
        for fn in callers.values():  # warm up
            per_call(fn, 50)
        for _ in range(args.rounds):
            samples["two thread wake-ups (floor)"].append(wakeup_floor(args.n))
            for name, fn in callers.items():
                samples[name].append(per_call(fn, args.n))
            for name, value in worker_thread_rows(loop_factory, args.n).items():
                worker_samples.setdefault(name, []).append(value)
    finally:
        for close in closers:
            close()

    print(
        f"Thread round trips, one 'await asyncio.sleep(0)' each, {args.loop}; "
        f"Python {sys.version.split()[0]}, {args.rounds} rounds x {args.n} calls"
    )
    print("median per call [min-max of round medians], ratio to greenportal Runner.run\n")
    ours = statistics.median(samples["greenportal Runner.run"])
    floor = statistics.median(samples["two thread wake-ups (floor)"])
    print("sync caller -> loop in another thread")
    for name, values in samples.items():
        med = statistics.median(values)
        print(
            f"  {name:42s} {fmt(med)}  [{fmt(min(values)).strip()} - {fmt(max(values)).strip()}]"
            f"  x{med / ours:5.2f}"
        )
    print()
    for name in ("greenportal Runner.run", "greenportal await_, no loop", BARE):
        print(f"  {name} = {statistics.median(samples[name]) / floor:.2f}x the two-wake-up floor")
    fastest_peer = min(
        (statistics.median(v), k)
        for k, v in samples.items()
        if not k.startswith("greenportal") and k not in ("two thread wake-ups (floor)", BARE)
    )
    verdict = "PASS" if ours <= fastest_peer[0] else "MISS"
    print(
        f"  target: Runner.run no slower than the fastest peer ({fastest_peer[1]}, "
        f"{fmt(fastest_peer[0]).strip()}): {verdict} (x{ours / fastest_peer[0]:.2f})"
    )
    print("\nworker thread -> the loop that started it (ratio to await_ in to_thread)")
    base = statistics.median(worker_samples["greenportal await_ in to_thread"])
    for name, values in worker_samples.items():
        med = statistics.median(values)
        print(
            f"  {name:46s} {fmt(med)}  [{fmt(min(values)).strip()} - {fmt(max(values)).strip()}]"
            f"  x{med / base:5.2f}"
        )
    print(
        f"\n  await_ in to_thread = {base / floor:.2f}x the two-wake-up floor "
        "(measured in the same rounds)"
    )
    for name in skipped:
        print(f"\nskipped: {name}")


if __name__ == "__main__":
    main()
