"""The reliability families print what they did (for docs/reliability.rst)."""

from __future__ import annotations

from typing import Any

from ._support import FULL, PEAKS, STATS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not STATS and not PEAKS:
        return
    terminalreporter.section("greenportal reliability figures")
    terminalreporter.write_line(f"volume: {'full' if FULL else 'default slice'}")
    for name in sorted(STATS):
        terminalreporter.write_line(f"{name}: {STATS[name]:,}")
    for name in sorted(PEAKS):
        terminalreporter.write_line(f"peak {name}: {PEAKS[name]:,}")
