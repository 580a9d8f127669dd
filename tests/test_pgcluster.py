"""tools/pgcluster.py: a real throwaway PostgreSQL cluster, started and removed.

Skipped, with a message saying what to install, where the server binaries are
missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import _pgcluster, run_python

pgcluster = _pgcluster()
asyncpg = pytest.importorskip("asyncpg")

needs_pg = pytest.mark.skipif(pgcluster.find_pg_bin() is None, reason=pgcluster.MISSING_MESSAGE)
TOOLS = Path(pgcluster.__file__).parent


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _whoami(**connect: Any) -> tuple[str, str, int]:
    conn = await asyncpg.connect(**connect, timeout=30)
    try:
        row = await conn.fetchrow("SELECT current_database(), current_user, 6 * 7 AS answer")
        return row[0], row[1], row[2]
    finally:
        await conn.close()


def test_find_pg_bin_returns_a_directory_with_the_server_programs() -> None:
    found = pgcluster.find_pg_bin()
    if found is None:
        pytest.skip(pgcluster.MISSING_MESSAGE)
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(found / name, os.X_OK), name


def test_missing_message_says_what_to_install() -> None:
    assert "apt-get install postgresql" in pgcluster.MISSING_MESSAGE
    assert "brew install postgresql" in pgcluster.MISSING_MESSAGE


def test_find_pg_bin_honours_the_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = pgcluster.find_pg_bin()
    if real is None:
        pytest.skip(pgcluster.MISSING_MESSAGE)
    for name in ("initdb", "pg_ctl", "postgres"):
        (tmp_path / name).symlink_to(real / name)
    monkeypatch.setenv("GREENPORTAL_PG_BIN", str(tmp_path))
    assert pgcluster.find_pg_bin() == tmp_path
    # An override without the programs is passed over, not trusted.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("GREENPORTAL_PG_BIN", str(empty))
    assert pgcluster.find_pg_bin() == real


@needs_pg
def test_cluster_serves_tcp_and_unix_socket_then_disappears() -> None:
    cluster = pgcluster.PostgresCluster(user="tester", database="things")
    assert not cluster.running
    with cluster as pg:
        assert pg is cluster
        assert pg.running
        assert pg.dsn == f"postgresql://tester@127.0.0.1:{pg.port}/things"
        assert (pg.host, pg.user, pg.database) == ("127.0.0.1", "tester", "things")
        directory = pg.directory
        pid = int((directory / "data" / "postmaster.pid").read_text().split()[0])
        assert asyncio.run(_whoami(dsn=pg.dsn)) == ("things", "tester", 42)
        via_socket = _whoami(
            host=str(pg.socket_dir), port=pg.port, user="tester", database="things"
        )
        assert asyncio.run(via_socket) == ("things", "tester", 42)
        port = pg.port
        assert isinstance(pg.log_tail(), str)
    assert not cluster.running
    assert not directory.exists()
    assert not _port_open(port)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # pg_ctl -w returned; the postmaster may still be exiting
    assert not _pid_alive(pid)
    cluster.stop()  # idempotent
    with pytest.raises(pgcluster.PostgresClusterError, match="only available while"):
        cluster.dsn  # noqa: B018


@needs_pg
def test_two_clusters_at_once_and_settings_are_applied() -> None:
    with (
        pgcluster.PostgresCluster() as one,
        pgcluster.PostgresCluster(settings={"application_name": "second"}) as two,
    ):
        assert one.port != two.port
        assert one.directory != two.directory

        async def check() -> None:
            a = await asyncpg.connect(one.dsn)
            b = await asyncpg.connect(two.dsn)
            try:
                await a.execute("CREATE TABLE only_here (x int)")
                assert await a.fetchval("SELECT count(*) FROM only_here") == 0
                missing = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'"
                assert await b.fetchval(missing) == 0
                assert await a.fetchval("SHOW fsync") == "off"
                assert await b.fetchval("SHOW application_name") == "second"
            finally:
                await a.close()
                await b.close()

        asyncio.run(check())


@needs_pg
def test_start_twice_is_refused() -> None:
    with pgcluster.PostgresCluster() as pg:
        with pytest.raises(pgcluster.PostgresClusterError, match="already running"):
            pg.start()


@needs_pg
def test_a_failing_start_reports_the_server_log_and_cleans_up() -> None:
    # A parent of our own (that the server user can enter when we are root),
    # to see that nothing is left in it.
    parent = Path(tempfile.mkdtemp(prefix="pgc-test-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        cluster = pgcluster.PostgresCluster(
            settings={"shared_buffers": "not-a-size"}, parent_dir=parent
        )
        with pytest.raises(pgcluster.PostgresClusterError) as info:
            cluster.start()
        message = str(info.value)
        assert "pg_ctl" in message
        assert "server log" in message
        assert "shared_buffers" in message  # the server's own complaint, from the log
        assert not cluster.running
        assert list(parent.iterdir()) == []
    finally:
        shutil.rmtree(parent)


def test_an_unreachable_parent_is_refused_when_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the directory to another user")
    if pgcluster.find_pg_bin() is None:
        pytest.skip(pgcluster.MISSING_MESSAGE)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    cluster = pgcluster.PostgresCluster(parent_dir=private)
    with pytest.raises(pgcluster.PostgresClusterError, match="is not reachable by user"):
        cluster.start()
    assert list(private.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"user": "bad name"}, "user name 'bad name' is not a plain SQL identifier"),
        ({"database": "1db"}, "database name '1db' is not a plain SQL identifier"),
        ({"database": 'x"; DROP'}, "not a plain SQL identifier"),
    ],
)
def test_bad_names_are_refused(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pgcluster.PostgresCluster(**kwargs)


def test_bin_dir_without_programs_is_refused(tmp_path: Path) -> None:
    cluster = pgcluster.PostgresCluster(bin_dir=tmp_path)
    with pytest.raises(pgcluster.PostgresClusterError, match="does not hold all of initdb"):
        cluster.start()
    assert not cluster.running


@needs_pg
@pytest.mark.subprocess
def test_a_cluster_left_running_is_removed_at_exit() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(TOOLS)!r}); import pgcluster\n"
        "pg = pgcluster.PostgresCluster().start()\n"
        "print(pg.port, pg.directory, flush=True)\n"
    )
    done = run_python("-c", code, timeout=120)
    assert done.returncode == 0, done.stderr
    port, directory = done.stdout.split()
    assert not Path(directory).exists()
    assert not _port_open(int(port))


@needs_pg
@pytest.mark.subprocess
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_main_prints_the_dsn_and_stops_on_a_signal(sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(TOOLS / "pgcluster.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("PostgreSQL is up"), first + proc.stderr.read()  # type: ignore[union-attr]
        directory = first.split("(")[-1].rstrip(")\n")
        dsn = proc.stdout.readline().strip()
        assert asyncio.run(_whoami(dsn=dsn)) == ("greenportal", "greenportal", 42)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping" in out
    assert not Path(directory).exists()


def test_the_session_fixture_gives_a_working_dsn(postgres_dsn: str) -> None:
    assert postgres_dsn.startswith("postgresql://greenportal@127.0.0.1:")
    assert asyncio.run(_whoami(dsn=postgres_dsn))[2] == 42
