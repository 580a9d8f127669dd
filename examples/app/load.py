"""The load generator: N keep-alive HTTP/1.1 connections, each sending requests back to back.

A deliberately small client on asyncio streams (GET, ``Content-Length``
bodies, keep-alive): cheap per request, so that on a small machine the load
generator leaves as much CPU as possible to the server it measures.  Every
connection asks for a random customer (seeded, so runs are repeatable).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.drivers import SEED_USERS


@dataclass
class LoadResult:
    """What one run of :func:`drive` measured."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per good response
    errors: int = 0
    first_error: str | None = None

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """The *p*-th percentile latency in seconds (nearest rank), or NaN with none."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]


class HttpError(Exception):
    pass


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length = 0
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding":
            raise HttpError(f"unexpected Transfer-Encoding: {value.strip()}")
    body = await reader.readexactly(length) if length else b""
    return status, body


async def drive(
    host: str,
    port: int,
    variant: str,
    *,
    concurrency: int = 50,
    seconds: float = 5.0,
    seed: int = 1,
    customers: int = SEED_USERS,
    progress: Callable[[int, float], None] | None = None,
    progress_every: float = 0.5,
    path: Callable[[random.Random], str] | None = None,
) -> LoadResult:
    """Send requests to ``/<variant>/customers/<id>/summary`` for *seconds*; measure.

    *path*, if given, makes each request's path instead, from the
    connection's seeded ``random.Random`` (``benchmarks/bench_fastapi.py``).

    *concurrency* connections each keep one request in flight.  Requests
    still running when the time is up are awaited and counted.  *progress*,
    if given, is called every *progress_every* seconds with (responses so
    far, seconds elapsed).
    """
    result = LoadResult()
    start = time.perf_counter()
    deadline = start + seconds
    done = 0

    async def connection(number: int) -> None:
        nonlocal done
        rng = random.Random(seed * 1_000 + number)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                if path is None:
                    target = f"/{variant}/customers/{rng.randint(1, customers)}/summary"
                else:
                    target = path(rng)
                request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
                sent = time.perf_counter()
                status, body = await _get(reader, writer, request)
                if status == 200:
                    result.latencies.append(time.perf_counter() - sent)
                    done += 1
                else:
                    result.errors += 1
                    if result.first_error is None:
                        text = body.decode(errors="replace").strip()[:200]
                        result.first_error = f"HTTP {status} from {variant}: {text}"
        finally:
            writer.close()

    async def report() -> None:
        assert progress is not None
        while True:
            await asyncio.sleep(progress_every)
            progress(done, time.perf_counter() - start)

    reporter = asyncio.ensure_future(report()) if progress else None
    try:
        outcomes = await asyncio.gather(
            *(connection(n) for n in range(concurrency)), return_exceptions=True
        )
    finally:
        if reporter is not None:
            reporter.cancel()
    result.seconds = time.perf_counter() - start
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors += 1
            if result.first_error is None:
                result.first_error = f"{type(outcome).__name__}: {outcome}"
    return result
