#!/usr/bin/env python3
"""Run greenportal's reliability tests (issue 6), at full volume if asked.

Usage::

    python3 scripts/reliability.py [--full] [--python PATH] [--no-hostile] [--jobs N]
                                   [-- PYTEST_ARGS...]

Without ``--full`` this runs the default slice of ``tests/reliability``, the
same one the ordinary suite runs (well under two minutes).

With ``--full`` it runs:

1. ``tests/reliability`` at full volume (``GREENPORTAL_RELIABILITY=full``):
   thousands of generated programs per backend, 100,000 portal tasks
   suspended at once, 1,000,000 ``await_`` calls in one task, 50 threads x
   10,000 ``Runner.run`` calls, SIGINT at 1,000 random moments per backend,
   and so on (see docs/reliability.rst).  Its figures are printed at the
   end of that step.
2. the whole suite under each hostile setting, unless ``--no-hostile``:
   ``python -O``, ``python -X dev``, ``PYTHONASYNCIODEBUG=1`` and
   ``python -W error`` (warnings are errors from the interpreter's start,
   not only once pytest has read its configuration).  ``--jobs N`` runs
   these with ``pytest -n N`` (needs pytest-xdist in the interpreter).

The interpreter: ``--python PATH`` uses that one as it is (it must already
have ``greenportal[test]`` installed); otherwise the script creates or reuses
``.venv-reliability`` in the repository root from the ``python3`` running
it and installs ``-e .[test]`` into it.  Standard library only.  A summary
table follows; the exit status is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-reliability"
STEP_TIMEOUT = 3 * 60 * 60  # the full volume takes tens of minutes on two cores


def say(text: str = "") -> None:
    print(text, flush=True)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def prepare_venv() -> str:
    """Create or reuse .venv-reliability with ``-e .[test]``; return its python."""
    python = venv_python(VENV)
    if not python.exists():
        say(f"creating {VENV.name} with {sys.executable}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    else:
        say(f"reusing {VENV.name}")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"], check=True, cwd=ROOT
    )
    return str(python)


def run_step(
    results: list[tuple[str, str, float]],
    name: str,
    cmd: list[str],
    env: dict[str, str] | None = None,
) -> None:
    say()
    say(f"=== {name}")
    say("$ " + " ".join(cmd))
    start = time.monotonic()
    try:
        rc = subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=STEP_TIMEOUT, check=False
        ).returncode
        status = "PASS" if rc == 0 else f"FAIL ({rc})"
    except subprocess.TimeoutExpired:
        status = "FAIL (timeout)"
    results.append((name, status, time.monotonic() - start))


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpus} CPUs {model}".strip()


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    else:
        pytest_args = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full volume and hostile runs")
    parser.add_argument("--python", help="use this interpreter instead of .venv-reliability")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile settings")
    parser.add_argument("--jobs", type=int, default=0, help="pytest -n N for the hostile runs")
    args = parser.parse_args(argv)

    python = args.python or prepare_venv()
    version = subprocess.run(
        [
            python,
            "-c",
            "import sys, greenportal._portal as p; "
            "print(sys.version.split()[0], 'speedups' if p.SPEEDUPS else 'pure Python')",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    say(f"python: {python} (CPython {version})")
    say(f"machine: {machine()}")

    results: list[tuple[str, str, float]] = []
    volume = "full" if args.full else "default"
    run_step(
        results,
        f"tests/reliability ({volume} volume)",
        [python, "-m", "pytest", "-q", "-p", "no:xdist", "tests/reliability", *pytest_args],
        env={"GREENPORTAL_RELIABILITY": volume},
    )
    if args.full and not args.no_hostile:
        jobs = ["-n", str(args.jobs)] if args.jobs else []
        suite = ["-m", "pytest", "-q", *jobs, *pytest_args]
        run_step(results, "whole suite: python -O", [python, "-O", *suite])
        run_step(results, "whole suite: python -X dev", [python, "-X", "dev", *suite])
        run_step(
            results,
            "whole suite: PYTHONASYNCIODEBUG=1",
            [python, *suite],
            env={"PYTHONASYNCIODEBUG": "1"},
        )
        run_step(results, "whole suite: python -W error", [python, "-W", "error", *suite])

    say()
    say("=== summary")
    width = max(len(name) for name, _, _ in results)
    for name, status, seconds in results:
        say(f"{name:<{width}}  {status:<14} {seconds:8.1f} s")
    return 0 if all(status == "PASS" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
