"""``%load_ext greenportal`` in a real ipykernel, started by jupyter_client.

Each flavour of event loop gets one kernel, shared by this module's tests
(each test first puts the kernel in the state it needs); the lifecycle test
starts a fresh one, to see the kernel before the extension was ever loaded.
The kernel runs ``tests/ipykernel_launcher_flavours.py`` from a throwaway
kernelspec, with greenportal imported from the same place as here.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import greenportal

from .conftest import run_python

ipykernel = pytest.importorskip(
    "ipykernel", reason="the kernel tests need ipykernel (dependency group test-asyncio)"
)
jupyter_client = pytest.importorskip(
    "jupyter_client", reason="the kernel tests need jupyter_client (dependency group test-asyncio)"
)
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402

# Under the suite's -W error: jupyter_client 8.10 and ipykernel 6.31/7.x warn
# nothing in this process (their DeprecationWarnings stay in the kernel's).
pytestmark = pytest.mark.subprocess

LAUNCHER = pathlib.Path(__file__).resolve().parent / "ipykernel_launcher_flavours.py"
# Where this process imported greenportal from: the kernel must test the same code.
SRC = pathlib.Path(greenportal.__file__).resolve().parent.parent
TIMEOUT = 20  # seconds, for any one cell
# With %autoawait off a cell runs in the kernel's task for the message: one per
# message from ipykernel 7 on (created after loading: it has a portal), one
# for the whole session in ipykernel 6 (created before: it has none).
PORTAL_WITH_AUTOAWAIT_OFF = int(ipykernel.__version__.split(".")[0]) >= 7


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


FLAVOURS = [
    pytest.param("asyncio-c"),
    pytest.param("asyncio-py"),
    pytest.param("asyncio-debug"),
    pytest.param(
        "asyncio-eager",
        marks=pytest.mark.skipif(
            sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+"
        ),
    ),
    # ipykernel's loop is tornado's on asyncio's current loop, so uvloop's
    # policy makes it a uvloop loop (the test checks that it does).
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not _have("uvloop"), reason="uvloop not installed")
    ),
]


@dataclass
class Reply:
    """What one execute_request produced."""

    status: str
    ename: str | None
    evalue: str | None
    traceback: list[str]
    stdout: str
    result: str | None


@dataclass
class Kernel:
    flavour: str
    km: Any
    kc: Any
    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def send(self, code: str) -> str:
        msg_id: str = self.kc.execute(textwrap.dedent(code))
        return msg_id

    def wait_for_output(self, msg_id: str, text: str, timeout: float = TIMEOUT) -> None:
        """Read iopub until the cell *msg_id* has printed *text*."""
        deadline = time.monotonic() + timeout
        seen = ""
        while text not in seen:
            msg = self._iopub(deadline)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                seen += msg["content"]["text"]
            self.outputs.setdefault(msg["parent_header"].get("msg_id", ""), []).append(msg)

    def _iopub(self, deadline: float) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the kernel did not answer in time")
        msg: dict[str, Any] = self.kc.get_iopub_msg(timeout=left)
        return msg

    def reply(self, msg_id: str, timeout: float = TIMEOUT) -> Reply:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the kernel did not reply in time")
            msg = self.kc.get_shell_msg(timeout=left)
            if msg["parent_header"].get("msg_id") == msg_id:
                content = msg["content"]
                break
        # The outputs: iopub up to the kernel going idle after this request.
        msgs = self.outputs.pop(msg_id, [])
        while not any(
            m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in msgs
        ):
            msg = self._iopub(deadline)
            if msg["parent_header"].get("msg_id") == msg_id:
                msgs.append(msg)
        stdout = "".join(
            m["content"]["text"]
            for m in msgs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )
        results = [
            m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"
        ]
        return Reply(
            status=content["status"],
            ename=content.get("ename"),
            evalue=content.get("evalue"),
            traceback=content.get("traceback", []),
            stdout=stdout,
            result=results[-1] if results else None,
        )

    def run(self, code: str, timeout: float = TIMEOUT) -> Reply:
        return self.reply(self.send(code), timeout)

    def ok(self, code: str, timeout: float = TIMEOUT) -> Reply:
        """Run *code*, which must succeed."""
        reply = self.run(code, timeout)
        assert reply.status == "ok", "\n".join([reply.stdout, *reply.traceback])
        return reply

    def value(self, expression: str) -> str:
        result = self.ok(expression).result
        assert result is not None, expression
        return result

    def load(self) -> None:
        self.ok("%load_ext greenportal\n")
        self.ok(HELPERS)


# Sync helpers, as a user's module would define them.
HELPERS = """
import asyncio, time, greenportal

