"""The demo application (examples/app): every variant, real drivers, real HTTP.

Each test serves the app with aiohttp on a loopback port and talks to it with
aiohttp's client.  SQLite runs through aiosqlite on a temporary file; the
PostgreSQL test uses the throwaway cluster of the ``postgres_dsn`` fixture.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("aiosqlite")

import aiohttp
from aiohttp import web

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from app import server  # noqa: E402
from app.drivers import DatabaseError, to_dollar_params  # noqa: E402
from app.facade import LoopHop  # noqa: E402

CUSTOMERS = [1, 7, 42, 500, 1999, 2000]
LATENCY = 0.04  # seconds per query in the overlap test: 5 queries make 0.2 s a request


def available_variants() -> list[str]:
    variants = list(server.VARIANTS)
    for peer, module in (("greenback", "greenback"), ("sqlalchemy", "sqlalchemy")):
        try:
            __import__(module)
        except ImportError:
            continue
        variants.append(peer)
    return variants


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[str, web.Application]]:
    """The app served on 127.0.0.1 (a free port): (base URL, app)."""
    app = server.make_app(**options)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        sock = server.bound_socket()
        site = web.SockSite(runner, sock)
        await site.start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        await runner.cleanup()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def summaries_by_variant(**options: Any) -> dict[str, list[Any]]:
    variants = available_variants()
    found: dict[str, list[Any]] = {}
    async with serving(variants=variants, **options) as (base, app), aiohttp.ClientSession() as s:
        for variant in variants:
            found[variant] = [
                await get_json(s, f"{base}/{variant}/customers/{cid}/summary") for cid in CUSTOMERS
            ]
            found[variant].append(await get_json(s, f"{base}/{variant}/customers/99999/summary"))
        # Every successful request wrote one audit row, whichever way it ran.
        state = app[server.STATE]
        row = await state.driver.fetch_one("SELECT COUNT(*) FROM gp_audit_log")
        assert row is not None
        assert row[0] == len(variants) * len(CUSTOMERS)
        status, stats = await get_json(s, f"{base}/_stats")
        assert status == 200
        assert stats["requests"] == {v: len(CUSTOMERS) for v in variants}
    return found


def check_same_everywhere(found: dict[str, list[Any]]) -> None:
    reference = found["native"]
    for variant, results in found.items():
        assert results == reference, f"{variant} differs from native"
    by_id = {body["customer"]["id"]: body for status, body in reference[:-1] if status == 200}
    assert sorted(by_id) == CUSTOMERS
    assert by_id[7]["customer"]["name"] == "Customer 7"
    for body in by_id.values():
        assert body["tier"] in ("gold", "silver", "bronze")
        assert len(body["recent"]) <= 5
        assert body["orders"] >= sum(1 for o in body["recent"] if o["status"] != "cancelled")
    assert any(body["recent"] for body in by_id.values())
    status, text = reference[-1]
    assert status == 404
    assert "no customer 99999" in text


def test_every_variant_same_results_sqlite() -> None:
    check_same_everywhere(asyncio.run(summaries_by_variant()))


def test_every_variant_same_results_postgresql(postgres_dsn: str) -> None:
    pytest.importorskip("asyncpg")
    check_same_everywhere(asyncio.run(summaries_by_variant(dsn=postgres_dsn)))


async def time_concurrent(variant: str, requests: int) -> tuple[float, float]:
    """(seconds for *requests* concurrent summaries, the loop's longest stall in ms)."""
    async with (
        serving(variants=[variant], latency=LATENCY) as (base, _),
        aiohttp.ClientSession() as session,
    ):
        await get_json(session, f"{base}/_stats")  # starts the stall measurement afresh
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                get_json(session, f"{base}/{variant}/customers/{cid}/summary")
                for cid in range(1, requests + 1)
            )
        )
        elapsed = time.perf_counter() - started
        _, stats = await get_json(session, f"{base}/_stats")
    assert all(status == 200 for status, _ in results)
    return elapsed, stats["max_loop_stall_ms"]


def test_portal_requests_overlap() -> None:
    """Portals: eight requests of 0.2 s of database waits each take about 0.2 s, not 1.6 s."""
    requests = 8
    serial = requests * 5 * LATENCY
    elapsed, stall_ms = asyncio.run(time_concurrent("portal", requests))
    assert elapsed < serial / 2, f"portal requests did not overlap: {elapsed:.2f} s"
    assert stall_ms < 5 * LATENCY * 1000  # far less than one blocked request


def test_loop_thread_blocks_the_loop() -> None:
    """The contrast that makes the overlap test meaningful: the blocking facade serializes."""
    requests = 3
    serial = requests * 5 * LATENCY
    elapsed, stall_ms = asyncio.run(time_concurrent("loop-thread", requests))
    assert elapsed >= serial * 0.9
    assert stall_ms >= 5 * LATENCY * 1000 * 0.9  # a whole request's queries, loop blocked


def test_loop_hop_refuses_its_own_loop() -> None:
    async def main() -> None:
        hop = LoopHop(asyncio.get_running_loop())

        async def never() -> None:
            raise AssertionError("must not run")

        with pytest.raises(RuntimeError, match="deadlock"):
            hop(never())

    asyncio.run(main())


def test_placeholders_for_postgresql() -> None:
    assert to_dollar_params("a = ? AND b IN (?, ?)") == "a = $1 AND b IN ($2, $3)"
    assert to_dollar_params("SELECT 1") == "SELECT 1"


def test_bad_dsn_is_refused_clearly() -> None:
    with pytest.raises(DatabaseError, match="unsupported DSN 'mysql://u:\\*\\*\\*@h/db'"):
        server.make_app(dsn="mysql://u:secret@h/db")


def test_unreachable_postgresql_is_a_clear_error() -> None:
    pytest.importorskip("asyncpg")
    sock = server.bound_socket()  # a port that is ours and never accepts
    port = sock.getsockname()[1]
    sock.close()

    async def main() -> None:
        app = server.make_app(dsn=f"postgresql://demo:secret@127.0.0.1:{port}/shop")
        runner = web.AppRunner(app)
        with pytest.raises(DatabaseError, match="cannot connect to PostgreSQL at") as caught:
            await runner.setup()
        assert "secret" not in str(caught.value)
        await runner.cleanup()

    asyncio.run(main())


@pytest.mark.subprocess
def test_demo_command_prints_the_table() -> None:
    """examples/demo.py end to end: child server, load, table, exit code 0."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [
            *(sys.executable, str(EXAMPLES / "demo.py")),
            *("--seconds", "0.4", "--rounds", "1", "--warmup", "0", "--concurrency", "4"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = [line.split()[0] for line in lines[header + 2 : header + 6]]
    assert rows == list(server.VARIANTS)
    assert "SQLite" in done.stdout


@pytest.mark.subprocess
def test_demo_command_fails_clearly_on_a_bad_dsn() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--dsn", "mysql://localhost/shop"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "demo failed" in done.stderr
    assert "unsupported DSN" in done.stderr
