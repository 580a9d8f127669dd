#!/usr/bin/env python3
"""Run greenportal's reliability tests (issue 6), at full volume if asked.

Usage::

    python3 scripts/reliability.py [--full] [--python PATH] [--no-hostile] [--jobs N]
                                   [--sanitize] [--refleak] [--short]
                                   [--debug-python PATH] [-- PYTEST_ARGS...]

Without ``--full`` this runs the default slice of ``tests/reliability``, the
same one the ordinary suite runs (well under two minutes).

With ``--full`` it runs:

1. ``tests/reliability`` at full volume (``GREENPORTAL_RELIABILITY=full``):
   thousands of generated programs per backend, 100,000 portal tasks
   suspended at once, 1,000,000 ``await_`` calls in one task, 50 threads x
   10,000 ``Runner.run`` calls, SIGINT at 1,000 random moments per backend,
   and so on (see docs/reliability.rst).  Its figures are printed at the
   end of that step.
2. the whole suite under each hostile setting, unless ``--no-hostile``:
   ``python -O``, ``python -X dev``, ``PYTHONASYNCIODEBUG=1`` and
   ``python -W error`` (warnings are errors from the interpreter's start,
   not only once pytest has read its configuration).  ``--jobs N`` runs
   these with ``pytest -n N`` (needs pytest-xdist in the interpreter).

Memory-safety checks of the compiled layer (``greenportal._speedups``).
Either flag runs only its own check, unless ``--full`` is given too;
``--short`` selects each one's CI slice (a minute or two on two cores):

``--sanitize``
    Copies ``src/greenportal`` to ``build/sanitize/tree`` (the normal build
    that the other venvs use is not touched) and compiles ``_speedups.c``
    there with gcc ``-fsanitize=address,undefined -fno-omit-frame-pointer
    --param=asan-stack=0 -g -O1``: heap checks only, since greenlet copies C
    stacks, which ASan's stack instrumentation misreads.  A canary first
    proves that a heap overflow and a signed overflow are reported and fail
    the run.  Then pytest runs with libasan and libubsan (``gcc
    -print-file-name``) in ``LD_PRELOAD``, ``PYTHONPATH`` on the copy,
    ``PYTHONMALLOC=malloc`` (so that every Python object is a heap block that
    ASan watches, rather than a slice of a pymalloc arena),
    ``GREENPORTAL_REQUIRE_SPEEDUPS=1``, ``ASAN_OPTIONS=detect_leaks=0:...``
    (CPython's allocations at exit are noise) and
    ``UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1``.  The reports go to
    ``build/sanitize/logs``, child interpreters' included, and any report
    fails the step.  A probe plugin checks that the pytest process loaded
    the sanitized ``_speedups`` and prints its ``__file__``.  With
    ``--short``: the core tests (await, api, lifetime, speedups, cancel,
    context and nesting, ctask; a file that is missing is reported and
    skipped).  Without: the whole suite, ``tests/reliability`` at default
    volume included, except the tests that need a PostgreSQL server (the
    server would run with the sanitizer runtimes preloaded too, and it
    exercises no greenportal C code) and the three resident-set checks of
    ``tests/reliability/test_scale.py`` (ASan's quarantine of freed blocks
    makes RSS grow by design).  Interpreter: ``.venv-reliability`` or
    ``--python``.

``--refleak``
    A reference-leak hunt in the manner of CPython's ``regrtest -R`` on a
    debug build (``/usr/bin/python3.11d`` or ``--debug-python``; installed
    with apt-get when missing and running as root, otherwise the step is
    reported as SKIP with what to install).  ``.venv-refleak`` gets greenlet
    compiled from source against the debug headers (a release build would
    move the total reference count on every switch) and Trio;
    ``_speedups`` is compiled for the debug interpreter into
    ``build/refleak/tree``.  ``scripts/refleak_workloads.py`` then runs, with
    the compiled build and with ``GREENPORTAL_PURE_PYTHON=1`` (the two in
    parallel): each workload of greenportal's public API against a
    native-async twin, warm-up rounds, then measured rounds reading
    ``sys.gettotalrefcount()`` and ``sys.getallocatedblocks()`` after a
    collection.  A workload leaks when its growth exceeds its twin's in every
    measured round.  ``--short``: 3 warm-ups + 4 rounds of 300 iterations;
    without: 5 + 8 rounds of 1,000.

The interpreter: ``--python PATH`` uses that one as it is (it must already
have the ``test`` dependency group installed); otherwise the script creates or reuses
``.venv-reliability`` in the repository root from the ``python3`` running
it and installs ``-e . --group test`` into it.  Standard library only.  A summary
table and a closing line follow; the exit status is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-reliability"
REFLEAK_VENV = ROOT / ".venv-refleak"
BUILD = ROOT / "build"
STEP_TIMEOUT = 3 * 60 * 60  # the full volume takes tens of minutes on two cores
INSTALL_TIMEOUT = 20 * 60

SANITIZE_CFLAGS = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "--param=asan-stack=0",
    "-g",
    "-O1",
]
# The short slice: the tests that drive the compiled hot path hardest.
CORE_TESTS = [
    "await",
    "api",
    "lifetime",
    "speedups",
    "cancel",
    "context_and_nesting",
    "ctask",
    "sqlalchemy",  # tests/test_sqlalchemy.py: the waits the hub drives, the provider
]
# Deselected from the full sanitizer run: they start a PostgreSQL server,
# which would inherit LD_PRELOAD and run with the sanitizer runtimes itself;
# they exercise no C code of greenportal's that the rest does not.
NEEDS_POSTGRES = ["tests/test_pgcluster.py"]
NEEDS_POSTGRES_K = "not postgres and not asyncpg and not pgcluster"
# Also deselected there: tests/reliability/test_scale.py's resident-set checks.
# ASan keeps freed blocks in quarantine and pads each with redzones, so the
# process's RSS grows by hundreds of MiB by design (their object, greenlet and
# task counts stayed flat under ASan; only the RSS assertion failed).
RSS_CHECKS_K = (
    "not test_many_tasks_suspended_in_await_then_released"
    " and not test_many_awaits_in_one_task and not test_many_threads_calling_runner_run"
)
# Any of these in a sanitizer log is a report (the rest are warnings).
REPORT_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "Sanitizer:DEADLYSIGNAL",
    "runtime error:",
    "SUMMARY: UndefinedBehaviorSanitizer",
    "SUMMARY: AddressSanitizer",
)
DEBUG_PACKAGES = "python3.11-dbg python3.11-dev python3.11-venv"

Results = list[tuple[str, str, float]]
Row = dict[str, Any]  # one workload's record from refleak_workloads.py


class StepFailed(Exception):
    """A check failed (or could not be set up); the message says why."""


class StepSkipped(Exception):
    """A check cannot run here; the message says what it needs."""


def say(text: str = "") -> None:
    print(text, flush=True)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def prepare_venv() -> str:
    """Create or reuse .venv-reliability with ``-e . --group test``; return its python."""
    python = venv_python(VENV)
    if not python.exists():
        say(f"creating {VENV.name} with {sys.executable}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    else:
        say(f"reusing {VENV.name}")
    # --group needs pip 25.1 or later.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", str(ROOT), "--group", "test"],
        check=True,
        cwd=ROOT,
    )
    return str(python)


def run_step(
    results: Results,
    name: str,
    cmd: list[str],
    env: dict[str, str] | None = None,
) -> None:
    say()
    say(f"=== {name}")
    say("$ " + " ".join(cmd))
    start = time.monotonic()
    try:
        rc = subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=STEP_TIMEOUT, check=False
        ).returncode
        status = "PASS" if rc == 0 else f"FAIL ({rc})"
    except subprocess.TimeoutExpired:
        status = "FAIL (timeout)"
    results.append((name, status, time.monotonic() - start))


def check_step(results: Results, name: str, body: Callable[[], None]) -> None:
    """Run *body*, a check that raises StepFailed or StepSkipped."""
    say()
    say(f"=== {name}")
    start = time.monotonic()
    try:
        body()
        status = "PASS"
    except StepSkipped as why:
        status = "SKIP"
        say(f"SKIPPED: {why}")
    except (StepFailed, OSError, subprocess.SubprocessError) as why:
        status = "FAIL"
        say(f"FAILED: {why}")
    seconds = time.monotonic() - start
    say(f"--- {name}: {status} in {seconds:.1f} s")
    results.append((name, status, seconds))


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpus} CPUs {model}".strip()


# Where the "is the accelerator active" flag lives (the module is being renamed).
SPEEDUPS_FLAG = (
    "import importlib\n"
    "def speedups():\n"
    "    for name in ('greenportal', 'greenportal._accel', 'greenportal._portal'):\n"
    "        try:\n"
    "            flag = getattr(importlib.import_module(name), 'SPEEDUPS', None)\n"
    "        except ImportError:\n"
    "            continue\n"
    "        if flag is not None:\n"
    "            return bool(flag)\n"
    "    return None\n"
)


def describe(python: str, env: dict[str, str] | None = None) -> str:
    code = (
        SPEEDUPS_FLAG + "import sys\n"
        "flag = speedups()\n"
        "print(sys.version.split()[0], {True: 'speedups', False: 'pure Python'}.get(flag, '?'))\n"
    )
    done = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"greenportal does not import: {last}"
    return done.stdout.strip()


# ---- building a private copy of the package --------------------------------


def interpreter_info(python: str) -> dict[str, str]:
    code = (
        "import json, sys, sysconfig\n"
        "p = sysconfig.get_paths()\n"
        "print(json.dumps({'include': p['include'], 'platinclude': p['platinclude'],\n"
        "    'suffix': sysconfig.get_config_var('EXT_SUFFIX'), 'version': sys.version}))\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    info: dict[str, str] = json.loads(out.stdout)
    return info


def copy_package(tree: Path) -> Path:
    """A fresh copy of src/greenportal under *tree*, without built extensions."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    shutil.copytree(
        ROOT / "src" / "greenportal",
        tree / "greenportal",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.o"),
    )
    return tree


