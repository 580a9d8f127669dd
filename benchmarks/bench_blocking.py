"""What a blocking() wrapper adds to a call: greenportal against itself, as ratios.

Usage::

    python benchmarks/bench_blocking.py [--calls N] [--rounds R]

In one asyncio task with a portal, sync code calls an async method that
yields to the loop once, three ways, interleaved round by round:

* ``await_``: ``await_(obj.aio.method())``, the floor for a blocking call;
* ``blocking method``: ``obj.method()`` on a ``blocking(cls)`` wrapper, which
  adds the bound-method object, argument and result translation;
* ``blocking method, wrapped result``: a method whose result is an instance
  of a wrapped class, so translation makes a wrapper per call.

The ratios (median per-call time over ``await_``'s) are what the wrapper
costs; the absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

import greenportal


class Item:
    pass


class Service:
    async def ping(self, n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def item(self) -> Item:
        await asyncio.sleep(0)
        return Item()


BlockingService = greenportal.blocking(Service)
greenportal.blocking(Item)


def measure(calls: int, rounds: int) -> dict[str, float]:
    await_ = greenportal.await_
    # Made in the portal, so that it lives on this loop (one made where no
    # loop runs would be pinned to the default Runner, and every call would
    # hop there).
    service: BlockingService
    aio: Service

    def floor() -> None:
        for _ in range(calls):
            await_(aio.ping(1))

    def method() -> None:
        ping = service.ping
        for _ in range(calls):
            ping(1)

    def wrapped() -> None:
        item = service.item
        for _ in range(calls):
            item()

    cases: dict[str, Callable[[], None]] = {
        "await_": floor,
        "blocking method": method,
        "blocking method, wrapped result": wrapped,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}

    def run_all() -> None:
        nonlocal service, aio
        service = BlockingService()
        aio = service.aio
        order = list(cases)
        for r in range(rounds):
            for name in order[r % 3 :] + order[: r % 3]:
                start = time.perf_counter()
                cases[name]()
                times[name].append((time.perf_counter() - start) / calls)

    async def main() -> None:
        await greenportal.with_portal_run_sync(run_all)

    asyncio.run(main())
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    result = measure(args.calls, args.rounds)
    base = result["await_"]
    print(f"accelerator: {greenportal.SPEEDUPS}")
    print("| call | µs per call | ratio to await_ |")
    print("|---|---:|---:|")
    for name, seconds in result.items():
        print(f"| {name} | {seconds * 1e6:.2f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
