"""``python -m greenportal``: what this installation is, for bug reports.

Prints greenportal's version and where it was imported from, whether the
compiled accelerator runs (and why not, if not), the Python, and the
versions of greenlet and of the event loops and integrations' libraries
that are installed.  Versions are read from the installed distributions'
metadata: no event loop library is imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import sysconfig

from . import _accel
from ._accel import SPEEDUPS
from ._backends import LOOP_DISTRIBUTIONS
from ._version import __version__

# Distributions worth naming in a report besides the event loops: what the
# integrations adapt.
INTEGRATIONS = (
    "aiohttp",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "ipython",
    "ipykernel",
    "greenback",
)


def installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def accelerator() -> str:
    if SPEEDUPS:
        return f"compiled ({getattr(_accel._speedups, '__file__', '?')})"
    if _accel.LOAD_ERROR is None:
        return "pure Python (GREENPORTAL_PURE_PYTHON is set)"
    return (
        f"pure Python ({_accel.LOAD_ERROR}; a C compiler and Python's headers at "
        "install time build it)"
    )


def gil() -> str:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        return "with the GIL"
    enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
    return "free-threaded build, GIL " + ("enabled" if enabled else "disabled")


def report() -> str:
    package = os.path.dirname(os.path.abspath(__file__))
    lines = [
        f"greenportal {__version__} ({package})",
        f"accelerator: {accelerator()}",
        f"Python: {platform.python_implementation()} {platform.python_version()} "
        f"({gil()}) on {platform.platform(terse=True)} ({sys.executable})",
        f"greenlet: {installed('greenlet')}",
        "event loops: asyncio (standard library), "
        + ", ".join(f"{name} {installed(name)}" for name in LOOP_DISTRIBUTIONS),
        "integrations' libraries: "
        + ", ".join(f"{name} {installed(name)}" for name in INTEGRATIONS),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m greenportal",
        description="Print what this greenportal installation is, for bug reports.",
    )
    parser.parse_args(argv)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
