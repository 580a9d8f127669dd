#!/usr/bin/env python3
"""Install greenportal and the demo's packages into ``.venv-demo``; run ``examples/demo.py``.

Usage::

    python3 scripts/demo.py [DEMO_ARGS...]
    python3 scripts/demo.py --seconds 20 --concurrency 100
    python3 scripts/demo.py --dsn postgresql://user:password@localhost/shop
    python3 scripts/demo.py --help            # the demo's own options

The demo serves an aiohttp application whose sync business layer reaches an
async database in four ways, loads it with concurrent requests and prints a
table of throughput and latency (see ``examples/demo.py``).  It needs no
database server: SQLite in a temporary file is the default.

Creates the virtualenv ``.venv-demo`` in the repository root (or reuses it),
installs the project and its ``demo`` dependency group into it (``pip install
. --group demo``: aiohttp, aiosqlite, asyncpg) and runs the demo with the
virtualenv's Python, passing DEMO_ARGS on.  Standard library only.  Uses the
Python running this script if it is 3.10 or newer, else the newest CPython
3.10-3.13 found as ``python3.X`` on PATH or under pyenv.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-demo"
DEMO = ROOT / "examples" / "demo.py"
MINIMUM = (3, 10)
IS_WINDOWS = os.name == "nt"


def say(text: str) -> None:
    print(f"[scripts/demo.py] {text}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if IS_WINDOWS else "bin/python")


def version_of(python: str) -> tuple[int, ...] | None:
    """(major, minor, micro) of *python* if it runs and is CPython, else None."""
    code = "import sys,platform;print(platform.python_implementation(),*sys.version_info[:3])"
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        impl, *numbers = out.stdout.split()
        return tuple(map(int, numbers)) if impl == "CPython" else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None  # missing, or a pyenv shim with no version behind it


def patch_level(path: str) -> int:
    """3.12.10 sorts above 3.12.9: the patch number of a pyenv versions/3.X.Y path."""
    return int(Path(path).parent.parent.name.rsplit(".", 1)[-1])


def find_base_python() -> str:
    if sys.version_info >= MINIMUM and sys.implementation.name == "cpython":
        return sys.executable
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for minor in (13, 12, 11, 10):
        on_path = shutil.which(f"python3.{minor}")
        pattern = str(pyenv_root / f"versions/3.{minor}.*[0-9]/bin/python3.{minor}")
        candidates = [on_path] if on_path else []
        candidates += sorted(glob.glob(pattern), key=patch_level, reverse=True)
        for candidate in candidates:
            if (version_of(candidate) or ())[:2] == (3, minor):
                return candidate
    sys.exit(
        f"greenportal needs CPython >= 3.10; this is {sys.version.split()[0]} and no "
        "python3.10-3.13 was found on PATH or under pyenv"
    )


def run(cmd: list[str]) -> None:
    say("$ " + shlex.join(cmd))
    rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if rc != 0:
        say(f"failed with exit code {rc}")
        sys.exit(rc)


def main() -> int:
    base = find_base_python()
    base_version = version_of(base)
    if version_of(str(venv_python())) == base_version:
        say(f"reusing {VENV.name}")
    else:
        say(f"creating {VENV.name} with {base}")
        rc = subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=False).returncode
        if rc != 0:
            hint = " (on Debian/Ubuntu: apt-get install python3-venv)" if not IS_WINDOWS else ""
            sys.exit(f"could not create {VENV}{hint}")
    python = str(venv_python())
    say("installing greenportal and the demo's packages into it (pip install . --group demo)")
    quiet = ["--quiet", "--disable-pip-version-check"]
    run([python, "-m", "pip", "install", *quiet, "--upgrade", "pip"])  # --group: pip 25.1+
    run([python, "-m", "pip", "install", *quiet, ".", "--group", "demo"])
    say(f"running {DEMO.relative_to(ROOT)}")
    try:
        return subprocess.run([python, str(DEMO), *sys.argv[1:]], check=False).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
