"""Swap the coroutine of a running asyncio C Task, checking before writing.

Why this exists
---------------
A portal has to stand between the event loop and a task's coroutine.  For
tasks created inside a portal tree we pass the portal to the Task
constructor and nothing else is needed.  But :func:`greenportal.ensure_portal`
and :func:`greenportal.bestow_portal` add a portal to a task that already
exists, and the C implementation of ``asyncio.Task`` (``_asyncio.Task``)
exposes its coroutine read-only.  The pure-Python Task stores it in a plain
``_coro`` attribute, which we simply assign.

How the write is kept safe
--------------------------
* We never compute the field's offset from a guessed struct layout.  We scan
  the object's own memory (``__basicsize__`` bytes, which belong to it) for
  the address of the task's current coroutine, as returned by ``get_coro()``.
  The scan must find exactly one pointer-aligned match.
* The offset found is remembered per Task type; every later write checks that
  the word at that offset still holds the current coroutine's address.
* After writing, ``get_coro()`` must return the new object; if it does not we
  restore the old pointer and raise.
* Any failed check raises :class:`RuntimeError` before memory is touched.
  None of this relies on ``assert``, so it behaves the same under ``python -O``.
* Reference counts: the task owns one reference to its coroutine.  We add one
  to the new coroutine before the write and drop one from the old after it.
  The caller keeps the old coroutine alive (the portal wraps it), so the drop
  can never free it under the running step.

What each CPython is assumed to do
----------------------------------
* 3.10 to 3.13 (tested): ``_asyncio.Task`` holds its coroutine in one
  pointer field (``task_coro``), read by ``get_coro()``.
* 3.14 and 3.15 (built, not tested here): the same field and accessor, read
  from CPython's ``Modules/_asynciomodule.c``; the scan and the checks above
  would catch a change before any write.
* Free-threaded builds (3.13t, 3.14t; not tested here): ``Task.__step`` holds
  the task's critical section for a whole step, and a write from another
  thread (``bestow_portal``) must not race it.  The compiled write
  (``_speedups.swap_coro``) takes that critical section; the ctypes
  fallback below cannot, so on a free-threaded build without the compiled
  module a cross-thread write is unguarded.  greenlet releases the sections
  a switch leaves held only from 3.5.4 on, hence greenportal's floor.

Known gaps: CPython only (other implementations get a clear error), and
tested only on 3.10 to 3.13; a newer CPython gets the same checks.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, NoReturn

from .. import _accel

_WORD = ctypes.sizeof(ctypes.c_void_p)
# {Task type: byte offset of its coroutine pointer}
_offsets: dict[type, int] = {}

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None
_decref = ctypes.pythonapi.Py_DecRef
_decref.argtypes = [ctypes.py_object]
_decref.restype = None


def _word_at(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def _find_offset(task: Any, coro: object) -> int:
    size = type(task).__basicsize__
    base = id(task)
    target = id(coro)
    hits = [off for off in range(0, size - _WORD + 1, _WORD) if _word_at(base + off) == target]
    if len(hits) != 1:
        raise RuntimeError(
            f"greenportal cannot locate the coroutine field of {type(task).__qualname__} "
            f"on this Python ({sys.version.split()[0]}): found {len(hits)} candidate "
            "fields instead of exactly one. Nothing was changed. Use "
            "greenportal.with_portal_run() instead, or create the task inside "
            "greenportal.with_portal_run_tree(), neither of which needs this."
        )
    return hits[0]


def set_coro(task: Any, new: object) -> None:
    """Make the C Task *task* step *new* instead of its current coroutine."""
    if sys.implementation.name != "cpython":
        raise RuntimeError(
            "greenportal can only replace the coroutine of an existing asyncio task on "
            f"CPython, not {sys.implementation.name}; use greenportal.with_portal_run()"
        )
    old = task.get_coro()
    if old is None:
        raise RuntimeError(f"cannot give a portal to {task!r}: it has no coroutine (done?)")
    tp = type(task)
    offset = _offsets.get(tp)
    if offset is None:
        offset = _find_offset(task, old)
    done = _swap_coro(task, offset, old, new)
    if done == 0:
        _raise_check_failed(tp)
    if done < 0:
        _raise_not_seen(tp)
    _offsets[tp] = offset


def _write_coro(task: Any, offset: int, old: object, new: object) -> int:
    """Check, write, verify: make the pointer at *offset* in *task* point to *new*.

    Returns 1 on success, 0 if the word there was not *old* (nothing written),
    -1 if the task did not see the write (it was undone).  The caller keeps
    *old* alive.  (Compiled twin: ``_speedups.swap_coro``, which spares the
    microseconds of these ctypes calls on every ``ensure_portal()``.)
    """
    address = id(task) + offset
    if _word_at(address) != id(old):
        return 0
    _incref(new)
    ctypes.c_void_p.from_address(address).value = id(new)
    if task.get_coro() is not new:
        ctypes.c_void_p.from_address(address).value = id(old)
        _decref(new)
        return -1
    _decref(old)
    return 1


_swap_coro = _accel.pick("swap_coro", _write_coro)


def _raise_check_failed(tp: type) -> NoReturn:
    raise RuntimeError(
        f"greenportal's check of {tp.__qualname__}'s coroutine field failed before "
        "writing (its layout is not what was measured); nothing was changed"
    )


def _raise_not_seen(tp: type) -> NoReturn:
    raise RuntimeError(
        f"greenportal wrote {tp.__qualname__}'s coroutine field but the task did not "
        "see the change; the old value was restored"
    )