async def fetch(x, delay=0.0):
    await asyncio.sleep(delay)
    return x * 2

def fetch_sync(x, delay=0.0):             # a sync API over an async client
    return greenportal.await_(fetch(x, delay))

def library_run(x):                        # a library that runs its own loop
    return asyncio.run(fetch(x))

def library_run_until_complete(x):
    return asyncio.get_event_loop().run_until_complete(fetch(x))
"""


def _start(flavour: str, tmp: pathlib.Path, *options: str) -> Kernel:
    spec_dir = tmp / "kernels" / "greenportal-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, str(LAUNCHER), "-f", "{connection_file}", *options],
                "display_name": f"greenportal test ({flavour})",
                "language": "python",
            }
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["GREENPORTAL_TEST_KERNEL_FLAVOUR"] = flavour
    env.pop("PYTHONASYNCIODEBUG", None)
    if flavour == "asyncio-debug":
        env["PYTHONASYNCIODEBUG"] = "1"
    km = jupyter_client.KernelManager(
        kernel_name="greenportal-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp / "kernels")]),
    )
    km.start_kernel(env=env, cwd=str(tmp))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    kernel = Kernel(flavour, km, kc)
    _check_flavour(kernel)
    return kernel


def _check_flavour(kernel: Kernel) -> None:
    """The kernel runs the code under test, on the loop the flavour promises."""
    kernel.ok("import asyncio, asyncio.tasks, greenportal\n")
    assert kernel.value("greenportal.__file__") == repr(str(SRC / "greenportal" / "__init__.py"))
    checks = {
        "asyncio-c": "type(asyncio.current_task()).__module__ == '_asyncio'",
        "asyncio-py": "type(asyncio.current_task()) is asyncio.tasks._PyTask",
        "asyncio-debug": "asyncio.get_running_loop().get_debug()",
        "asyncio-eager": "asyncio.get_running_loop().get_task_factory() is not None",
        "uvloop": "type(asyncio.get_running_loop()).__module__.startswith('uvloop')",
    }
    assert kernel.value(checks[kernel.flavour]) == "True", kernel.flavour


def _stop(kernel: Kernel) -> None:
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module", params=FLAVOURS)
def kernel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kernel]:
    k = _start(request.param, tmp_path_factory.mktemp(request.param))
    try:
        yield k
    finally:
        _stop(k)


@pytest.fixture
def loaded(kernel: Kernel) -> Kernel:
    kernel.load()
    return kernel


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_load_and_unload(flavour: str, tmp_path: pathlib.Path) -> None:
    kernel = _start(flavour, tmp_path)
    try:
        kernel.ok(HELPERS)
        factory_before = kernel.value("id(asyncio.get_running_loop().get_task_factory())")
        # Before: await_ needs a portal, and a nested run is asyncio's error.
        reply = kernel.run("fetch_sync(1)")
        assert (reply.ename, reply.status) == ("RuntimeError", "error")
        assert "portal" in (reply.evalue or "")
        reply = kernel.run("library_run(1)")
        assert reply.ename == "RuntimeError"
        assert "cannot be called from a running event loop" in (reply.evalue or "")

        kernel.ok("%load_ext greenportal\n")
        assert kernel.value("fetch_sync(1)") == "2"
        assert kernel.value("library_run(2)") == "4"
        # Loading again, through the magic or directly, is loading once.
        kernel.ok("%load_ext greenportal\n")
        kernel.ok("greenportal.load_ipython_extension(get_ipython())\n")
        assert kernel.value("fetch_sync(3)") == "6"

        kernel.ok("%unload_ext greenportal\n")
        reply = kernel.run("fetch_sync(1)")
        assert reply.ename == "RuntimeError"
        assert "portal" in (reply.evalue or "")
        reply = kernel.run("library_run(1)")
        assert reply.ename == "RuntimeError"
        assert "cannot be called from a running event loop" in (reply.evalue or "")
        # Everything load changed is back: no instance attributes, the same factory.
        attributes = "{'should_run_async', 'run_cell_async'} & vars(get_ipython()).keys()"
        assert kernel.value(f"sorted({attributes})") == "[]"
        assert kernel.value("id(asyncio.get_running_loop().get_task_factory())") == factory_before
        # Unloading what is not loaded does nothing.
        kernel.ok("greenportal.unload_ipython_extension(get_ipython())\n")
        # And it loads again.
        kernel.ok("%load_ext greenportal\n")
        assert kernel.value("fetch_sync(4)") == "8"
    finally:
        _stop(kernel)


@pytest.mark.timeout(60)
def test_sync_code_in_a_cell_awaits(loaded: Kernel) -> None:
    assert loaded.value("fetch_sync(21)") == "42"
    assert loaded.value("greenportal.has_portal()") == "True"
    # And so do tasks a cell starts.
    reply = loaded.ok(
        """
        async def job():
            return fetch_sync(5) + library_run(1)
        print(await asyncio.create_task(job()))
        """
    )
    assert reply.stdout == "12\n"


@pytest.mark.timeout(60)
def test_the_loop_keeps_running_while_a_cell_waits(loaded: Kernel) -> None:
    reply = loaded.ok(
        """
        ticks = 0
        async def ticker():
            global ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
        ticker_task = asyncio.get_running_loop().create_task(ticker())
        try:
            start = ticks
            fetch_sync(0, delay=0.3)         # waits in await_: the loop runs
            waiting = ticks - start
            start = ticks
            time.sleep(0.3)                  # blocks the loop
            blocking = ticks - start
        finally:
            ticker_task.cancel()
        print(waiting, blocking)
        """
    )
    waiting, blocking = map(int, reply.stdout.split())
    assert waiting >= 5
    assert blocking == 0


@pytest.mark.timeout(60)
def test_nested_runs_in_a_cell_and_in_a_library(loaded: Kernel) -> None:
    assert loaded.value("asyncio.run(fetch(1))") == "2"
    assert loaded.value("asyncio.get_event_loop().run_until_complete(fetch(2))") == "4"
    assert loaded.value("library_run(3), library_run_until_complete(4)") == "(6, 8)"
    # On the kernel's loop, not a fresh one.
    reply = loaded.ok(
        """
        async def which_loop():
            return asyncio.get_running_loop()
        print(asyncio.run(which_loop()) is asyncio.get_running_loop())
        """
    )
    assert reply.stdout == "True\n"


@pytest.mark.timeout(60)
def test_top_level_await_and_autoawait(loaded: Kernel) -> None:
    assert loaded.value("await fetch(5)") == "10"
    assert loaded.value("fetch_sync(await fetch(1))") == "4"
    loaded.ok("%autoawait off\n")
    try:
        reply = loaded.run("await fetch(5)")
        assert reply.ename == "SyntaxError"
        if PORTAL_WITH_AUTOAWAIT_OFF:
            # The cell runs synchronously in the kernel's message task, which
            # got a portal from the loop's factory: await_ still works.
            assert loaded.value("fetch_sync(6)") == "12"
            assert loaded.value("library_run(7)") == "14"
        else:
            reply = loaded.run("fetch_sync(6)")
            assert reply.ename == "RuntimeError"
            assert "portal" in (reply.evalue or "")
    finally:
        loaded.ok("%autoawait on\n")
    assert loaded.value("await fetch(8)") == "16"


@pytest.mark.timeout(60)
def test_exceptions_show_the_usual_traceback(loaded: Kernel) -> None:
    loaded.ok(
        """
        async def failing():
            await asyncio.sleep(0)
            raise ValueError("no such customer")

        def load_customer():
            return greenportal.await_(failing())
        """
    )
    reply = loaded.run("load_customer()")
    assert (reply.status, reply.ename, reply.evalue) == ("error", "ValueError", "no such customer")
    text = "\n".join(reply.traceback)
    assert "load_customer" in text
    assert "failing" in text
    reply = loaded.run("x = )")
    assert reply.ename == "SyntaxError"
    assert loaded.value("1 + 1") == "2"


INTERRUPTED = {
    "await_": ("fetch_sync(0, delay=60)", "CancelledError"),  # waiting in await_
    "await": ("await asyncio.sleep(60)", "CancelledError"),  # waiting at top level
    "time.sleep": ("time.sleep(60)", "KeyboardInterrupt"),  # blocking the loop
    "busy": ("while True:\n    pass", "KeyboardInterrupt"),  # busy
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("case", "autoawait"),
    [(case, "on") for case in INTERRUPTED]
    + [(case, "off") for case in INTERRUPTED if case != "await"],  # a SyntaxError there
)
def test_interrupting_a_cell(loaded: Kernel, case: str, autoawait: str) -> None:
    code, ename = INTERRUPTED[case]
    if (case, autoawait) == ("await_", "off") and not PORTAL_WITH_AUTOAWAIT_OFF:
        pytest.skip("ipykernel 6: with %autoawait off a cell has no portal to wait in")
    loaded.ok(f"%autoawait {autoawait}\n")
    try:
        msg_id = loaded.send("print('started', flush=True)\n" + code)
        loaded.wait_for_output(msg_id, "started")
        time.sleep(0.2)  # into the wait
        start = time.monotonic()
        loaded.km.interrupt_kernel()
        reply = loaded.reply(msg_id, timeout=10)
        assert time.monotonic() - start < 5  # not when the wait would have ended
        assert (reply.status, reply.ename) == ("error", ename)
        assert loaded.value("1 + 1") == "2"
    finally:
        loaded.ok("%autoawait on\n")
    # The kernel goes on, the extension too.
    assert loaded.value("fetch_sync(2)") == "4"
    assert loaded.value("library_run(3)") == "6"


@pytest.mark.timeout(60)
def test_loaded_from_the_kernel_configuration(tmp_path: pathlib.Path) -> None:
    """Loaded before the kernel's loop runs: the first cell gives that loop portals."""
    kernel = _start("asyncio-c", tmp_path, "--InteractiveShellApp.extensions=greenportal")
    try:
        kernel.ok(HELPERS)
        assert kernel.value("fetch_sync(1)") == "2"
        assert kernel.value("asyncio.run(fetch(2))") == "4"
        assert kernel.value("asyncio.get_running_loop().get_task_factory() is not None") == "True"
        # Tasks the cells create get portals: the factory is on the kernel's loop.
        reply = kernel.ok(
            """
            async def job():
                return library_run(3)
            print(await asyncio.get_running_loop().create_task(job()))
            """
        )
        assert reply.stdout == "6\n"
    finally:
        _stop(kernel)


