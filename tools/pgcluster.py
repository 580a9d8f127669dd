#!/usr/bin/env python3
"""A throwaway PostgreSQL cluster for tests, demos and benchmarks.

::

    with PostgresCluster() as pg:
        engine = create_async_engine(pg.dsn.replace("postgresql://", "postgresql+asyncpg://"))
        ...

:class:`PostgresCluster` runs ``initdb`` in a fresh temporary directory,
starts the server with ``pg_ctl`` on a free loopback port (and a Unix socket
in the same directory), creates the database, and on :meth:`~PostgresCluster.stop`
shuts the server down and removes the directory.  The settings trade
durability for speed (``fsync=off`` and friends): the data lives only as long
as the cluster.

PostgreSQL refuses to run as root.  When this process is root, the server
commands run as an unprivileged user instead (``postgres`` if it exists, else
``nobody``; ``GREENPORTAL_PG_USER`` overrides it), and the temporary directory
is handed over to that user.

``GREENPORTAL_PG_BIN`` names the directory holding ``initdb``, ``pg_ctl``
and ``postgres`` if :func:`find_pg_bin` does not find it by itself.

Run this file to get a cluster for manual use: it prints the DSN and keeps the
server up until Ctrl-C.  Standard library only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

__all__ = [
    "MISSING_MESSAGE",
    "PostgresCluster",
    "PostgresClusterError",
    "find_pg_bin",
]

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")

MISSING_MESSAGE = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. Install them: "
    "on Debian/Ubuntu `apt-get install postgresql` (they land in /usr/lib/postgresql/*/bin), "
    "on Fedora/RHEL `dnf install postgresql-server`, on macOS `brew install postgresql`; "
    "or set GREENPORTAL_PG_BIN to the directory that holds them."
)

# Every subprocess gets a deadline; these are generous for a loaded CI machine.
INITDB_TIMEOUT = 120.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SQL_TIMEOUT = 60.0
LOG_TAIL_LINES = 40

# Throwaway cluster: nothing needs to survive a crash, so skip every flush.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PostgresClusterError(RuntimeError):
    """Starting, using or stopping a :class:`PostgresCluster` failed."""


# --- finding the binaries ----------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", path)
    return tuple(int(n) for n in numbers)


def _has_server_programs(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in SERVER_PROGRAMS)


def _candidate_dirs() -> list[Path]:
    candidates: list[Path] = []
    override = os.environ.get("GREENPORTAL_PG_BIN")
    if override:
        candidates.append(Path(override))
    on_path = shutil.which("initdb")
    if on_path:
        # Debian puts symlinks in /usr/local/bin or similar at most: follow
        # them to the versioned directory, which also holds postgres.
        candidates.append(Path(on_path).resolve().parent)
        candidates.append(Path(on_path).parent)
    patterns = [
        "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
        "/usr/pgsql-*/bin",  # PGDG RPMs
        "/opt/homebrew/opt/postgresql*/bin",  # Homebrew, Apple silicon
        "/usr/local/opt/postgresql*/bin",  # Homebrew, Intel
        "/usr/local/pgsql/bin",  # built from source
    ]
    for pattern in patterns:
        candidates.extend(Path(p) for p in sorted(glob.glob(pattern), key=_version_key)[::-1])
    candidates.append(Path("/usr/bin"))  # Fedora, Arch
    return candidates


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None.

    Looks at ``GREENPORTAL_PG_BIN``, then ``PATH``, then the usual install
    locations (``/usr/lib/postgresql/*/bin`` and the like), newest version first.
    """
    seen: set[Path] = set()
    for directory in _candidate_dirs():
        if directory in seen:
            continue
        seen.add(directory)
        if directory.is_dir() and _has_server_programs(directory):
            return directory
    return None


# --- helpers -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no server log: {error})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(server log is empty)"


def _traversable_by_others(path: Path) -> bool:
    """Can a user other than the owner reach entries inside *path*?"""
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _pick_run_as() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    wanted = os.environ.get("GREENPORTAL_PG_USER")
    for name in [wanted] if wanted else ["postgres", "nobody"]:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresClusterError(
        "running as root, and PostgreSQL refuses root: no unprivileged user to run the server "
        f"as ({wanted or 'postgres, nobody'} not found). Create one "
        "(e.g. `useradd --system postgres`) or set GREENPORTAL_PG_USER to an existing user."
    )


