"""The service in a child process, for the demo and the macro benchmark.

The child runs ``python -m app.server``; this side waits for its ready line,
reads its ``/_stats`` and stops it with SIGTERM.  Measuring from another
process keeps the load generator's CPU out of the server's numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent


class ServerError(Exception):
    """The service did not start; the message carries its last error line."""


class ServerProcess:
    """``async with ServerProcess(...) as server:`` - ``server.port``, ``server.stats()``."""

    def __init__(
        self,
        variants: list[str],
        *,
        dsn: str | None = None,
        latency_ms: float = 0.0,
        uvloop: bool = False,
        python: str = sys.executable,
        start_timeout: float = 120.0,
    ) -> None:
        self.cmd = [python, "-m", "app.server", "--variants", ",".join(variants)]
        self.cmd += ["--latency-ms", str(latency_ms)]
        if dsn:
            self.cmd += ["--dsn", dsn]
        if uvloop:
            self.cmd.append("--uvloop")
        self.start_timeout = start_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.database = ""
        self.greenportal = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
        # A DSN given on the command line wins; do not let DATABASE_URL sneak in.
        env.pop("DATABASE_URL", None)
        self.process = await asyncio.create_subprocess_exec(
            *self.cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), self.start_timeout)
        except asyncio.TimeoutError:
            line = b""
        if not line:
            await self.stop()
            errors = (await self.process.stderr.read()).decode(errors="replace").strip()
            last = errors.splitlines()[-1] if errors else "it printed nothing"
            raise ServerError(f"the server did not start: {last}")
        ready = json.loads(line)
        self.port = int(ready["port"])
        self.database = str(ready["database"])
        self.greenportal = str(ready.get("greenportal", "?"))

    async def stats(self) -> dict[str, Any]:
        """The server's ``/_stats`` (this resets its loop-stall maximum)."""
        url = f"http://127.0.0.1:{self.port}/_stats"

        def get() -> dict[str, Any]:
            with urllib.request.urlopen(url, timeout=30) as response:
                stats: dict[str, Any] = json.load(response)
            return stats

        return await asyncio.to_thread(get)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
