"""Differential testing: a random program behaves the same through await_ as written natively.

Hypothesis generates small programs as data: trees of functions marked
"sync" or "async" whose statements record events, hit checkpoints, raise,
catch, run ``finally`` blocks, set and read a context variable, call other
functions, open nested portals, start child tasks in a nursery / TaskGroup,
and open cancel scopes or timeouts that fire after a chosen number of
checkpoints.  :class:`Interp` runs each program twice on the same backend:

* *portal*: a "sync" function is a plain Python function; it reaches async
  code only through ``greenportal.await_``, async code calls it directly
  (its task has a portal), and nested portals go through
  ``with_portal_run`` / ``with_portal_run_sync``;
* *native*: every function is run as ``async def`` with ``await``, and no
  greenportal code runs at all.

Both runs write a trace: every event, checkpoint, exception (type and
message) seen unwinding or caught, context variable value, return value and
scope outcome, in order.  The traces must be identical.

Cancellation is deterministic: a scope fires when the program's checkpoint
counter reaches a chosen value, with no clock involved (trio: ``cancel()``
or an expired deadline; asyncio: ``task.cancel()``, or ``asyncio.timeout``
rescheduled into the past on 3.11+).  Trio's scheduler is made
deterministic by seeding its shuffle before each run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from greenportal import async_context, await_, ensure_portal, with_portal_run, with_portal_run_sync

from ..conftest import CONFIGS, Backend
from ._support import count, volume

# A program is a Func: (kind, label, statements), kind "sync" or "async".
# Statements:
#   ("ev", n)                       record an event
#   ("cp",)                         a checkpoint (may fire scopes, then yields)
#   ("raise", n)                    raise Boom("b<n>")
#   ("set", n) / ("get",)           set / record the context variable
#   ("call", func)                  call a function (sync->async: await_)
#   ("portal", func)                call through a nested inline portal
#   ("try", body, catch, finally)   try/except Boom (if catch)/finally
#   ("scope", kind, k, body)        "cancel" or "timeout", fires at checkpoint +k
#   ("nursery", children, body)     children: ((func, "inline"|"ensure"), ...)
Func = tuple[str, int, tuple[Any, ...]]

var: contextvars.ContextVar[int] = contextvars.ContextVar("reliability_var", default=-1)


class Boom(Exception):
    pass


def describe(exc: BaseException) -> Any:
    """Type, message and sub-exceptions: what the two runs must agree on.

    Addresses are blanked: Trio's Cancelled names the cancelling task, whose
    repr differs between the runs.
    """
    subs = getattr(exc, "exceptions", None)
    if subs is not None:
        return (type(exc).__name__, tuple(describe(e) for e in subs))
    return (type(exc).__name__, re.sub(r" at 0x[0-9a-f]+", "", str(exc)))


# --- backends: checkpoints, scopes and nurseries -----------------------------


class Scope:
    """A cancel scope or timeout that :meth:`Interp.tick` fires at *target*."""

    is_async = False
    cm: Any

    def __init__(self, target: int) -> None:
        self.target = target
        self.fired = False

    def fire(self) -> None:
        raise NotImplementedError

    def swallow(self, exc: BaseException) -> bool:
        """Is *exc*, leaving the scope's ``with``, the scope's own timeout?"""
        return False

    def outcome(self) -> Any:
        return self.fired


class TrioScope(Scope):
    def __init__(self, target: int, deadline: bool) -> None:
        import trio

        super().__init__(target)
        self.cm = trio.CancelScope()
        self.deadline = deadline

    def fire(self) -> None:
        self.fired = True
        if self.deadline:
            self.cm.deadline = -math.inf
        else:
            self.cm.cancel()

    def outcome(self) -> Any:
        return (self.fired, self.cm.cancelled_caught)


class AioCancelScope(Scope):
    """``task.cancel()`` at the chosen checkpoint; the scope absorbs its CancelledError."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.cm = self

    def __enter__(self) -> AioCancelScope:
        self.task = asyncio.current_task()
        return self

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if not self.fired:
            return False
        if sys.version_info >= (3, 11):
            self.task.uncancel()
        return isinstance(exc, asyncio.CancelledError)

    def fire(self) -> None:
        self.fired = True
        self.task.cancel("scope")


