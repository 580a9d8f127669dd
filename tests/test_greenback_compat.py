"""greenportal as a drop-in for greenback: API parity and greenback's own test suite.

greenback's tests ship inside its package.  We run them against greenportal
(``greenback`` and its private modules aliased to greenportal in a child
interpreter) and list, with reasons, the few that pin greenback's private
internals or exact wording rather than behaviour.
"""

from __future__ import annotations

import inspect
import os
import textwrap
from typing import Any

import pytest

import greenportal

from .conftest import run_python

greenback = pytest.importorskip("greenback")

# Tests of greenback's suite that cannot apply to another implementation.
NOT_APPLICABLE = {
    "test_simple": "matches greenback's error wording ('create a greenback portal')",
    "test_with_portal_run": "matches greenback's error wording",
    "test_bestow": "matches greenback's error wording",
    "test_misuse": "matches greenback's error wording",
    "test_find_ptr_in_object": "tests greenback's private ctypes helper",
    "test_portal_map_does_not_leak": "inspects greenback's private task_portals map "
    "(our equivalent: tests/test_lifetime.py)",
    "test_recursive_error": "pins greenback's own plumbing frames in the traceback; "
    "greenportal shows none (tests/test_await.py)",
    "test_uncleanable_traceback": "expects TypeError where native 'await' (and greenportal) "
    "return None: __await__ yields nothing",
    "test_awaitable": "pins greenback's own plumbing frames in the traceback",
    "test_magic": "relies on where an incidental reference cycle is collected: the child's "
    "object is kept alive by the traceback of a Cancelled that Trio's run loop still holds; "
    "greenback's (and our pure-Python) plumbing frames happen to form a cycle with it, so it "
    "dies in the main task's gc.collect(); without that cycle it dies in the run loop, as it "
    "would natively, outside any task (our own __init__/__del__ test: tests/test_adapters.py)",
    "test_exit_task_with_error": "uses trio.testing.RaisesGroup, deprecated in the Trio "
    "installed here, and the suite runs with warnings as errors",
}


def test_public_names_and_signatures_match_greenback() -> None:
    public = {n for n in dir(greenback) if not n.startswith("_")}
    missing = public - set(dir(greenportal))
    assert not missing
    for name in sorted(public):
        theirs, ours = getattr(greenback, name), getattr(greenportal, name)
        if inspect.isfunction(theirs) or inspect.isclass(theirs):
            assert callable(ours), name
            if inspect.isfunction(theirs):
                their_params = list(inspect.signature(theirs).parameters.values())
                our_params = list(inspect.signature(ours).parameters.values())
                # Callers can name every parameter but *args/**kwargs.
                assert [_shape(p) for p in their_params] == [_shape(p) for p in our_params], name


def _shape(p: inspect.Parameter) -> tuple[str, object]:
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return ("*" if p.kind in variadic else p.name, p.kind)


RUNNER = textwrap.dedent(
    """
    import sys, types
    import greenportal
    from greenportal import _backends
    # 'import greenback' (and its private modules, which its tests import
    # from) now gives greenportal.
    shim = types.ModuleType("greenback._impl")
    for name in greenportal.__all__:
        setattr(shim, name, getattr(greenportal, name))
    shim.current_task = lambda: _backends.current_backend_and_task()[1]
    sys.modules["greenback"] = greenportal
    sys.modules["greenback._impl"] = sys.modules["greenback._util"] = shim
    import pytest
    tests_dir, deselect, inifile = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.exit(pytest.main([
        "-q", "-c", inifile, "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:asyncio",
        "--import-mode=importlib", "-W", "error", "--rootdir", tests_dir, "-k", deselect, tests_dir,
    ]))
    """
)


def test_greenbacks_own_suite_passes_on_greenportal(tmp_path: Any) -> None:
    tests_dir = os.path.join(os.path.dirname(greenback.__file__), "_tests")
    if not os.path.isdir(tests_dir):
        pytest.skip("this greenback install ships no tests")
    deselect = " and ".join(f"not {name}" for name in NOT_APPLICABLE)
    # An empty configuration of its own: where the virtualenv lies inside this
    # repository, pytest would otherwise find our pyproject.toml above it.
    inifile = tmp_path / "pytest.ini"
    inifile.write_text("[pytest]\n")
    out = run_python(
        "-c", RUNNER, tests_dir, deselect, str(inifile), timeout=300, cwd=os.path.dirname(tests_dir)
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
