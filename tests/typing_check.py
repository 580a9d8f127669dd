"""Static type checks of the public API (run by mypy --strict; never executed).

Each ``assert_type`` pins what a caller's type checker sees: decorators and
the with_portal_run* family keep the wrapped function's parameter and return
types.  Lines marked ``type: ignore[...]`` must stay errors (mypy's
warn_unused_ignores fails the run if they stop being errors).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import greenportal

if TYPE_CHECKING:
    from typing_extensions import assert_type


async def fetch(user_id: int, *, verbose: bool = False) -> str:
    return str(user_id)


def load(user_id: int) -> list[int]:
    return [user_id]


async def agen() -> AsyncIterator[int]:
    yield 1


async def check() -> None:
    assert_type(greenportal.await_(fetch(1)), str)
    assert_type(await greenportal.with_portal_run(fetch, 1, verbose=True), str)
    assert_type(await greenportal.with_portal_run_sync(load, 1), list[int])
    assert_type(await greenportal.with_portal_run_tree(fetch, 2), str)
    await greenportal.with_portal_run(fetch, "x")  # type: ignore[arg-type]
    await greenportal.with_portal_run_sync(load, 1, 2)  # type: ignore[call-arg]

    sync_fetch = greenportal.autoawait(fetch)
    assert_type(sync_fetch(3, verbose=False), str)
    sync_fetch("3")  # type: ignore[arg-type]

    as_portal = greenportal.portal(load)
    assert_type(await as_portal(1), list[int])
    assert_type(await greenportal.portal(fetch)(1), str)

    cached = greenportal.decorate_as_sync(functools.lru_cache(maxsize=8))(fetch)
    _: Coroutine[Any, Any, Any] = cached(1)
    await _

    for item in greenportal.async_iter(agen()):
        assert_type(item, int)
    assert_type(greenportal.has_portal(), bool)
