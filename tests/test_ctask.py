"""The checked write into asyncio's C Task (greenportal._ctask)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

from greenportal import await_, ensure_portal
from greenportal._backends import _ctask

from .conftest import run_python

CTask: Any = getattr(asyncio.tasks, "_CTask", None)
pytestmark = pytest.mark.skipif(CTask is None, reason="no C Task on this Python")


async def _sleeper() -> None:
    await asyncio.sleep(10)


async def _replacement() -> None:
    pass


@contextlib.asynccontextmanager
async def suspended_task() -> AsyncIterator[tuple[asyncio.Task[None], Any, Any]]:
    """A C task suspended in a sleep, its coroutine, and a spare coroutine."""
    task = asyncio.ensure_future(_sleeper())
    await asyncio.sleep(0)
    spare = _replacement()
    try:
        yield task, task.get_coro(), spare
    finally:
        spare.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_swap_and_swap_back() -> None:
    async def main() -> None:
        async with suspended_task() as (task, original, new):
            _ctask.set_coro(task, new)
            assert task.get_coro() is new
            _ctask.set_coro(task, original)
            assert task.get_coro() is original

    asyncio.run(main())


def test_layout_mismatch_raises_before_writing(monkeypatch: Any) -> None:
    """A wrong remembered offset is caught by the check, and nothing is written."""

    async def main() -> None:
        async with suspended_task() as (task, original, new):
            good = _ctask._find_offset(task, original)
            monkeypatch.setitem(_ctask._offsets, type(task), good + _ctask._WORD)
            with pytest.raises(RuntimeError, match=r"check of .* failed before writing"):
                _ctask.set_coro(task, new)
            assert task.get_coro() is original

    asyncio.run(main())


def test_ambiguous_layout_is_refused() -> None:
    """If the scan finds no unique field, we refuse with an explanation."""

    async def main() -> None:
        async with suspended_task() as (task, _, _):
            with pytest.raises(RuntimeError, match="cannot locate the coroutine field"):
                _ctask._find_offset(task, object())

    asyncio.run(main())


def test_portal_under_python_dash_O() -> None:
    """The same checks and behaviour with assertions compiled out."""
    script = textwrap.dedent(
        """
        import asyncio, greenportal
        from greenportal._backends import _ctask
        assert False, "asserts must be off"
        """
    )
    # First prove -O really disables asserts, then exercise the write path.
    subprocess.run([sys.executable, "-O", "-c", script], check=True, timeout=60)
    script = textwrap.dedent(
        """
        import asyncio, greenportal
        async def io():
            await asyncio.sleep(0)
            return 7
        def sync_layer():
            return greenportal.await_(io())
        async def worker():
            await greenportal.ensure_portal()
            return sync_layer()
        async def main():
            results = await asyncio.gather(*(worker() for _ in range(100)))
            assert results == [7] * 100
            t = asyncio.current_task()
            print(type(t).__module__, type(t.get_coro()).__name__)
        asyncio.run(main())
        """
    )
    out = run_python("-O", "-W", "error", "-c", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["_asyncio", "coroutine"]


def test_ensure_portal_uses_the_write(backend: Any) -> None:
    """ensure_portal on a C task leaves a Portal as the task's coroutine."""
    if backend.is_trio:
        pytest.skip("asyncio only")

    async def main() -> None:
        await ensure_portal()
        task = asyncio.current_task()
        assert task is not None
        assert type(task.get_coro()).__name__ == "Portal"
        assert await_(asyncio.sleep(0, "ok")) == "ok"

    backend.run(main)