def _clean_env() -> dict[str, str]:
    # libpq and the server read PG* variables (PGDATA, PGPORT, PGHOST...): a
    # stray one from the caller's shell must not point us at another cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _run_cmd(
    cmd: list[str], *, root: Path, run_as: str | None, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a server program in *root* (as *run_as* if set); errors carry the log tail."""
    kwargs: dict[str, Any] = {}
    env = _clean_env()
    if run_as is not None:
        import pwd

        entry = pwd.getpwnam(run_as)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env.update(HOME=str(root), USER=run_as, LOGNAME=run_as)
    log = root / "server.log"
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=str(root),
            **kwargs,
        )
    except subprocess.TimeoutExpired as error:
        raise PostgresClusterError(
            f"`{' '.join(cmd)}` did not finish in {timeout:.0f}s.\n"
            f"server log ({log}):\n{_tail(log)}"
        ) from error
    if check and done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-4000:]
        raise PostgresClusterError(
            f"`{' '.join(cmd)}` failed with exit status {done.returncode}.\n"
            f"output:\n{output}\n"
            f"server log ({log}):\n{_tail(log)}"
        )
    return done


def _stop_server(bin_dir: Path, root: Path, run_as: str | None) -> None:
    """Stop the server in *root*/data: fast, then immediate, then SIGKILL."""
    data = root / "data"
    pidfile = data / "postmaster.pid"
    for mode in ("fast", "immediate"):
        if not pidfile.exists():
            return
        cmd = [str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", mode]
        cmd += ["-w", "-t", str(int(STOP_TIMEOUT))]
        try:
            _run_cmd(cmd, root=root, run_as=run_as, timeout=STOP_TIMEOUT + 10, check=False)
        except PostgresClusterError:
            continue
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def _finalize(bin_dir: Path, root: Path, run_as: str | None) -> None:
    """Stop and remove a cluster (on stop(), at exit, or when it is garbage collected)."""
    try:
        _stop_server(bin_dir, root, run_as)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the cluster ---------------------------------------------------------------


class PostgresCluster:
    """A PostgreSQL server in a temporary directory, for as long as it is needed.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    While running, :attr:`dsn` is a ``postgresql://user@127.0.0.1:port/database``
    URL (trust authentication, no password) that asyncpg, psycopg and
    SQLAlchemy accept; :attr:`socket_dir` holds the Unix socket.

    *user* and *database* name the superuser and the database to create.
    *bin_dir* overrides :func:`find_pg_bin`; *settings* adds or overrides
    server settings (``{"log_statement": "all"}``); *parent_dir* is where the
    temporary directory goes.
    """

    def __init__(
        self,
        *,
        user: str = "greenportal",
        database: str = "greenportal",
        bin_dir: str | os.PathLike[str] | None = None,
        settings: dict[str, str] | None = None,
        parent_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        for what, value in (("user", user), ("database", database)):
            if not _NAME.match(value):
                raise ValueError(
                    f"{what} name {value!r} is not a plain SQL identifier; "
                    "use letters, digits and underscores, not starting with a digit"
                )
        self.user = user
        self.database = database
        self.host = "127.0.0.1"
        self.port = 0
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._settings = {**FAST_SETTINGS, **(settings or {})}
        self._parent_dir = Path(parent_dir) if parent_dir is not None else None
        self._root: Path | None = None
        self._bin = Path()
        self._run_as: str | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- public -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._root is not None

    @property
    def dsn(self) -> str:
        """``postgresql://user@127.0.0.1:port/database`` (only while running)."""
        self._require_running("dsn")
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def directory(self) -> Path:
        """The temporary directory holding the data, the log and the socket."""
        self._require_running("directory")
        assert self._root is not None
        return self._root

    @property
    def socket_dir(self) -> Path:
        """Where the server's Unix socket (``.s.PGSQL.<port>``) lives."""
        return self.directory

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last *lines* lines of the server log."""
        return _tail(self.log_path, lines)

    def start(self) -> PostgresCluster:
        """initdb, start the server, create the database. Returns self."""
        if self._root is not None:
            raise PostgresClusterError(f"this cluster is already running at {self.dsn}")
        bin_dir = self._bin_dir or find_pg_bin()
        if bin_dir is None:
            raise PostgresClusterError(MISSING_MESSAGE)
        if not _has_server_programs(bin_dir):
            raise PostgresClusterError(
                f"{bin_dir} does not hold all of {', '.join(SERVER_PROGRAMS)}. {MISSING_MESSAGE}"
            )
        self._bin = bin_dir
        self._run_as = _pick_run_as()
        self._root = root = self._make_root()
        # From here on, stop() or the interpreter's exit cleans up, whatever happens.
        self._finalizer = weakref.finalize(self, _finalize, bin_dir, root, self._run_as)
        try:
            self._initdb()
            self._start_server()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Shut the server down and remove its directory. Idempotent."""
        finalizer, self._finalizer = self._finalizer, None
        self._root = None
        self.port = 0
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.dsn if self.running else "stopped"
        return f"<PostgresCluster {where}>"

    # -- internals ------------------------------------------------------------

    def _require_running(self, what: str) -> None:
        if self._root is None:
            raise PostgresClusterError(
                f"PostgresCluster.{what} is only available while the cluster runs; "
                "call start() or use `with PostgresCluster() as pg:`"
            )

    @property
    def _data(self) -> Path:
        assert self._root is not None
        return self._root / "data"

    def _make_root(self) -> Path:
        parent = self._parent_dir
        if parent is None and self._run_as is not None:
            default = Path(tempfile.gettempdir())
            # The server user must be able to reach the directory.
            parent = default if _traversable_by_others(default) else Path("/tmp")
        # Unix socket paths are limited to ~107 bytes: keep the prefix short.
        root = Path(tempfile.mkdtemp(prefix="pgc-", dir=parent)).resolve()
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            if not _traversable_by_others(root.parent):
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresClusterError(
                    f"{root.parent} is not reachable by user {self._run_as!r}, who must run the "
                    "server (we are root); pass parent_dir= a directory others can enter"
                )
        if len(str(root)) > 80:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresClusterError(
                f"temporary directory {root} is too long for a Unix socket path; "
                "pass a shorter parent_dir= (or set TMPDIR)"
            )
        return root

    def _run(
        self, cmd: list[str], *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        assert self._root is not None
        return _run_cmd(cmd, root=self._root, run_as=self._run_as, timeout=timeout, check=check)

    def _initdb(self) -> None:
        self._run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(self._data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=INITDB_TIMEOUT,
        )

    def _server_options(self, port: int) -> str:
        options = {
            **self._settings,
            "listen_addresses": self.host,
            "port": str(port),
            "unix_socket_directories": str(self._root),
        }
        return " ".join(f"-c {key}={value}" for key, value in options.items())

    def _start_server(self) -> None:
        # A free port can be taken between our probe and the server's bind:
        # try a few before giving up.
        last: PostgresClusterError | None = None
        for _attempt in range(5):
            port = _free_port()
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()  # so that the tail below is this attempt's
            try:
                self._run(
                    [
                        str(self._bin / "pg_ctl"),
                        "start",
                        "-D",
                        str(self._data),
                        "-l",
                        str(self.log_path),
                        "-o",
                        self._server_options(port),
                        "-w",
                        "-t",
                        str(int(START_TIMEOUT)),
                    ],
                    timeout=START_TIMEOUT + 10,
                )
            except PostgresClusterError as error:
                last = error
                if "could not bind" in self.log_tail():
                    self._stop_quietly()
                    continue
                raise
            self.port = port
            return
        assert last is not None
        raise last

    def _create_database(self) -> None:
        # psql is not always installed next to the server programs, so speak
        # the few messages of the wire protocol this needs ourselves.
        if self.database == "postgres":
            return
        _simple_query(
            self.socket_dir / f".s.PGSQL.{self.port}",
            self.user,
            "postgres",
            f'CREATE DATABASE "{self.database}"',
            timeout=SQL_TIMEOUT,
        )

    def _stop_quietly(self) -> None:
        assert self._root is not None
        with contextlib.suppress(PostgresClusterError):
            _stop_server(self._bin, self._root, self._run_as)


# --- a minimal wire-protocol client, for CREATE DATABASE ---------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise PostgresClusterError("the server closed the connection unexpectedly")
        data += chunk
    return data


def _simple_query(sock_path: Path, user: str, database: str, sql: str, *, timeout: float) -> None:
    """Run one statement over the Unix socket with trust auth (protocol 3.0)."""
    params = b"".join(
        key.encode() + b"\0" + value.encode() + b"\0"
        for key, value in (("user", user), ("database", database))
    )
    body = (196608).to_bytes(4, "big") + params + b"\0"
    startup = (len(body) + 4).to_bytes(4, "big") + body
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(sock_path))
        except OSError as error:
            raise PostgresClusterError(f"cannot connect to {sock_path}: {error}") from error
        sock.sendall(startup)
        query_sent = False
        while True:
            kind = _recv_exact(sock, 1)
            length = int.from_bytes(_recv_exact(sock, 4), "big")
            payload = _recv_exact(sock, length - 4)
            if kind == b"E":
                fields = {
                    part[:1]: part[1:].decode(errors="replace")
                    for part in payload.split(b"\0")
                    if part
                }
                raise PostgresClusterError(
                    f"{sql!r} failed: {fields.get(b'M', payload.decode(errors='replace'))}"
                )
            if kind == b"R" and int.from_bytes(payload[:4], "big") != 0:
                raise PostgresClusterError("the server asked for a password; expected trust auth")
            if kind == b"Z":
                if query_sent:
                    sock.sendall(b"X" + (4).to_bytes(4, "big"))
                    return
                query = sql.encode() + b"\0"
                sock.sendall(b"Q" + (len(query) + 4).to_bytes(4, "big") + query)
                query_sent = True


# --- manual use --------------------------------------------------------------


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if find_pg_bin() is None:
        print(MISSING_MESSAGE, file=sys.stderr)
        return 1
    # SIGTERM (from `kill`, a CI runner, a process manager) stops the cluster
    # as Ctrl-C does, rather than leaving the server and its directory behind.
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with PostgresCluster() as pg:
        print(f"PostgreSQL is up in {time.monotonic() - started:.1f}s ({pg.directory})")
        print(pg.dsn, flush=True)
        print("Ctrl-C (or SIGTERM) stops it and removes its directory.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
