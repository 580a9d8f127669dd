"""anyio's worker threads: recognising one, and awaiting from it.

anyio runs on asyncio or Trio, and its tasks are those backends' tasks, so
portals need nothing from anyio.  Its worker threads
(``anyio.to_thread.run_sync``) are another matter: under Trio they are Trio's
own (``_trio.in_worker_thread`` sees them), but under asyncio only anyio
knows which loop started one, so ``await_`` there goes through
``anyio.from_thread.run``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


def in_worker_thread() -> bool:
    """Is this an anyio worker thread that can call back into its event loop?"""
    if "anyio" not in sys.modules:
        return False
    eventloop = sys.modules.get("anyio._core._eventloop")
    threadlocals = getattr(eventloop, "threadlocals", None)
    return threadlocals is not None and hasattr(threadlocals, "current_token")


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def from_thread(aw: Awaitable[Any]) -> Any:
    """Run *aw* on the event loop that started this worker thread."""
    import concurrent.futures

    import anyio.from_thread

    try:
        return anyio.from_thread.run(_await, aw)
    except concurrent.futures.CancelledError as error:
        # anyio turns the task's cancellation into the thread-side exception
        # type; sync code under asyncio expects asyncio's.
        asyncio = sys.modules["asyncio"]
        raise asyncio.CancelledError(*error.args) from None
