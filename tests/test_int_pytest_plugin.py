"""greenportal.pytest_plugin, run by pytest itself (pytester) under each async plugin.

Each test writes a small test module and runs pytest on it in a child
process, with warnings as errors and --strict-markers, then checks the
outcome counts: the marked tests must pass (they assert they have a portal
and use await_), the unmarked ones must see no portal.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.subprocess

INI = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
asyncio_default_fixture_loop_scope = function
{extra}
"""


def run(
    pytester: pytest.Pytester, source: str, *args: str, extra_ini: str = ""
) -> pytest.RunResult:
    pytester.makeini(INI.format(extra=extra_ini))
    pytester.makepyfile(test_sample=source)
    return pytester.runpytest_subprocess("-q", "-p", "no:randomly", *args, timeout=120)


def test_the_entry_point_is_registered() -> None:
    found = entry_points(group="pytest11", name="greenportal")
    assert [ep.value for ep in found] == ["greenportal.pytest_plugin"], (
        "greenportal's pytest11 entry point is not installed; run `pip install -e .`"
    )
    assert sys.modules.get("greenportal.pytest_plugin") is not None  # loaded in this run


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(extra=""))
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.greenportal(backend='asyncio'): *"])


def test_pytest_asyncio(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_asyncio")
    result = run(
        pytester,
        """
import asyncio

import pytest
import pytest_asyncio

import greenportal


def sync_layer(x):
    return greenportal.await_(asyncio.sleep(0.001, x))


@pytest_asyncio.fixture
async def answer():
    await asyncio.sleep(0)
    return 42


@pytest.mark.asyncio
@pytest.mark.greenportal
async def test_marked(answer):
    assert greenportal.has_portal()
    assert sync_layer(answer) == 42


@pytest.mark.asyncio
@pytest.mark.greenportal
@pytest.mark.parametrize("x", [1, 2])
async def test_marked_and_parametrized(x):
    assert sync_layer(x) == x


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.greenportal
async def test_module_loop():
    assert sync_layer("m") == "m"


class TestClass:
    @pytest.mark.asyncio
    @pytest.mark.greenportal
    async def test_method(self):
        assert sync_layer("method") == "method"


@pytest.mark.asyncio
async def test_unmarked_has_no_portal():
    assert not greenportal.has_portal()
    with pytest.raises(RuntimeError, match="needs a portal"):
        sync_layer(0)


@pytest.mark.asyncio
@pytest.mark.greenportal
async def test_failure_is_reported():
    sync_layer(1)
    assert False, "reported as a failure"
""",
    )
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*reported as a failure*"])


def test_pytest_asyncio_auto_mode_and_module_mark(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_asyncio")
    result = run(
        pytester,
        """
import asyncio

import pytest

import greenportal

pytestmark = pytest.mark.greenportal


async def test_auto():
    assert greenportal.await_(asyncio.sleep(0, "auto")) == "auto"


def test_sync_in_the_same_module(greenportal_runner):
    assert greenportal.await_(asyncio.sleep(0, "sync")) == "sync"
""",
        extra_ini="asyncio_mode = auto",
    )
    result.assert_outcomes(passed=2)


def test_anyio_plugin_on_asyncio_and_trio(pytester: pytest.Pytester) -> None:
    pytest.importorskip("anyio")
    backends = ["asyncio", "trio"] if _has("trio") else ["asyncio"]
    result = run(
        pytester,
        f"""
import anyio
import pytest

import greenportal


@pytest.fixture(params={backends!r})
def anyio_backend(request):
    return request.param


@pytest.fixture
async def resource():
    await anyio.sleep(0)
    return "resource"


def sync_layer(x):
    greenportal.await_(anyio.sleep(0.001))
    return x


@pytest.mark.anyio
@pytest.mark.greenportal
async def test_marked(anyio_backend, resource):
    assert greenportal.has_portal()
    assert sync_layer(resource) == "resource"
    # Tasks the test starts are not covered; with_portal_run_tree would be.
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)


@pytest.mark.anyio
async def test_unmarked(anyio_backend):
    assert not greenportal.has_portal()
""",
    )
    result.assert_outcomes(passed=2 * len(backends))


def test_pytest_trio(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_trio")
    result = run(
        pytester,
        """
import pytest
import trio

import greenportal


@pytest.fixture
async def nursery_value(nursery):
    await trio.sleep(0)
    return 7


def sync_layer(x):
    greenportal.await_(trio.sleep(0.001))
    return x


@pytest.mark.trio
@pytest.mark.greenportal
async def test_marked(nursery_value):
    assert greenportal.has_portal()
    assert sync_layer(nursery_value) == 7


@pytest.mark.trio
async def test_unmarked():
    assert not greenportal.has_portal()


@pytest.mark.greenportal(backend="trio")
def test_sync_on_a_trio_runner(greenportal_runner):
    assert greenportal_runner.backend == "trio"
    trio.lowlevel.current_task()  # we are in a Trio task
    assert sync_layer("t") == "t"
""",
    )
    result.assert_outcomes(passed=3)


def test_pytest_trio_mode(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_trio")
    result = run(
        pytester,
        """
import pytest
import trio

import greenportal

pytestmark = pytest.mark.greenportal


async def test_in_trio_mode():
    assert greenportal.await_(trio.sleep(0)) is None
""",
        extra_ini="trio_mode = true",
    )
    result.assert_outcomes(passed=1)


def test_sync_tests_share_the_runner_loop_with_fixtures(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import asyncio
import threading

import pytest

import greenportal


async def loop_and_future():
    loop = asyncio.get_running_loop()
    return loop, loop.create_future()


@pytest.fixture
def loop_bound(greenportal_runner):
    # made on the runner's loop, as a connection pool would be
    return greenportal_runner.run(loop_and_future)


@pytest.mark.greenportal
def test_sync(loop_bound):
    loop, future = loop_bound
    assert greenportal.has_portal()
    assert asyncio.get_running_loop() is loop
    assert threading.current_thread() is not threading.main_thread()
    loop.call_later(0.01, future.set_result, "resolved")
    assert greenportal.await_(future) == "resolved"


@pytest.mark.greenportal
class TestClass:
    def test_method(self):
        assert greenportal.await_(asyncio.sleep(0, "method")) == "method"


def test_unmarked_sync_test_runs_on_the_main_thread():
    assert threading.current_thread() is threading.main_thread()
    assert not greenportal.has_portal()


@pytest.mark.greenportal
def test_failure_is_reported():
    raise KeyError("from the runner thread")
""",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*KeyError*from the runner thread*"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('greenportal(backend="curio")', "backend must be 'asyncio' or 'trio'"),
        ('greenportal("trio")', "takes only the keyword argument backend"),
        ("greenportal(loop=1)", "takes only the keyword argument backend"),
    ],
)
def test_bad_marker_arguments(pytester: pytest.Pytester, marker: str, message: str) -> None:
    result = run(
        pytester,
        f"""
import pytest


@pytest.mark.{marker}
def test_x():
    pass
""",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_generator_tests_are_refused(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import pytest


@pytest.mark.greenportal
async def test_agen():
    yield
""",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*not to generator functions*"])


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_importing_greenportal_before_pytest_starts_is_fine(pytester: pytest.Pytester) -> None:
    """pytest.main() from a program that already imported greenportal: no rewrite warning."""
    pytester.makeini(INI.format(extra=""))  # filterwarnings = error
    pytester.makepyfile(test_sample="def test_ok():\n    pass\n")
    script = (
        "import sys\n"
        "import greenportal\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-W', 'error', '-p', 'no:randomly']))\n"
    )
    result = pytester.run(sys.executable, "-c", script, timeout=120)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed*"])