def compile_speedups(
    python: str, tree: Path, cache: Path, cflags: list[str], compiler: str = "gcc"
) -> Path:
    """Compile the copy's _speedups.c next to it; reuse a cached build of the same input."""
    sources = sorted((tree / "greenportal").rglob("_speedups.c"))
    if len(sources) != 1:
        raise StepFailed(f"expected one _speedups.c under src/greenportal, found {len(sources)}")
    source = sources[0]
    info = interpreter_info(python)
    target = source.with_name("_speedups" + info["suffix"])
    includes = sorted({info["include"], info["platinclude"]})
    cmd = [compiler, "-shared", "-fPIC", *cflags, *(f"-I{d}" for d in includes)]
    key = hashlib.sha256(
        "\0".join([*cmd, info["version"], info["suffix"]]).encode() + source.read_bytes()
    ).hexdigest()[:16]
    cached = cache / f"{key}{info['suffix']}"
    if cached.exists():
        say(f"reusing the cached build {cached.relative_to(ROOT)}")
    else:
        cache.mkdir(parents=True, exist_ok=True)
        cmd += [str(source), "-o", str(cached)]
        say("$ " + " ".join(cmd))
        done = subprocess.run(cmd, check=False)
        if done.returncode:
            cached.unlink(missing_ok=True)
            raise StepFailed(f"compiling {source.name} failed (exit {done.returncode})")
    shutil.copy2(cached, target)
    return target


