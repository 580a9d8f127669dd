#!/usr/bin/env python3
"""FastAPI ``def`` endpoints under load: the thread pool, PortalRoute, async def.

Usage::

    python3 benchmarks/bench_fastapi.py            # 50 and 200 connections, 5 rounds; ~1.5 min
    python3 benchmarks/bench_fastapi.py --quick    # 2 short rounds
    python3 benchmarks/bench_fastapi.py --loop asyncio --concurrency 50
    python3 benchmarks/bench_fastapi.py --python /path/to/venv/bin/python

Needs only a ``python3`` to start: like ``benchmarks/run.py`` it makes or
reuses ``.venv-bench`` and runs itself again there.

The server (``benchmarks/fastapi_server.py``) is uvicorn in a child process
serving one endpoint three ways: a ``def`` endpoint whose ``def`` dependency
and body make five awaited 1 ms calls through ``greenportal.await_``, under
FastAPI's ``APIRoute`` (the thread pool) and under
``greenportal.fastapi.PortalRoute``, and the same logic written ``async
def``.  The load comes from another process: ``wrk`` (Debian's package)
when it is installed, as it costs little CPU per request and so leaves the
server the bottleneck on a small machine; else this process, with
``examples/app/load.py`` (``--load`` chooses).  Either keeps N keep-alive
HTTP/1.1 connections on loopback, each sending its next request when the
previous answer arrives.  Each window is preceded by a warm-up;
the variants take turns in a rotated order each round, and the report gives
medians over rounds, with the ratios taken round by round (same-round pairs
cancel much of a shared machine's drift).  CPU per request is the server
process's CPU time (all threads) over the requests it served in the window.

Targets (issue 13), reported, never enforced: at every load, PortalRoute's
throughput at least 1.3x the thread pool's with a lower p99, and at least
0.9x the async def version's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ("threadpool", "portal", "async")
LABELS = {"threadpool": "thread pool (APIRoute)", "portal": "PortalRoute", "async": "async def"}
TARGET_OVER_THREADPOOL = 1.3
TARGET_OVER_ASYNC = 0.9


def say(text: str) -> None:
    print(f"[benchmarks/bench_fastapi.py] {text}", file=sys.stderr, flush=True)


class Server:
    """The child process running benchmarks/fastapi_server.py."""

    def __init__(self, python: str, loop: str) -> None:
        self.cmd = [python, str(HERE / "fastapi_server.py"), "--loop", loop]
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> Server:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(HERE)]))
        self.process = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(10)
            raise SystemExit(f"the server did not start (exit {self.process.returncode})")
        self.info = json.loads(line)
        deadline = time.monotonic() + 30
        while True:  # the socket is bound before uvicorn listens on it
            try:
                self.stats()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("the server did not answer in 30 s") from None
                time.sleep(0.05)
        return self

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.info['port']}/_stats"
        with urllib.request.urlopen(url, timeout=30) as response:
            stats: dict[str, Any] = json.load(response)
        return stats

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(output: str) -> dict[str, float]:
    """Throughput, p50 and p99 (seconds) and the error count from ``wrk --latency``."""
    found: dict[str, float] = {"errors": 0.0}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("50%", "99%"):
            number = words[1].rstrip("usm")
            unit = words[1][len(number) :]
            found["p" + words[0][:-1]] = float(number) * _UNITS[unit]
        elif line.startswith("Requests/sec:"):
            found["rps"] = float(words[1])
        elif line.strip().startswith("Non-2xx"):
            found["errors"] += float(words[-1])
        elif line.strip().startswith("Socket errors:"):
            found["errors"] += sum(float(w.rstrip(",")) for w in words[3::2])
    missing = {"rps", "p50", "p99"} - found.keys()
    if missing:
        raise SystemExit(f"could not read {sorted(missing)} from wrk's output:\n{output}")
    return found


async def load_once(
    port: int, target: str, connections: int, seconds: float, args: argparse.Namespace
) -> dict[str, float]:
    """One load run from another process: wrk if found (cheaper per request), else ours."""
    if args.load == "wrk":
        whole = max(1, round(seconds))  # wrk takes whole seconds
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{whole}s", "--timeout", "10s", "--latency"]
        cmd.append(f"http://127.0.0.1:{port}{target}")
        process = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        output, _ = await process.communicate()
        return parse_wrk(output.decode())
    from app.load import drive  # examples/app/load.py: a keep-alive client in this process

    result = await drive(
        "127.0.0.1", port, target, concurrency=connections, seconds=seconds, path=lambda rng: target
    )
    return {
        "rps": result.requests_per_second,
        "p50": result.percentile(50),
        "p99": result.percentile(99),
        "errors": float(result.errors),
    }


async def window(
    server: Server, variant: str, connections: int, args: argparse.Namespace
) -> dict[str, float]:
    port = int(server.info["port"])
    target = f"/{variant}/work"
    if args.warmup > 0:
        await load_once(port, target, connections, args.warmup, args)
    before = await asyncio.to_thread(server.stats)
    result = await load_once(port, target, connections, args.seconds, args)
    after = await asyncio.to_thread(server.stats)
    if result["errors"]:
        raise SystemExit(f"{variant}: {result['errors']:.0f} request(s) failed")
    served = after["requests"].get(variant, 0) - before["requests"].get(variant, 0)
    return {
        "rps": result["rps"],
        "p50": result["p50"],
        "p99": result["p99"],
        "cpu": (after["cpu_seconds"] - before["cpu_seconds"]) / max(served, 1),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def measure(
    server: Server, connections: int, args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for number in range(args.rounds):
        shift = number % len(VARIANTS)
        order = list(VARIANTS[shift:] + VARIANTS[:shift])
        for variant in order:
            sample = await window(server, variant, connections, args)
            samples[variant].append(sample)
            say(
                f"{connections} conns, round {number + 1}/{args.rounds}: {LABELS[variant]:<23}"
                f"{sample['rps']:7.0f} req/s  p99 {sample['p99'] * 1000:6.1f} ms"
                f"  CPU {sample['cpu'] * 1e6:5.0f} us/req"
            )
    return samples


def ratios(samples: dict[str, list[dict[str, float]]], a: str, b: str, key: str) -> list[float]:
    return [x[key] / y[key] for x, y in zip(samples[a], samples[b], strict=True) if y[key]]


def report(connections: int, samples: dict[str, list[dict[str, float]]]) -> tuple[str, list[str]]:
    lines = [
        f"{connections} connections",
        f"| {'variant':<23} | req/s | p50 ms | p99 ms | CPU us/req |",
        f"|{'-' * 25}|------:|-------:|-------:|-----------:|",
    ]
    for variant in VARIANTS:
        rows = samples[variant]
        lines.append(
            f"| {LABELS[variant]:<23} | {median([r['rps'] for r in rows]):5.0f} "
            f"| {median([r['p50'] for r in rows]) * 1000:6.2f} "
            f"| {median([r['p99'] for r in rows]) * 1000:6.2f} "
            f"| {median([r['cpu'] for r in rows]) * 1e6:10.0f} |"
        )
    over_pool = median(ratios(samples, "portal", "threadpool", "rps"))
    p99_pool = median(ratios(samples, "portal", "threadpool", "p99"))
    over_async = median(ratios(samples, "portal", "async", "rps"))

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    verdicts = [
        f"{connections} conns: PortalRoute/thread pool throughput {over_pool:.2f}x "
        f"(target >= {TARGET_OVER_THREADPOOL}x): {verdict(over_pool >= TARGET_OVER_THREADPOOL)}",
        f"{connections} conns: PortalRoute/thread pool p99 {p99_pool:.2f}x (target < 1): "
        f"{verdict(p99_pool < 1)}",
        f"{connections} conns: PortalRoute/async def throughput {over_async:.2f}x "
        f"(target >= {TARGET_OVER_ASYNC}x): {verdict(over_async >= TARGET_OVER_ASYNC)}",
    ]
    return "\n".join(lines), verdicts


async def inner_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "examples"))
    tables: list[str] = []
    verdicts: list[str] = []
    raw: dict[str, Any] = {}
    started = time.perf_counter()
    with Server(sys.executable, args.loop) as server:
        info = server.info
        say(f"server on port {info['port']}: uvicorn on {info['loop']}, {info['http']}")
        say(f"load from {args.load}")
        for connections in args.concurrency:
            samples = await measure(server, connections, args)
            raw[str(connections)] = samples
            table, verdict = report(connections, samples)
            tables.append(table)
            verdicts += verdict
    say(f"done in {time.perf_counter() - started:.0f} s")
    versions = info["versions"]
    print(
        f"FastAPI benchmark: Python {versions['python']}, FastAPI {versions['fastapi']}, "
        f"uvicorn {versions['uvicorn']} ({info['loop']}, {info['http']}), greenportal "
        f"{versions['greenportal']}; {os.cpu_count()} CPUs, {platform.platform(terse=True)}; "
        f"{args.rounds} rounds of {args.seconds:g} s windows, medians; load from {args.load}"
    )
    for table in tables:
        print()
        print(table)
    print()
    print("\n".join(verdicts))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"server": info, "samples": raw}, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s windows")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per window (default 2; quick 1)")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument(
        "--concurrency", type=int, action="append", help="connections (repeatable; default 50, 200)"
    )
    parser.add_argument(
        "--loop", default="auto", help="uvicorn's event loop (auto, asyncio, uvloop)"
    )
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk (Debian's), or examples/app/load.py (default: wrk if found)",
    )
    parser.add_argument("--python", help="use this interpreter as it is, no virtualenv")
    parser.add_argument("--json-out", metavar="PATH", help="also save every sample here")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inner:
        python = args.python
        if python is None:
            sys.path.insert(0, str(HERE))
            import run  # benchmarks/run.py: its virtualenv handling

            python = run.prepare_venv()
        argv = [a for a in sys.argv[1:] if not a.startswith("--python")]
        if args.python:
            argv = [a for a in argv if a != args.python]
        cmd = [python, str(Path(__file__).resolve()), "--inner", *argv]
        return subprocess.run(cmd, cwd=ROOT, check=False).returncode
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.seconds = args.seconds or (1.0 if args.quick else 2.0)
    args.concurrency = args.concurrency or [50, 200]
    if args.load == "auto":
        args.load = "wrk" if shutil.which("wrk") else "python"
    return asyncio.run(inner_main(args))


if __name__ == "__main__":
    sys.exit(main())
