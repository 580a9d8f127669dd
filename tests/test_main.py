"""``python -m greenportal``: the installation report, in a child interpreter."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import greenportal


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenportal", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def python_c(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a child interpreter, with *env* (default: ours)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_speedups_is_public_and_matches_the_implementation_in_use() -> None:
    from greenportal import _portal

    assert isinstance(greenportal.SPEEDUPS, bool)
    assert greenportal.SPEEDUPS is _portal.SPEEDUPS
    assert "SPEEDUPS" in greenportal.__all__


def test_report_names_version_accelerator_python_and_libraries() -> None:
    out = run()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"greenportal {greenportal.__version__} (")
    accelerator = lines[1]
    if greenportal.SPEEDUPS:
        assert accelerator.startswith("accelerator: compiled (")
        assert "_speedups" in accelerator
    else:
        assert accelerator.startswith("accelerator: pure Python (")
    assert f"{platform.python_implementation()} {platform.python_version()}" in lines[2]
    import greenlet

    assert lines[3] == f"greenlet: {greenlet.__version__}"
    assert lines[4].startswith("event loops: asyncio (standard library), uvloop ")
    assert "trio " in lines[4] and "anyio " in lines[4]
    assert lines[5].startswith("integrations' libraries: aiohttp ")
    # nothing of the libraries it names was imported to find their versions
    probe = python_c(
        "import sys, greenportal.__main__ as m; m.report(); "
        "print(sorted({'uvloop', 'trio', 'fastapi', 'IPython'} & set(sys.modules)))"
    )
    assert probe.stdout.strip() == "[]", probe.stderr


def test_report_says_why_pure_python_runs() -> None:
    out = run(GREENPORTAL_PURE_PYTHON="1")
    assert out.returncode == 0, out.stderr
    assert "accelerator: pure Python (GREENPORTAL_PURE_PYTHON is set)" in out.stdout


def test_bad_argument_is_a_usage_error() -> None:
    out = run("--bogus")
    assert out.returncode == 2
    assert "usage: python -m greenportal" in out.stderr
    assert "unrecognized arguments: --bogus" in out.stderr


def test_report_says_why_the_extension_did_not_import() -> None:
    code = (
        "import sys, runpy; sys.modules['greenportal._speedups'] = None; "
        "runpy.run_module('greenportal', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "GREENPORTAL_PURE_PYTHON"}
    out = python_c(code, env)
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert line.startswith("accelerator: pure Python (the extension did not import: "), line
    assert "build it)" in line


@pytest.mark.skipif(
    not os.environ.get("GREENPORTAL_TEST_INSTALLED"), reason="set when testing a built wheel"
)
def test_the_installed_wheel_is_the_copy_under_test() -> None:
    """scripts/build.py --test-venv: not the source tree's greenportal."""
    source = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    assert not os.path.abspath(greenportal.__file__).startswith(os.path.abspath(source))
    assert "site-packages" in greenportal.__file__
    assert greenportal.SPEEDUPS
    import importlib.resources

    files = importlib.resources.files("greenportal")
    assert (files / "py.typed").is_file()
    assert not (files / "_speedups.c").is_file()  # wheels carry no C source