@pytest.mark.timeout(60)
def test_in_process_shell_without_a_kernel() -> None:
    """Terminal IPython's path: run_cell, and IPython's own asyncio loop."""
    pytest.importorskip("IPython")
    code = textwrap.dedent(
        """
        import asyncio, sys
        import greenportal
        assert "IPython" not in sys.modules, "import greenportal imported IPython"
        from IPython.core.async_helpers import get_asyncio_loop
        from IPython.core.interactiveshell import InteractiveShell

        for bad in (None, object()):
            try:
                greenportal.load_ipython_extension(bad)
            except TypeError as error:
                assert "InteractiveShell" in str(error), error
            else:
                raise AssertionError("no TypeError")

        shell = InteractiveShell.instance()

        def cell(code):
            result = shell.run_cell(code)
            error = result.error_before_exec or result.error_in_exec
            return result.result if error is None else type(error).__name__

        cell("import asyncio, greenportal")
        assert cell("greenportal.has_portal()") is False
        greenportal.unload_ipython_extension(shell)           # not loaded: nothing
        cell("%load_ext greenportal")
        loop = get_asyncio_loop()
        assert loop.get_task_factory() is None                # no loop ran %load_ext
        assert cell("asyncio.get_running_loop()") is loop     # cells run on IPython's loop
        assert loop.get_task_factory() is not None            # and the first gave it portals
        cell("%load_ext greenportal")
        assert cell("greenportal.has_portal()") is True
        assert cell("greenportal.await_(asyncio.sleep(0, 'a'))") == "a"
        assert cell("asyncio.run(asyncio.sleep(0, 'b'))") == "b"
        assert cell("await asyncio.sleep(0, 'c')") == "c"
        assert cell("1/0") == "ZeroDivisionError"
        cell("%autoawait off")
        assert cell("greenportal.has_portal()") is False       # no loop runs the cell
        cell("%autoawait on")
        assert cell("greenportal.has_portal()") is True

        # Shell attributes someone set before loading come back on unloading.
        cell("%unload_ext greenportal")
        assert not {"should_run_async", "run_cell_async"} & vars(shell).keys()
        assert loop.get_task_factory() is None
        mine = shell.should_run_async
        shell.should_run_async = mine
        greenportal.load_ipython_extension(shell)
        assert shell.should_run_async is not mine
        greenportal.unload_ipython_extension(shell)
        assert vars(shell)["should_run_async"] is mine
        assert cell("greenportal.has_portal()") is False
        print("ok")
        """
    )
    result = run_python("-c", code, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok"), result.stdout
