"""Shared by the reliability tests: the volume switch and the figures of a run.

``GREENPORTAL_RELIABILITY=full`` (set by ``scripts/reliability.py --full``)
selects the full volume; anything else runs the bounded default slice that
the ordinary suite includes.  Every family adds what it did to :data:`STATS`;
the reliability conftest prints the totals at the end of the session, and
``docs/reliability.rst`` quotes them from a full run.
"""

from __future__ import annotations

import collections
import os
import threading

FULL = os.environ.get("GREENPORTAL_RELIABILITY", "") == "full"

STATS: collections.Counter[str] = collections.Counter()
PEAKS: dict[str, int] = {}
_lock = threading.Lock()


def volume(default: int, full: int) -> int:
    """*full* under ``GREENPORTAL_RELIABILITY=full``, else *default*."""
    return full if FULL else default


def count(name: str, n: int = 1) -> None:
    with _lock:
        STATS[name] += n


def peak(name: str, value: int) -> None:
    with _lock:
        PEAKS[name] = max(PEAKS.get(name, 0), value)
