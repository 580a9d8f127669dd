#!/usr/bin/env python3
"""Run the whole benchmark suite and print the report: the one command.

Usage::

    python3 benchmarks/run.py            # asyncio, uvloop and Trio; about 6 minutes
    python3 benchmarks/run.py --quick    # fewer rounds, memory at 10,000 tasks only
    python3 benchmarks/run.py --loop trio --rounds 31 --n 10000

Needs only a ``python3`` (CPython 3.10 or newer) to start.  It creates the
virtualenv ``.venv-bench`` in the repository root (or reuses it), installs
the repository into it (``pip install -e .``) with the packages of
``benchmarks/requirements.txt`` (greenback, SQLAlchemy, uvloop, Trio) and,
if it can, those of ``benchmarks/requirements-optional.txt`` (awaitlet).
Then, for each loop:

1. ``bench_portal.py`` measures every timing row in one process, the
   implementations interleaved round by round;
2. ``bench_memory.py`` measures each memory cell in a fresh process (two at
   a time, after all timings, so that they cannot disturb them);
3. ``bench_threads.py`` (asyncio and uvloop) measures thread round trips:
   ``Runner.run`` and ``await_`` from worker threads against the
   thread-runner pattern, synchronicity, anyio and asgiref.

Once, on asyncio (when asyncio is among the loops), right after the
timings and before the memory cells, ``bench_sqlalchemy.py`` measures
SQLAlchemy's asyncio ORM from sync code in a portal against
``AsyncSession.run_sync`` (issue 16): a query and a lazy load, on SQLite in
memory and on PostgreSQL in a throwaway cluster (skipped, saying what to
install, without the server binaries).  Its rows and targets close the
report.

The report goes to standard output, progress to standard error.  Nothing
here is a test: every number is reported, none fails the run.
``--python PATH`` skips the virtualenv and uses an interpreter that already
has the packages.  Standard library only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = ROOT / ".venv-bench"
REQUIREMENTS = HERE / "requirements.txt"
OPTIONAL = HERE / "requirements-optional.txt"
LOOPS = ("asyncio", "uvloop", "trio")
MINIMUM = (3, 10)
MEMORY_TIMEOUT = 600

sys.path.insert(0, str(HERE))
import report  # noqa: E402  (standard library only, like this script)


def say(text: str) -> None:
    print(f"[benchmarks/run.py] {text}", file=sys.stderr, flush=True)


def base_python() -> str:
    """This interpreter if it is CPython 3.10+, else the newest python3.1x on PATH."""
    if sys.version_info >= MINIMUM and sys.implementation.name == "cpython":
        return sys.executable
    for minor in (13, 12, 11, 10):
        found = shutil.which(f"python3.{minor}")
        if found:
            return found
    sys.exit(f"the benchmarks need CPython >= 3.10; this is {sys.version.split()[0]}")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip(python: str, *args: str) -> int:
    cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    say("$ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=ROOT, check=False).returncode


def prepare_venv() -> str:
    """Create or reuse .venv-bench, installing only when something changed."""
    base = base_python()
    python = venv_python()
    if not python.exists():
        say(f"creating {VENV.name} with {base}")
        if subprocess.run([base, "-m", "venv", str(VENV)], check=False).returncode != 0:
            sys.exit(f"could not create {VENV} (on Debian/Ubuntu: apt-get install python3-venv)")
    stamp_file = VENV / "bench-installed.txt"
    digest = hashlib.sha256()
    for path in (ROOT / "pyproject.toml", REQUIREMENTS, OPTIONAL):
        digest.update(path.read_bytes())
    stamp = digest.hexdigest()
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        say(f"reusing {VENV.name} (greenportal is installed editable: source changes count)")
        return str(python)
    say(f"installing greenportal (editable) and the packages compared into {VENV.name}")
    if pip(str(python), "-e", ".", "-r", str(REQUIREMENTS)) != 0:
        sys.exit("pip install failed")
    if pip(str(python), "-r", str(OPTIONAL)) != 0:
        say("the optional packages did not install: their columns will read '-'")
    stamp_file.write_text(stamp)
    return str(python)


def run_timings(python: str, loop: str, args: argparse.Namespace) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{loop}.json"
        cmd = [
            python,
            str(HERE / "bench_portal.py"),
            "--loop",
            loop,
            "--rounds",
            str(args.rounds),
            "--scaling-rounds",
            str(args.scaling_rounds),
            "--n",
            str(args.n),
            "--json",
            str(out),
        ]
        rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        if rc != 0 or not out.exists():
            say(f"{loop}: the timings failed (exit code {rc}); that loop is left out")
            return None
        return json.loads(out.read_text())  # type: ignore[no-any-return]


def run_sqlalchemy(python: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """bench_sqlalchemy.py on asyncio, both databases; None if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sqlalchemy.json"
        cmd = [
            python,
            str(HERE / "bench_sqlalchemy.py"),
            "--loop",
            "asyncio",
            "--db",
            "both",
            "--rounds",
            str(args.sqlalchemy_rounds),
            "--n",
            str(args.sqlalchemy_n),
            "--json",
            str(out),
        ]
        say("SQLAlchemy ORM from sync code on asyncio")
        rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        if rc != 0 or not out.exists():
            say(f"SQLAlchemy: the benchmark failed (exit code {rc}); its rows are left out")
            return None
        return json.loads(out.read_text())  # type: ignore[no-any-return]