# ---- --sanitize -----------------------------------------------------------------


CANARY_C = r"""
#include <limits.h>
#include <stdlib.h>
int gp_heap_overflow(int i) {
    volatile size_t size = 8; /* hides the size from UBSan's object-size check */
    char *p = malloc(size);
    volatile int at = i;
    p[at] = 1;
    int r = p[0];
    free(p);
    return r;
}
int gp_signed_overflow(int n) {
    volatile int x = INT_MAX;
    return x + n;
}
"""

PROBE_PLUGIN = (
    SPEEDUPS_FLAG
    + """
import json, os, sys


def _record(when):
    module = sys.modules.get("greenportal._speedups")
    entry = {"when": when, "file": getattr(module, "__file__", None), "speedups": speedups()}
    with open(os.environ["GREENPORTAL_SANITIZE_PROBE"], "a") as f:
        f.write(json.dumps(entry) + "\\n")


def pytest_configure(config):
    _record("configure")


def pytest_unconfigure(config):
    _record("unconfigure")
"""
)


def runtime_library(name: str) -> str:
    out = subprocess.run(
        ["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=False
    )
    path = out.stdout.strip()
    if out.returncode or not os.path.isabs(path) or not os.path.exists(path):
        raise StepFailed(f"gcc does not know {name} (install gcc's libasan and libubsan)")
    return os.path.realpath(path)


def sanitizer_env(logs: Path) -> dict[str, str]:
    if shutil.which("gcc") is None:
        raise StepFailed("gcc not found: the sanitizer build needs gcc (apt-get install gcc)")
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    preload = [runtime_library("libasan.so"), runtime_library("libubsan.so")]
    asan = [
        "detect_leaks=0",
        "abort_on_error=1",
        "halt_on_error=1",
        "handle_abort=1",
        f"log_path={logs / 'asan'}",
    ]
    ubsan = ["print_stacktrace=1", "halt_on_error=1", f"log_path={logs / 'ubsan'}"]
    return {
        "LD_PRELOAD": " ".join(preload),
        "ASAN_OPTIONS": ":".join(asan),
        "UBSAN_OPTIONS": ":".join(ubsan),
        "PYTHONMALLOC": "malloc",
    }


def sanitizer_reports(logs: Path) -> list[tuple[Path, str]]:
    """(log, text) of every sanitizer log in *logs* that holds a report."""
    found = []
    for log in sorted(logs.glob("*")):
        text = log.read_text(errors="replace")
        if any(marker in text for marker in REPORT_MARKERS):
            found.append((log, text))
        elif text.strip():
            say(f"note: sanitizer warnings in {log.name}:")
            say(text.strip()[:2000])
    return found


def sanitize_canary(python: str, work: Path) -> None:
    """A deliberate heap overflow and signed overflow must be reported, and fail."""
    source = work / "canary.c"
    source.write_text(CANARY_C)
    lib = work / "canary.so"
    cmd = ["gcc", "-shared", "-fPIC", *SANITIZE_CFLAGS, str(source), "-o", str(lib)]
    if subprocess.run(cmd, check=False).returncode:
        raise StepFailed("compiling the sanitizer canary failed")
    for function, expected in (
        ("gp_heap_overflow(8)", "heap-buffer-overflow"),
        ("gp_signed_overflow(1)", "signed integer overflow"),
    ):
        logs = work / "canary-logs"
        env = {**os.environ, **sanitizer_env(logs)}
        code = f"import ctypes; ctypes.CDLL({str(lib)!r}).{function}"
        done = subprocess.run(
            [python, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        text = "".join(t for _, t in sanitizer_reports(logs)) + done.stderr
        if done.returncode == 0 or expected not in text:
            raise StepFailed(
                f"the sanitizer canary {function} was not caught (exit {done.returncode}); "
                f"output: {text[-2000:]}"
            )
        say(f"canary {function}: caught ({expected}, exit {done.returncode})")


def core_test_files() -> list[str]:
    files: list[str] = []
    for stem in CORE_TESTS:
        direct = ROOT / "tests" / f"test_{stem}.py"
        found = [direct] if direct.exists() else sorted(ROOT.glob(f"tests/**/test_{stem}*.py"))
        if not found:
            say(f"note: no tests/test_{stem}.py (moved or renamed?): skipping it")
        for path in found:
            name = str(path.relative_to(ROOT))
            if name not in files:
                files.append(name)
    return files


def check_loaded(target: Path, python: str, env: dict[str, str]) -> None:
    """Before pytest: the sanitized _speedups is the one that loads, and is active."""
    code = SPEEDUPS_FLAG + (
        "import greenportal._speedups as s\nprint(s.__file__)\nprint(speedups())\n"
    )
    done = subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    lines = done.stdout.split()
    if done.returncode or len(lines) != 2:
        raise StepFailed(f"importing the sanitized build failed: {done.stderr.strip()[-2000:]}")
    say(f"sanitized _speedups: {lines[0]} (active: {lines[1]})")
    if Path(lines[0]).resolve() != target.resolve() or lines[1] != "True":
        raise StepFailed(f"expected {target} to be loaded and active")


def check_probe(target: Path, probe: Path) -> str | None:
    """After pytest: what the probe plugin saw in the pytest process."""
    seen = [json.loads(line) for line in probe.read_text().splitlines()] if probe.exists() else []
    loaded = sorted({str(entry["file"]) for entry in seen})
    say(f"_speedups in the pytest process: {', '.join(loaded) or 'no probe record'}")
    expected = target.resolve()
    for entry in seen:
        if entry["file"] is None or Path(entry["file"]).resolve() != expected:
            break
        if not entry["speedups"]:
            break
    else:
        if seen:
            return None
    return f"the pytest process did not run on the sanitized {target.name}"


def sanitize(python: str, short: bool, pytest_args: list[str]) -> None:
    work = BUILD / "sanitize"
    tree = copy_package(work / "tree")
    target = compile_speedups(python, tree, work / "cache", SANITIZE_CFLAGS)
    (tree / "_greenportal_sanitize_probe.py").write_text(PROBE_PLUGIN)
    if b"__asan_report" not in target.read_bytes():
        raise StepFailed(f"{target} has no ASan instrumentation")
    sanitize_canary(python, work)

    logs = work / "logs"
    probe = work / "probe.jsonl"
    probe.unlink(missing_ok=True)
    extra = {
        **sanitizer_env(logs),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
        "GREENPORTAL_REQUIRE_SPEEDUPS": "1",
        "GREENPORTAL_RELIABILITY": "default",
        "GREENPORTAL_SANITIZE_PROBE": str(probe),
    }
    env = {k: v for k, v in os.environ.items() if k != "GREENPORTAL_PURE_PYTHON"}
    env.update(extra)
    check_loaded(target, python, env)

    if short:
        selection = core_test_files()
        if not selection:
            raise StepFailed("none of the core test files exists")
    else:
        keyword = f"{NEEDS_POSTGRES_K} and {RSS_CHECKS_K}"
        selection = ["tests", *(f"--ignore={f}" for f in NEEDS_POSTGRES), "-k", keyword]
        say(f"excluded (need a PostgreSQL server): {NEEDS_POSTGRES}, -k {NEEDS_POSTGRES_K!r}")
        say(f"excluded (RSS checks, which ASan's quarantine defeats): -k {RSS_CHECKS_K!r}")
    probe_plugin = ["-p", "_greenportal_sanitize_probe"]
    cmd = [python, "-m", "pytest", "-q", "-p", "no:xdist", *probe_plugin, "--timeout=600"]
    cmd += [*selection, *pytest_args]
    say("$ " + " ".join(f"{k}={v}" for k, v in extra.items()))
    say("  " + " ".join(cmd))
    try:
        rc: int | None = subprocess.run(
            cmd, cwd=ROOT, env=env, timeout=STEP_TIMEOUT, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        rc = None
    problems = []
    reports = sanitizer_reports(logs)
    for log, text in reports:
        say(f"--- sanitizer report {log.relative_to(ROOT)}:")
        say(text.rstrip())
    if reports:
        problems.append(f"{len(reports)} sanitizer report(s) in {logs.relative_to(ROOT)}")
    wrong = check_probe(target, probe)
    if wrong:
        problems.append(wrong)
    if rc is None:
        problems.append("pytest timed out")
    elif rc != 0:
        problems.append(f"pytest exited {rc}" + (" (killed by a signal)" if rc < 0 else ""))
    if problems:
        raise StepFailed("; ".join(problems))


# ---- --refleak ----------------------------------------------------------------


def find_debug_python(explicit: str | None) -> str:
    if explicit:
        if not Path(explicit).exists():
            raise StepFailed(f"--debug-python {explicit} does not exist")
        return explicit
    for path in (shutil.which("python3.11d"), "/usr/bin/python3.11d"):
        if path and Path(path).exists():
            return path
    what = f"apt-get install -y {DEBUG_PACKAGES}"
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root or shutil.which("apt-get") is None:
        raise StepSkipped(
            f"no debug CPython (python3.11d): install it with `{what}` as root "
            "(or pass --debug-python PATH), then run this again"
        )
    say(f"python3.11d not found: apt-get update && {what}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *DEBUG_PACKAGES.split()]
    for cmd in (["apt-get", "update", "-q"], install):
        if subprocess.run(cmd, env=env, timeout=INSTALL_TIMEOUT, check=False).returncode:
            raise StepFailed(f"{' '.join(cmd)} failed")
    if not Path("/usr/bin/python3.11d").exists():
        raise StepFailed(f"{what} did not install /usr/bin/python3.11d")
    return "/usr/bin/python3.11d"


def prepare_refleak_venv(debug_python: str) -> str:
    """.venv-refleak: greenlet built from source for the debug ABI, and Trio."""
    python = venv_python(REFLEAK_VENV)
    if python.exists():
        say(f"reusing {REFLEAK_VENV.name}")
    else:
        say(f"creating {REFLEAK_VENV.name} with {debug_python}")
        if subprocess.run([debug_python, "-m", "venv", str(REFLEAK_VENV)], check=False).returncode:
            shutil.rmtree(REFLEAK_VENV, ignore_errors=True)
            raise StepFailed(f"{debug_python} -m venv failed (is python3.11-venv installed?)")
    suffix = interpreter_info(str(python))["suffix"]
    check = [str(python), "-c", "import greenlet._greenlet as g; print(g.__file__)"]
    done = subprocess.run(check, capture_output=True, text=True, check=False)
    if done.returncode or not done.stdout.strip().endswith(suffix):
        cmd = [str(python), "-m", "pip", "install", "-q", "--no-binary", "greenlet", "greenlet"]
        say("$ " + " ".join(cmd))
        if subprocess.run(cmd, timeout=INSTALL_TIMEOUT, check=False).returncode:
            raise StepFailed("building greenlet from source for the debug interpreter failed")
        done = subprocess.run(check, capture_output=True, text=True, check=False)
        if not done.stdout.strip().endswith(suffix):
            raise StepFailed(f"greenlet is not built for {suffix}: {done.stdout.strip()}")
    say(f"greenlet, built for the debug ABI: {done.stdout.strip()}")
    has_trio = [str(python), "-c", "import trio"]
    if subprocess.run(has_trio, capture_output=True, check=False).returncode:
        cmd = [str(python), "-m", "pip", "install", "-q", "trio"]
        say("$ " + " ".join(cmd))
        if subprocess.run(cmd, timeout=INSTALL_TIMEOUT, check=False).returncode:
            say("note: installing Trio failed; only the asyncio workloads will run")
    return str(python)


def run_workloads(
    cmd: list[str], variants: dict[str, dict[str, str]]
) -> tuple[list[Row], list[str]]:
    """Run the workloads once per variant, side by side; their rows and any problems."""
    procs = {
        name: subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, env in variants.items()
    }
    rows: list[Row] = []
    problems: list[str] = []
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            problems.append(f"{name}: timed out")
        summary = None
        for line in out.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                say(line)
                continue
            if "summary" in record:
                summary = record["summary"]
            else:
                rows.append(record)
        if proc.returncode not in (0, 1) or summary is None:
            say(err.rstrip()[-4000:])
            problems.append(f"{name}: the workloads failed to run (exit {proc.returncode})")
            continue
        if summary["implementation"] != name:
            problems.append(
                f"{name} run: the active implementation was {summary['implementation']!r}"
            )
        if not summary["trio"]:
            say(f"note ({name}): Trio is not importable; its workloads did not run")
    return rows, problems


def refleak(debug_python_arg: str | None, short: bool) -> None:
    debug_python = find_debug_python(debug_python_arg)
    python = prepare_refleak_venv(debug_python)
    work = BUILD / "refleak"
    tree = copy_package(work / "tree")
    target = compile_speedups(python, tree, work / "cache", ["-g", "-O2"])
    say(f"_speedups for the debug interpreter: {target.relative_to(ROOT)}")
    warmups, rounds, iterations = (3, 4, 300) if short else (5, 8, 1000)
    cmd = [python, str(ROOT / "scripts" / "refleak_workloads.py"), "--json"]
    cmd += ["--warmups", str(warmups), "--rounds", str(rounds), "--iterations", str(iterations)]
    base = {k: v for k, v in os.environ.items() if k != "GREENPORTAL_PURE_PYTHON"}
    base["PYTHONPATH"] = str(tree)
    variants = {
        "compiled": {**base, "GREENPORTAL_REQUIRE_SPEEDUPS": "1"},
        "pure Python": {**base, "GREENPORTAL_PURE_PYTHON": "1"},
    }
    say(f"$ PYTHONPATH={tree} [GREENPORTAL_PURE_PYTHON=1] " + " ".join(cmd))
    rows, problems = run_workloads(cmd, variants)
    print_refleak_table(rows)
    leaked = [r for r in rows if r["leaks"]]
    if leaked:
        names = ", ".join(
            f"{r['workload']} ({r['backend']}, {r['implementation']})" for r in leaked
        )
        problems.append(f"{len(leaked)} workload(s) leak: {names}")
    if not rows:
        problems.append("no workload ran")
    if problems:
        raise StepFailed("; ".join(problems))


def print_refleak_table(rows: list[Row]) -> None:
    def deltas(table: dict[str, list[int]], side: str) -> str:
        return ",".join(str(v) for v in table[side])

    header = (
        "workload",
        "backend",
        "impl",
        "refs/round: workload | twin",
        "blocks: workload | twin",
    )
    lines = [(*header, "verdict")]
    for r in rows:
        refs, blocks = r["refs"], r["blocks"]
        lines.append(
            (
                r["workload"],
                r["backend"],
                r["implementation"],
                f"{deltas(refs, 'portal')} | {deltas(refs, 'native')}",
                f"{deltas(blocks, 'portal')} | {deltas(blocks, 'native')}",
                "LEAK (" + "+".join(r["leaks"]) + ")" if r["leaks"] else "ok",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    say()
    for line in lines:
        say("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if rows:
        say(
            f"({rows[0]['iterations']} iterations a round; LEAK: the workload grew more than "
            "its twin in every measured round)"
        )


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    else:
        pytest_args = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full volume and hostile runs")
    parser.add_argument("--python", help="use this interpreter instead of .venv-reliability")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile settings")
    parser.add_argument("--jobs", type=int, default=0, help="pytest -n N for the hostile runs")
    parser.add_argument("--sanitize", action="store_true", help="tests on an ASan+UBSan build")
    parser.add_argument("--refleak", action="store_true", help="reference-leak hunt (debug build)")
    parser.add_argument("--short", action="store_true", help="CI slice of --sanitize/--refleak")
    parser.add_argument("--debug-python", help="the debug CPython for --refleak")
    args = parser.parse_args(argv)
    if args.short and not (args.sanitize or args.refleak):
        parser.error("--short applies to --sanitize and --refleak")
    reliability = args.full or not (args.sanitize or args.refleak)

    python = ""
    if reliability or args.sanitize:
        python = args.python or prepare_venv()
        say(f"python: {python} (CPython {describe(python)})")
    say(f"machine: {machine()}")

    results: Results = []
    if reliability:
        volume = "full" if args.full else "default"
        run_step(
            results,
            f"tests/reliability ({volume} volume)",
            [python, "-m", "pytest", "-q", "-p", "no:xdist", "tests/reliability", *pytest_args],
            env={"GREENPORTAL_RELIABILITY": volume},
        )
    if args.full and not args.no_hostile:
        jobs = ["-n", str(args.jobs)] if args.jobs else []
        suite = ["-m", "pytest", "-q", *jobs, *pytest_args]
        run_step(results, "whole suite: python -O", [python, "-O", *suite])
        run_step(results, "whole suite: python -X dev", [python, "-X", "dev", *suite])
        run_step(
            results,
            "whole suite: PYTHONASYNCIODEBUG=1",
            [python, *suite],
            env={"PYTHONASYNCIODEBUG": "1"},
        )
        run_step(results, "whole suite: python -W error", [python, "-W", "error", *suite])
    part = "short" if args.short else "full"
    if args.sanitize:
        name = f"sanitize: ASan+UBSan ({part})"
        check_step(results, name, lambda: sanitize(python, args.short, pytest_args))
    if args.refleak:
        name = f"refleak: debug CPython ({part})"
        check_step(results, name, lambda: refleak(args.debug_python, args.short))

    say()
    say("=== summary")
    width = max(len(name) for name, _, _ in results)
    for name, status, seconds in results:
        say(f"{name:<{width}}  {status:<14} {seconds:8.1f} s")
    failed = [name for name, status, _ in results if status not in ("PASS", "SKIP")]
    skipped = [name for name, status, _ in results if status == "SKIP"]
    passed = len(results) - len(failed) - len(skipped)
    line = f"reliability: {passed} passed, {len(failed)} failed, {len(skipped)} skipped"
    if failed:
        line += " (FAILED: " + "; ".join(failed) + ")"
    if skipped:
        line += " (SKIPPED: " + "; ".join(skipped) + ")"
    say(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
