"""The one door to the compiled accelerator, and the table of its twins.

Why a table
-----------
``_speedups.c`` reimplements a handful of ``_portal``'s functions in C (see
the "Two implementations of the hot path" section of ``_portal.py``).  An
earlier layout let ``_portal`` rebind its own functions to the C ones when
the extension loaded, so that in a default build the Python function a
reader saw (and edited) was not the one that ran.  Now:

* every compiled function is named in :data:`TWINS`, next to the Python
  function it mirrors;
* a Python reference keeps its name and is never reassigned; the code that
  runs picks each implementation once, through :func:`pick`, under a name of
  its own (``_portal.py``'s "the implementation in use" section);
* ``tests/test_speedups.py`` fails if the extension exports a function the
  table does not name, or the table names one that either side lacks.

This module is the only place that imports ``_speedups`` or reads
``GREENPORTAL_PURE_PYTHON``, and it imports nothing of greenportal's: it is
the bottom of the one-way import order (``docs/principle.rst``).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

F = TypeVar("F")


def _load() -> Any:
    """The compiled module, or None to run the Python twins.

    ``GREENPORTAL_PURE_PYTHON=1`` selects the Python code even where the
    extension is built (the test suite runs both ways).
    """
    if os.environ.get("GREENPORTAL_PURE_PYTHON", "") not in ("", "0"):
        return None
    global LOAD_ERROR
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError as error:
        # Not built: "cannot import name '_speedups' from 'greenportal'".
        missing = error.name == __package__ and "_speedups" in str(error)
        LOAD_ERROR = (
            "the extension is not built" if missing else f"the extension did not import: {error}"
        )
        return None
    return _speedups


#: Why the extension did not import (``python -m greenportal`` reports it);
#: None if it did, or was not tried.
LOAD_ERROR: str | None = None
_speedups: Any = _load()

#: True when the portal's hot path runs compiled (``_speedups.c``).
SPEEDUPS: bool = _speedups is not None

#: Each object the extension exports -> the Python twin it stands in for,
#: as ``"module:name"`` (None: configuration, which has no twin).
TWINS: dict[str, str | None] = {
    "PortalBase": "greenportal._portal:_PurePortal",
    "run_job": "greenportal._portal:_run_job",
    "drive_coroutine": "greenportal._portal:_drive_coroutine",
    "drive_await": "greenportal._await:_drive_await",
    "await_box": "greenportal._await:_await_box",
    "portal_of_current_task": "greenportal._await:portal_of_current_task",
    "inline_task_id": "greenportal._await:inline_task_id",
    "acquire": "greenportal._portal:_acquire",
    "release": "greenportal._portal:_release",
    "swap_coro": "greenportal._backends._ctask:_write_coro",
    "SwitchProvider": "greenportal.sqlalchemy:_Provider",
    # How the extension learns greenportal's markers, classes and hooks.
    "configure": None,
    "set_current_task": None,
}


def pick(name: str, reference: F) -> F:
    """The compiled twin called *name* if the extension is in use, else *reference*."""
    if name not in TWINS or TWINS[name] is None:
        raise KeyError(f"{name!r} is not a twinned function of greenportal._speedups")
    if _speedups is None:
        return reference
    compiled: F = getattr(_speedups, name)
    return compiled


def configure(**objects: Any) -> None:
    """Hand the extension the objects it shares with the Python code (if in use)."""
    if _speedups is not None:
        _speedups.configure(**objects)


def set_current_task(current_task: Any, get_running_loop: Any, prepare_loop: Any) -> None:
    """Tell the extension how to ask asyncio for its running task (if in use)."""
    if _speedups is not None:
        _speedups.set_current_task(current_task, get_running_loop, prepare_loop)


def exported() -> set[str]:
    """What the built extension exports (empty when it is not in use)."""
    if _speedups is None:
        return set()
    return {name for name in vars(_speedups) if not name.startswith("_")}