class AioTimeout(Scope):
    """``asyncio.timeout`` (3.11+), rescheduled into the past when it fires."""

    is_async = True

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.cm = asyncio.timeout(None)  # type: ignore[attr-defined,unused-ignore]

    def fire(self) -> None:
        self.fired = True
        self.cm.reschedule(asyncio.get_running_loop().time() - 1)

    def swallow(self, exc: BaseException) -> bool:
        return isinstance(exc, TimeoutError) and self.cm.expired()

    def outcome(self) -> Any:
        return (self.fired, self.cm.expired())


class SimpleGroup:
    """A task group for Python 3.10: wait for every child, raise the first error."""

    async def __aenter__(self) -> SimpleGroup:
        self.tasks: list[asyncio.Task[Any]] = []
        return self

    def start_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(fn(*args)))

    async def __aexit__(self, typ: Any, exc: Any, tb: Any) -> None:
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and exc is None:
            raise errors[0]


class TaskGroupStarter:
    """asyncio.TaskGroup with trio's ``start_soon`` spelling."""

    def __init__(self) -> None:
        self.tg = asyncio.TaskGroup()  # type: ignore[attr-defined,unused-ignore]

    async def __aenter__(self) -> TaskGroupStarter:
        await self.tg.__aenter__()
        return self

    def start_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.tg.create_task(fn(*args))

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.tg.__aexit__(*exc_info)


class Flavor:
    def __init__(self, config: str) -> None:
        self.config = config
        self.trio = config == "trio"

    def checkpoint(self) -> Any:
        if self.trio:
            import trio

            return trio.lowlevel.checkpoint()
        return asyncio.sleep(0)

    def scope(self, kind: str, target: int) -> Scope:
        if self.trio:
            return TrioScope(target, deadline=kind == "timeout")
        if kind == "timeout" and sys.version_info >= (3, 11):
            return AioTimeout(target)
        return AioCancelScope(target)

    def group(self) -> Any:
        if self.trio:
            import trio

            return trio.open_nursery()
        if sys.version_info >= (3, 11):
            return TaskGroupStarter()
        return SimpleGroup()


# --- the interpreter ----------------------------------------------------------