def run_memory(python: str, jobs: list[tuple[str, str, int]]) -> report.Memory:
    """One fresh process per (loop, column, tasks); two at a time."""
    memory: report.Memory = {}

    def one(job: tuple[str, str, int]) -> tuple[tuple[str, str, int], dict[str, float] | str]:
        loop, column, tasks = job
        cmd = [python, str(HERE / "bench_memory.py"), "--loop", loop]
        cmd += ["--impl", column, "--tasks", str(tasks)]
        try:
            done = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=MEMORY_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return job, f"timed out after {MEMORY_TIMEOUT} s"
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return job, lines[-1] if lines else f"exit code {done.returncode}"
        return job, json.loads(done.stdout)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for (loop, column, tasks), got in pool.map(one, jobs):
            if isinstance(got, str):
                say(f"memory {loop}/{column}/{tasks}: failed, shown as '-': {got}")
                continue
            say(f"memory {loop}/{column}/{tasks:,}: {got['seconds']:.1f} s")
            memory.setdefault(loop, {}).setdefault(column, {})[tasks] = got
    return memory


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run greenportal's benchmark suite and print the report."
    )
    parser.add_argument(
        "--loop", action="append", choices=LOOPS, help="only this loop (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, memory at 10k only")
    parser.add_argument("--rounds", type=int, help="rounds of the main table (default 21; quick 7)")
    parser.add_argument(
        "--scaling-rounds",
        type=int,
        help="rounds of the scaling sections (default 5; quick 2; 0 skips)",
    )
    parser.add_argument("--n", type=int, help="checkpoints per sample (default 5000; quick 2000)")
    parser.add_argument(
        "--memory-tasks",
        type=int,
        action="append",
        help="task counts of the memory rows (default 10000 and 100000; quick 10000; 0 skips)",
    )
    parser.add_argument(
        "--thread-rounds",
        type=int,
        help="rounds of the thread round-trip section (default 7; quick 3; 0 skips)",
    )
    parser.add_argument(
        "--sqlalchemy-rounds",
        type=int,
        help="rounds of the SQLAlchemy ORM section, asyncio only (default 21; quick 5; 0 skips)",
    )
    parser.add_argument("--python", help="use this interpreter as it is, no virtualenv")
    parser.add_argument("--json-out", metavar="PATH", help="also save the raw results here")
    args = parser.parse_args()
    quick = args.quick
    if args.rounds is None:
        args.rounds = 7 if quick else 21
    if args.scaling_rounds is None:
        args.scaling_rounds = 2 if quick else 5
    if args.n is None:
        args.n = 2000 if quick else 5000
    if args.thread_rounds is None:
        args.thread_rounds = 3 if quick else 7
    args.thread_n = 500 if quick else 2000
    if args.sqlalchemy_rounds is None:
        args.sqlalchemy_rounds = 5 if quick else 21
    args.sqlalchemy_n = 100 if quick else 200
    sizes = args.memory_tasks or ([10_000] if quick else [10_000, 100_000])
    sizes = [size for size in sizes if size > 0]
    loops = args.loop or list(LOOPS)

    started = time.perf_counter()
    python = args.python or prepare_venv()
    results = []
    for loop in loops:
        result = run_timings(python, loop, args)
        if result is not None:
            results.append(result)
    sqlalchemy = None
    if "asyncio" in loops and args.sqlalchemy_rounds > 0:
        sqlalchemy = run_sqlalchemy(python, args)
    jobs = []
    for size in sizes:
        jobs.append(("asyncio", "floor", size))  # no event loop: measured once, shown for all
        for result in results:
            for column in ("native", *result["versions"]):
                jobs.append((result["loop"], column, size))
    memory = run_memory(python, jobs) if jobs else {}
    floor = memory.get("asyncio", {}).pop("floor", None)
    if floor is not None:
        for result in results:
            memory.setdefault(result["loop"], {})["floor"] = floor
    if args.json_out:
        raw = {"timings": results, "memory": memory, "sqlalchemy": sqlalchemy}
        Path(args.json_out).write_text(json.dumps(raw))
    thread_reports = []
    for loop in loops:
        if loop == "trio" or args.thread_rounds <= 0:
            continue  # the thread peers compared are asyncio-based
        say(f"thread round trips on {loop}")
        done = subprocess.run(
            [
                python,
                str(HERE / "bench_threads.py"),
                "--loop",
                loop,
                "--rounds",
                str(args.thread_rounds),
                "--n",
                str(args.thread_n),
            ],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
        )
        thread_reports.append(done.stdout if done.returncode == 0 else done.stdout + done.stderr)
    say(f"done in {time.perf_counter() - started:.0f} s")
    report.print_report(results, memory)
    for text in thread_reports:
        print()
        print(text.rstrip())
    if sqlalchemy is not None:
        for line in report.sqlalchemy_lines(sqlalchemy):
            print(line)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
