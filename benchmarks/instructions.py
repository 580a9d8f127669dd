#!/usr/bin/env python3
"""Instructions per operation, counted by callgrind: a noise-free check between two trees.

Usage::

    python3 benchmarks/instructions.py --python .venv-bench/bin/python \\
        --tree /path/to/old/checkout --tree . [--n 1000] [OPERATION ...]

Wall-clock ratios on a shared two-core machine wander by tens of percent
from run to run; callgrind counts the instructions a program executes, which
is the same for the same binary, inputs and environment whatever else the
machine is doing.  So a restructuring that must not slow anything down can be
checked to the instruction: each operation runs in a child interpreter under
``valgrind --tool=callgrind`` twice, *n* and 3 *n* times, and the difference
divided by 2 *n* is its cost, start-up and imports cancelled out.

Each ``--tree`` is a checkout whose ``src/greenportal`` is put first on
``PYTHONPATH`` (build its extension for that interpreter first, for example
with ``pip install -e``), so the same interpreter and packages measure both.
``native_checkpoint`` is the control: it does not use greenportal, so it
should read the same in every tree.  Instructions are not time: a thread
wake-up (``runner_run``) costs far more time than its instruction count says.

Needs valgrind.  Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The child: OPERATION N, with greenportal imported from the tree on PYTHONPATH.
WORKLOAD = r"""
import asyncio, sys
import greenportal
op, n = sys.argv[1], int(sys.argv[2])

async def noyield():
    return 1

async def empty():
    return None

def sync_empty():
    return None

async def child():
    await greenportal.ensure_portal()

async def main():
    if op == "await_checkpoint":
        await greenportal.ensure_portal()
        for _ in range(n):
            greenportal.await_(asyncio.sleep(0))
    elif op == "await_noyield":
        await greenportal.ensure_portal()
        for _ in range(n):
            greenportal.await_(noyield())
    elif op == "native_checkpoint":
        for _ in range(n):
            await asyncio.sleep(0)
    elif op == "with_portal_run_sync":
        for _ in range(n):
            await greenportal.with_portal_run_sync(sync_empty)
    elif op == "with_portal_run":
        for _ in range(n):
            await greenportal.with_portal_run(empty)
    elif op == "new_task_ensure_portal":
        for _ in range(n):
            await asyncio.create_task(child())
    elif op == "to_thread_await":
        def work():
            return greenportal.await_(noyield())
        for _ in range(n):
            await greenportal.to_thread(work)
    else:
        raise SystemExit(f"unknown operation {op!r}")

if op == "runner_run":
    runner = greenportal.Runner()
    runner.run(noyield)
    for _ in range(n):
        runner.run(noyield)
    runner.close()
elif op == "trio_await_checkpoint":
    import trio
    async def trio_main():
        await greenportal.ensure_portal()
        for _ in range(n):
            greenportal.await_(trio.lowlevel.checkpoint())
    trio.run(trio_main)
else:
    asyncio.run(main())
"""

OPERATIONS = [
    "native_checkpoint",
    "await_checkpoint",
    "await_noyield",
    "with_portal_run_sync",
    "with_portal_run",
    "new_task_ensure_portal",
    "runner_run",
    "to_thread_await",
    "trio_await_checkpoint",
]


def count(python: str, tree: Path, op: str, n: int, scratch: Path) -> int:
    """Instructions of one child run (all threads), from callgrind's totals line."""
    out = scratch / f"callgrind.{op}.{n}.out"
    script = scratch / "workload.py"
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONHASHSEED": "0"}
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "-q",
        f"--callgrind-out-file={out}",
        python,
        str(script),
        op,
        str(n),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{op} failed in {tree}:\n{done.stderr[-2000:]}")
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            out.unlink()
            return int(line.split()[1])
    raise SystemExit(f"no totals in {out}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter to measure")
    parser.add_argument("--tree", action="append", type=Path, required=True, help="a checkout")
    parser.add_argument("--n", type=int, default=1000, help="operations in the smaller run")
    parser.add_argument("operations", nargs="*", default=OPERATIONS)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    trees = [t.resolve() for t in args.tree]
    with tempfile.TemporaryDirectory(prefix="greenportal-instructions-") as tmp:
        scratch = Path(tmp)
        (scratch / "workload.py").write_text(WORKLOAD)
        names = [t.name or str(t) for t in trees]
        print(f"instructions per operation (callgrind; {args.python}; n = {args.n})")
        print(f"{'operation':26}" + "".join(f"{name[-14:]:>16}" for name in names) + "   change")
        for op in args.operations:
            costs = []
            for tree in trees:
                small = count(args.python, tree, op, args.n, scratch)
                large = count(args.python, tree, op, 3 * args.n, scratch)
                costs.append((large - small) / (2 * args.n))
            change = f"{(costs[-1] / costs[0] - 1) * 100:+.1f}%" if len(costs) > 1 else ""
            print(f"{op:26}" + "".join(f"{c:16,.0f}" for c in costs) + f"   {change}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