class Interp:
    """Runs one program in one mode (``portal`` True or False), recording a trace."""

    def __init__(self, flavor: Flavor, portal: bool) -> None:
        self.flavor = flavor
        self.portal = portal
        self.trace: list[Any] = []
        self.count = 0
        self.scopes: list[Scope] = []
        self.awaits = 0

    # checkpoints ---------------------------------------------------------

    def tick(self) -> None:
        self.count += 1
        self.trace.append(("cp", self.count, var.get()))
        for scope in list(self.scopes):
            if scope.target == self.count and not scope.fired:
                scope.fire()

    def await_(self, aw: Any) -> Any:
        self.awaits += 1
        return await_(aw)

    # calls -------------------------------------------------------------------

    async def acall(self, func: Func) -> Any:
        if self.portal and func[0] == "sync":
            return self.srun(func)
        return await self.arun(func)

    def scall(self, func: Func) -> Any:
        if func[0] == "sync":
            return self.srun(func)
        return self.await_(self.arun(func))

    async def arun(self, func: Func) -> Any:
        self.trace.append(("enter", func[1], var.get()))
        await self.aexec(func[2])
        self.trace.append(("leave", func[1], var.get()))
        return (func[1], var.get())

    def srun(self, func: Func) -> Any:
        self.trace.append(("enter", func[1], var.get()))
        self.sexec(func[2])
        self.trace.append(("leave", func[1], var.get()))
        return (func[1], var.get())

    async def child(self, func: Func, how: str) -> None:
        if not self.portal:
            if how == "ensure":
                await self.flavor.checkpoint()
            result = await self.arun(func)
        elif how == "ensure":
            await ensure_portal()
            result = await self.acall(func)
        elif func[0] == "sync":
            result = await with_portal_run_sync(self.srun, func)
        else:
            result = await with_portal_run(self.arun, func)
        self.trace.append(("child-done", result))

    async def root(self, func: Func) -> None:
        if self.portal:
            await ensure_portal()
        else:
            await self.flavor.checkpoint()
        try:
            self.trace.append(("result", await self.acall(func)))
        except BaseException as exc:  # the outcome is part of the trace
            self.trace.append(("error", describe(exc)))

    # statements, async ----------------------------------------------------------

    async def aexec(self, stmts: tuple[Any, ...]) -> None:
        for stmt in stmts:
            await self.astmt(stmt)

    async def astmt(self, stmt: tuple[Any, ...]) -> None:
        op = stmt[0]
        if op == "ev":
            self.trace.append(("ev", stmt[1]))
        elif op == "cp":
            self.tick()
            await self.flavor.checkpoint()
        elif op == "raise":
            raise Boom(f"b{stmt[1]}")
        elif op == "set":
            var.set(stmt[1])
        elif op == "get":
            self.trace.append(("var", var.get()))
        elif op == "call":
            self.trace.append(("ret", await self.acall(stmt[1])))
        elif op == "portal":
            func = stmt[1]
            if not self.portal:
                result = await self.arun(func)
            elif func[0] == "sync":
                result = await with_portal_run_sync(self.srun, func)
            else:
                result = await with_portal_run(self.arun, func)
            self.trace.append(("portal-ret", result))
        elif op == "try":
            _, body, catch, final = stmt
            try:
                await self.aexec(body)
            except BaseException as exc:
                self.trace.append(("unwind", describe(exc)))
                if not (catch and type(exc) is Boom):
                    raise
                self.trace.append(("caught",))
            finally:
                await self.aexec(final)
        elif op == "scope":
            _, kind, k, body = stmt
            scope = self.flavor.scope(kind, self.count + k)
            self.scopes.append(scope)
            try:
                if scope.is_async:
                    async with scope.cm:
                        await self.aexec(body)
                else:
                    with scope.cm:
                        await self.aexec(body)
            except BaseException as exc:
                if not scope.swallow(exc):
                    raise
            finally:
                self.scopes.remove(scope)
                self.trace.append(("scope", scope.outcome()))
        elif op == "nursery":
            _, children, body = stmt
            async with self.flavor.group() as group:
                for func, how in children:
                    group.start_soon(self.child, func, how)
                await self.aexec(body)
            self.trace.append(("nursery-done",))
        else:  # pragma: no cover
            raise AssertionError(stmt)

    # statements, sync (portal mode only) ---------------------------------------

    def sexec(self, stmts: tuple[Any, ...]) -> None:
        for stmt in stmts:
            self.sstmt(stmt)

    def sstmt(self, stmt: tuple[Any, ...]) -> None:
        op = stmt[0]
        if op == "ev":
            self.trace.append(("ev", stmt[1]))
        elif op == "cp":
            self.tick()
            self.await_(self.flavor.checkpoint())
        elif op == "raise":
            raise Boom(f"b{stmt[1]}")
        elif op == "set":
            var.set(stmt[1])
        elif op == "get":
            self.trace.append(("var", var.get()))
        elif op == "call":
            self.trace.append(("ret", self.scall(stmt[1])))
        elif op == "portal":
            func = stmt[1]
            if func[0] == "sync":
                result = self.await_(with_portal_run_sync(self.srun, func))
            else:
                result = self.await_(with_portal_run(self.arun, func))
            self.trace.append(("portal-ret", result))
        elif op == "try":
            _, body, catch, final = stmt
            try:
                self.sexec(body)
            except BaseException as exc:
                self.trace.append(("unwind", describe(exc)))
                if not (catch and type(exc) is Boom):
                    raise
                self.trace.append(("caught",))
            finally:
                self.sexec(final)
        elif op == "scope":
            _, kind, k, body = stmt
            scope = self.flavor.scope(kind, self.count + k)
            self.scopes.append(scope)
            try:
                with async_context(scope.cm) if scope.is_async else scope.cm:
                    self.sexec(body)
            except BaseException as exc:
                if not scope.swallow(exc):
                    raise
            finally:
                self.scopes.remove(scope)
                self.trace.append(("scope", scope.outcome()))
        elif op == "nursery":
            _, children, body = stmt
            with async_context(self.flavor.group()) as group:
                for func, how in children:
                    group.start_soon(self.child, func, how)
                self.sexec(body)
            self.trace.append(("nursery-done",))
        else:  # pragma: no cover
            raise AssertionError(stmt)


def run_program(config: str, program: Func, portal: bool) -> tuple[list[Any], int]:
    flavor = Flavor(config)
    interp = Interp(flavor, portal)
    loop_errors: list[str] = []

    async def main() -> None:
        if not flavor.trio:
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, ctx: loop_errors.append(str(ctx.get("message")))
            )
        await interp.root(program)

    if flavor.trio:
        import trio

        # Trio shuffles each batch of runnable tasks; the same seed gives
        # both runs the same schedule.
        trio._core._run._r.seed(20261130)
    var.set(-1)
    Backend(config).run(main)
    interp.trace.append(("loop-errors", loop_errors))
    return interp.trace, interp.awaits


def check(config: str, program: Func) -> None:
    native, _ = run_program(config, program, portal=False)
    through_portal, awaits = run_program(config, program, portal=True)
    count("differential: programs run (each twice)")
    count("differential: await_ calls in portal runs", awaits)
    count("differential: trace entries compared", len(native))
    assert through_portal == native


# --- programs -------------------------------------------------------------------

# Checkpoints weigh three times as much as other leaves: they are where
# scopes fire and tasks interleave.
LEAVES = st.one_of(
    st.just(("cp",)),
    st.just(("cp",)),
    st.just(("cp",)),
    st.tuples(st.just("ev"), st.integers(0, 9)),
    st.tuples(st.just("raise"), st.integers(0, 9)),
    st.tuples(st.just("set"), st.integers(0, 9)),
    st.just(("get",)),
)


SCOPE_KINDS = ["cancel", "timeout"]


@functools.cache
def statements(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return LEAVES
    inner = functions(depth - 1)
    body = st.lists(statements(depth - 1), min_size=1, max_size=3).map(tuple)
    return st.one_of(
        LEAVES,
        st.tuples(st.just("call"), inner),
        st.tuples(st.just("portal"), inner),
        st.tuples(st.just("try"), body, st.booleans(), body),
        st.tuples(st.just("scope"), st.sampled_from(SCOPE_KINDS), st.integers(1, 3), body),
        st.tuples(
            st.just("nursery"),
            st.lists(
                st.tuples(inner, st.sampled_from(["inline", "ensure"])), min_size=1, max_size=2
            ).map(tuple),
            body,
        ),
    )


@functools.cache
def functions(depth: int) -> st.SearchStrategy[Any]:
    return st.tuples(
        st.sampled_from(["sync", "async"]),
        st.integers(0, 99),
        st.lists(statements(depth), min_size=1, max_size=5).map(tuple),
    )


def S(label: int, *stmts: Any) -> Func:
    return ("sync", label, stmts)


def A(label: int, *stmts: Any) -> Func:
    return ("async", label, stmts)


# The schedule and the scheduler's behaviour differ between backends, not
# between the two runs; pure-Python and C Tasks on asyncio, and Trio.
DIFF_CONFIGS = [c for c in ("asyncio-c", "asyncio-py", "trio") if c in CONFIGS]
if volume(0, 1):
    DIFF_CONFIGS += [c for c in ("asyncio-debug", "uvloop") if c in CONFIGS]


@pytest.mark.timeout(volume(60, 3600))
@pytest.mark.parametrize("config", DIFF_CONFIGS)
@settings(
    max_examples=volume(100, 3000),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=functions(3))
# Hand-written programs that every run checks first: each one crosses a
# different edge (sync->async, nested portals, children, scopes firing in
# sync code, a finally that checkpoints after a cancellation).
@example(program=S(1, ("cp",), ("call", A(2, ("set", 3), ("cp",))), ("get",)))
@example(
    program=A(
        1,
        ("scope", "cancel", 2, (("call", S(2, ("cp",), ("cp",), ("ev", 1))),)),
        ("get",),
    )
)
@example(
    program=S(
        1,
        ("scope", "timeout", 1, (("try", (("cp",),), False, (("cp",), ("ev", 2))),)),
        ("ev", 3),
    )
)
@example(
    program=S(
        1,
        ("set", 1),
        (
            "nursery",
            (
                (S(2, ("cp",), ("set", 2), ("get",)), "inline"),
                (A(3, ("cp",), ("raise", 3)), "ensure"),
            ),
            (("cp",), ("get",)),
        ),
    )
)
@example(
    program=A(
        1,
        ("portal", S(2, ("portal", A(3, ("cp",), ("set", 4))), ("get",))),
        ("try", (("call", S(4, ("raise", 1))),), True, (("get",),)),
    )
)
# Found by Hypothesis (a harness bug, kept as a case): Trio's Cancelled
# message names the cancelling task with its address.
@example(
    program=S(
        0,
        (
            "scope",
            "cancel",
            1,
            (("try", (("try", (("set", 6),), True, (("cp",),)),), True, (("cp",), ("set", 2))),),
        ),
    )
)
def test_portal_run_matches_native_run(config: str, program: Func) -> None:
    check(config, program)
