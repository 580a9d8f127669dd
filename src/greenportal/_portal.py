"""The portal: a greenlet that lets synchronous code suspend an async task.

How it works
------------
A *portal* (:class:`Portal`) stands in for a task's coroutine.  The event loop
steps the task by calling ``portal.send(value)`` or ``portal.throw(exc)``,
exactly as it would step the coroutine.  The portal forwards each step into
its own greenlet, the *portal greenlet*, where the original coroutine is
driven with ``coro.send`` and ``coro.throw``.  Everything the task does,
async frames and sync frames alike, therefore runs on the portal greenlet.

When the coroutine yields a trap (an asyncio Future, a Trio
``WaitTaskRescheduled``...), the portal greenlet hands it to the greenlet
that called ``send`` (the *hub*, normally the one running the event loop)
and suspends.  When plain synchronous code calls :func:`await_`, it drives
the awaitable right there on the portal greenlet: each trap the awaitable
yields goes to the hub the same way, so the task is suspended with the sync
frames intact while every other task keeps running.  One trap costs one
greenlet switch pair, whoever yields it.

Designs we rejected
-------------------
* *Let the hub await natively* (SQLAlchemy's bridge) for every ``await_``:
  ``await_`` switches to the hub with the awaitable and the hub runs it with
  a real ``await``.  That crosses greenlets once per ``await_`` instead of
  once per trap, but the awaitable's frames then run on the hub, and if they
  call sync code that calls ``await_`` again there is no greenlet left to
  suspend.  Nested ``await_`` is part of our contract, so ``await_`` drives
  its awaitable on the portal greenlet.  The hub does drive the awaitables
  that SQLAlchemy's own code hands it (next section), where nesting never
  worked in SQLAlchemy either.
* *A native coroutine as the shim* (greenback): its first ``send`` must be
  ``None``, so it has to be pre-stepped, and every step pays a coroutine
  resume on top of the switch.  A small class with a Python ``send`` costs
  one call.
* *Passing the trap as the argument of the switch.*  The argument would stay
  referenced from the suspended portal greenlet's value stack, and the
  cycle collector cannot see inside a suspended greenlet: a task collected
  while suspended would leak with its greenlet.  So the trap travels through
  ``Portal._trap``, and while the portal greenlet is suspended it holds only
  a weak reference to its portal (see "Ownership" below).

Awaits the hub drives
---------------------
SQLAlchemy waits with ``getcurrent().parent.switch(awaitable)``: from a
portal greenlet that switch reaches the hub inside ``send`` (or ``throw``),
bringing an awaitable where one of our markers belongs.  ``send`` then steps
that awaitable itself (``Portal._native``), trap by trap, as an ``await``
in the task would, and when it ends resumes the portal greenlet with the
result or throws the exception in, where the switch waits.  One switch pair
per wait and none per trap: what SQLAlchemy's ``greenlet_spawn`` costs.
Cancellation is thrown into the awaitable; ``close`` unwinds it, then the
sync frames.  Sync code called from inside such an awaitable runs on the
hub and cannot wait: its ``await_`` raises a ``RuntimeError`` that says so
(``_dispatch.native_portal_here`` finds out why, on that error's path only: marking
each step cost as much as the step).  Only ``greenportal.sqlalchemy``
sends waits this way (it decides which; see its docstring); any other
value is a stray switch, an error.  In the compiled build a coroutine
handed over is driven in C (``native_send``): no Python call per wait or
per trap; exceptions, ``throw`` and other awaitables take the Python path
(``_await_natively``, ``_native_step``, ``_native_resume``), shared by
both builds.

Ownership (the invariant that makes collection work)
----------------------------------------------------
``task -> portal -> {coroutine, current awaitable, portal greenlet}`` are
strong references the collector can see.  The portal greenlet, while
suspended, references its portal only weakly and holds no trap, coroutine or
awaitable of its own.  So an abandoned task forms an ordinary, collectable
cycle; ``Portal.__del__`` then closes the portal greenlet, which unwinds the
sync frames (``finally`` blocks run) and closes the coroutine.  Sync frames
that themselves keep references to the task's futures are invisible to the
collector; such a task cannot be collected while suspended (a documented
gap, shared by every greenlet-based bridge).

Reuse
-----
A portal greenlet outlives its portal: when the job (the coroutine, or the
sync function of ``with_portal_run_sync``) ends, the greenlet reports the
outcome to the hub, clears its portal reference and context, and parks in a
per-thread pool; the next portal resumes it instead of creating a greenlet,
which on CPython 3.11+ costs several microseconds (a fresh stack is mapped).
Outcomes travel as markers plus ``Portal._result`` rather than as greenlet
return values or exceptions, which are slow to cross.  An idle greenlet
holds at most the bound ``switch`` of the last hub it served.

Two implementations of the hot path
-----------------------------------
Each step of a portal task, and each trap of an ``await_``, costs one
greenlet switch pair; in pure Python the glue around the switch cost as much
again.  So the hot path also exists in C (``_speedups.c``, an optional
extension): ``Portal``'s ``send``/``__next__``/``__await__`` (the extension
type ``PortalBase`` supplies them, with ``am_send`` so asyncio's C Task
steps it without a method call), rehoming and the greenlet pool, the job loop
(``run_job``, which also drives the coroutine), ``await_``'s loop, the portal
lookup, inline-portal setup, the finalizer and ``_ctask``'s checked write.
Everything else (``throw``, ``close``, finalization's work, introspection)
is Python, shared by both.  The Python functions below are the reference:
the C code mirrors them line for line, and each pair is named in
``_accel.TWINS``.  A reference keeps its name and is never rebound; the
sections "the implementation in use" at the end of this module and of
``_await`` pick each function once, under a name of its own (``acquire``, ``run_job``,
``drive_await``, ``await_box``, ``current_portal``, ``inline_portal_id``),
and the rest of greenportal calls those.  The suite runs on both builds on
every Python (``GREENPORTAL_PURE_PYTHON=1`` selects Python), and a missing
compiler only costs speed.  Two Python frames stay on purpose in both
builds: the portal greenlet's ``_worker`` (Trio decides whether Ctrl-C may
interrupt code by walking frames up to a marked one) and ``await_`` itself
(a Python-to-Python call moves the awaitable off the caller's stack; a C
call would leave it there, invisible to the collector, and an abandoned
suspended task could never be collected).  With both, a portal step costs
what a ten-line greenlet shim costs (``benchmarks/``); below that only a
different design could go, and every design that avoids a switch per trap
gives up nested ``await_``.

Where the engine stops
----------------------
The engine is this module (the portal, its greenlets, the job loop) and
``_await`` (``await_``'s fast path, the portal lookup, inline-portal setup).
It knows greenlets, not event loops, and imports only ``_accel``: what it
needs from the layers above is registered with ``_await`` at import: how to
find asyncio's running task (``bind_current_asyncio_task``, by the asyncio
backend), where an ``await_`` outside its portal goes
(``register_slow_path``, by ``_dispatch``) and how to find the task for an
inline portal outside asyncio (``register_inline_slow``, by ``_backends``).

Known gaps
----------
* On Python 3.10, an exception leaving the portal keeps greenportal's frames
  in its traceback: 3.10's bare ``raise`` restores the traceback that was
  current when the exception was caught, so they cannot be trimmed.
* Greenlets belong to one thread; a portal is usable only on its loop's
  thread (the event loop never steps a task elsewhere).
* While the hub drives an awaitable, the suspended portal greenlet's stack
  (SQLAlchemy's await frame) references it: a task abandoned with its loop
  in the middle of such a wait cannot be collected, as under SQLAlchemy's
  own bridge.
"""

from __future__ import annotations

import collections.abc
import threading
import types
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

import greenlet

from . import _accel

T = TypeVar("T")

getcurrent = greenlet.getcurrent

#: True when the portal's hot path runs compiled (see ``_speedups.c``).
SPEEDUPS = _accel.SPEEDUPS


_CO_ITERABLE_COROUTINE = 0x100  # inspect.CO_ITERABLE_COROUTINE
_CoroutineType = types.CoroutineType
_GeneratorType = types.GeneratorType


def _awaitable_iter(aw: object) -> Any:
    """Return the iterator that awaiting *aw* drives, or raise TypeError."""
    tp = type(aw)
    if tp is _CoroutineType:
        return aw
    if tp is _GeneratorType and aw.gi_code.co_flags & _CO_ITERABLE_COROUTINE:  # type: ignore[attr-defined]
        return aw
    get = getattr(tp, "__await__", None)
    if get is None:
        if tp is _GeneratorType:
            hint = " (a plain generator; decorate its function with @types.coroutine)"
        elif callable(aw):
            hint = " (did you mean to call it, as in await_(f()) instead of await_(f)?)"
        else:
            hint = ""
        # Native await's wording first ("object int can't be used in 'await'
        # expression"), which greenback's own error is.
        raise TypeError(
            f"object {tp.__name__} can't be used in 'await' expression: await_() needs "
            f"an awaitable, got {tp.__qualname__!r} object{hint}"
        )
    it = get(aw)
    if not isinstance(it, collections.abc.Iterator):
        raise TypeError(f"{tp.__qualname__}.__await__() returned a non-iterator")
    return it


# What a portal greenlet switches to its hub with: it parked a trap in
# Portal._trap, or its job returned or raised (the value or exception is in
# Portal._result).  Values and exceptions travel this way, not through
# greenlet's own return and exception passing, which costs microseconds.
_PARKED: Any = object()
_RETURNED: Any = object()
_RAISED: Any = object()

# Idle portal greenlets, per thread (greenlets cannot change threads).
# Creating a greenlet costs several microseconds on CPython 3.11+ (it maps a
# fresh stack); resuming a parked one costs a switch.  An idle greenlet holds
# nothing of the tasks it served (see "Ownership").
_POOL_LIMIT = 256

# How many times close() answers an await made while the job unwinds before
# giving up (and leaving the job suspended, as it did before each answer).
_CLOSE_ROUNDS = 100
_pools = threading.local()


class _Detach(BaseException):
    """Thrown into a portal greenlet to make it exit without touching its coroutine."""


class PortalGreenlet(greenlet.greenlet):
    """The greenlet on which a portal's task (or sync function) runs."""

    # A slot, not an instance dict: 10,000 suspended portals are 10,000 of
    # these, and the slot is also the faster lookup on await_'s path.
    __slots__ = ("portal_ref",)

    # Weak on purpose: see "Ownership" in the module docstring.
    portal_ref: weakref.ref[Portal]


def _strip_own_frame(exc: BaseException) -> None:
    """Drop the traceback entry that the calling greenportal frame added."""
    tb = exc.__traceback__
    if tb is not None:
        exc.__traceback__ = tb.tb_next


def _dead_ref() -> weakref.ref[Portal]:
    class _Gone:
        pass

    return weakref.ref(_Gone())  # type: ignore[arg-type]


# What an idle portal greenlet's portal_ref is: a reference that is always dead.
_NO_PORTAL: weakref.ref[Portal] = _dead_ref()


def _acquire(hub: greenlet.greenlet) -> PortalGreenlet:
    """An idle portal greenlet from this thread's pool, or a new one."""
    pool: list[PortalGreenlet] | None = getattr(_pools, "idle", None)
    while pool:
        gr = pool.pop()
        try:
            gr.parent = hub
        except ValueError:  # hub descends from gr; it cannot be its parent
            continue
        return gr
    return PortalGreenlet(_worker, hub)


def _release(gr: PortalGreenlet) -> bool:
    """Put an idle portal greenlet back in the pool, if there is room."""
    pool: list[PortalGreenlet] | None = getattr(_pools, "idle", None)
    if pool is None:
        pool = _pools.idle = []
    if len(pool) >= _POOL_LIMIT:
        return False
    pool.append(gr)
    return True


def _run_job(me: PortalGreenlet, value: Any) -> Any:
    """Run one job of the portal greenlet *me*, report it, and wait for the next.

    The job is the portal's coroutine (driven by :func:`_drive_coroutine`) or
    its sync function.  Its outcome goes to the hub as ``_RETURNED`` or
    ``_RAISED`` with the value parked in ``Portal._result``; then *me* parks
    in the pool, and the next portal to take it resumes it with its first
    value, which this returns.  If the pool is full, this returns the marker
    instead, and :func:`_worker` lets the greenlet end.  (Compiled twin:
    ``_speedups.run_job``.)
    """
    ref = me.portal_ref
    portal = ref()
    assert portal is not None  # it is sending us its first value
    fn = portal.fn
    del portal
    try:
        result = _drive_coroutine(ref, value) if fn is None else fn()
        marker = _RETURNED
    except _Detach:
        result, marker = None, _RETURNED
    except greenlet.GreenletExit:
        # Killed: our portal was dropped without being closed (finalized
        # on another thread); the coroutine is closed by its own finalizer.
        raise
    except BaseException as error:
        _strip_own_frame(error)
        result, marker = error, _RAISED
    portal = ref()
    if portal is None:
        # Our portal is being finalized (the collector clears weak
        # references first): nobody will read the outcome.
        marker = _RETURNED
    else:
        portal._result = result
    assert me.parent is not None
    switch = me.parent.switch
    # Idle from here: hold nothing of the job's (see "Ownership").
    del portal, result, fn, ref
    me.portal_ref = _NO_PORTAL
    me.gr_context = None  # drop the task's context (and what it references)
    value = None
    if not _release(me):
        return marker
    return switch(marker)


def _worker(value: Any) -> Any:
    """Body of every portal greenlet, in both builds: run jobs until the pool is full.

    It stays a Python frame on purpose: Trio decides whether Ctrl-C may
    interrupt code by walking its frames' callers, and the jobs' frames must
    find this one (marked unprotected by the Trio backend) at the bottom.
    """
    me = getcurrent()
    assert isinstance(me, PortalGreenlet)
    while True:
        value = run_job(me, value)
        if value is _RETURNED or value is _RAISED:
            return value  # the pool is full: end this greenlet


def _drive_coroutine(ref: weakref.ref[Portal], value: Any) -> Any:
    """Step a portal's coroutine until it returns (its value) or raises.

    Each iteration sends the hub's value (or throws its exception) into the
    coroutine, parks the yielded trap on the portal, and switches to the hub
    with ``_PARKED``.  ``_Detach`` thrown in ends it without touching the
    coroutine.
    """
    exc: BaseException | None = None
    while True:
        portal = ref()
        if portal is None:
            # Being finalized (see _worker): the coroutine, garbage too, is
            # closed by its own finalizer.
            return None
        coro = portal.coro
        assert coro is not None
        # The step may suspend inside await_: hold no portal meanwhile.
        del portal
        try:
            trap = coro.send(value) if exc is None else coro.throw(exc)
        except StopIteration as stop:
            return stop.value
        except BaseException as error:
            _strip_own_frame(error)
            raise
        portal = ref()
        assert portal is not None
        portal._trap = trap
        switch = portal._park
        # Hold nothing of the task's while suspended (see "Ownership").
        del portal, coro, trap
        exc = value = None
        try:
            value = switch(_PARKED)
        except (_Detach, greenlet.GreenletExit):
            raise
        except BaseException as error:
            _strip_own_frame(error)
            exc = error


class _PortalCommon:
    """What both implementations of :class:`Portal` share (all but the hot path).

    The hot path (``__init__``, ``send``, ``__next__``, ``__await__``,
    ``__iter__``) comes from ``_speedups.PortalBase`` when the extension is
    built, else from :class:`_PurePortal`; both store the fields below.
    """

    # Empty at run time: the subclasses hold the fields.  mypy is shown them
    # here, or it would read the empty tuple as "this class has no fields".
    if TYPE_CHECKING:
        __slots__ = (
            "_awaiting",
            "_gr",
            "_hub",
            "_native",
            "_park",
            "_result",
            "_switch",
            "_target",
            "_trap",
            "coro",
            "fn",
            "task_id",
        )
    else:
        __slots__ = ()

    # The coroutine this portal drives (coroutine mode), else None.
    coro: Coroutine[Any, Any, Any] | None
    # The zero-argument function this portal calls (sync mode), else None.
    fn: Callable[[], Any] | None
    # id() of the asyncio task this portal serves, checked by await_ because
    # an eager task can run its first step on another task's portal greenlet.
    # None under Trio (a task never steps inside another's greenlet) and while
    # an eager task factory is still constructing the task.
    task_id: int | None
    # The portal greenlet; None before the first step and after the job ended.
    _gr: PortalGreenlet | None
    # The greenlet that stepped us last; traps are handed to it.
    # Invariant: _gr is None or _gr.parent is _hub.
    _hub: greenlet.greenlet | None
    # _hub.switch, bound once per rehome (the portal greenlet parks with it).
    _park: Any
    # _target.switch, bound whenever _target changes (send resumes with it).
    _switch: Any
    # The greenlet to resume on the next step: None before the first step,
    # then _gr or a foreign greenlet (say SQLAlchemy's) running inside it that
    # is suspended in await_, and _FINISHED once the job has ended.
    _target: Any
    # The job's return value or exception, in transit to the hub.
    _result: Any
    # The trap in transit from the portal greenlet to the hub; None between steps.
    _trap: Any
    # The iterator that the innermost active await_ is driving, else None.
    _awaiting: Any
    # The iterator of an awaitable that the portal greenlet handed to the hub
    # with a bare switch (SQLAlchemy's await_), which the hub is driving
    # itself, else None.  Invariant: while it is set, the portal greenlet is
    # suspended in that switch, and every step goes to this iterator instead
    # (see "Awaits the hub drives" in the module docstring).
    _native: Any

    # -- stepping ----------------------------------------------------------

    def _rehome(self, hub: greenlet.greenlet) -> None:
        """Make *hub* the greenlet that receives our traps, starting if needed."""
        gr = self._gr
        if gr is None:
            if self._target is _FINISHED:
                raise RuntimeError("cannot reuse already awaited coroutine")
            gr = acquire(hub)
            gr.portal_ref = weakref.ref(cast(Portal, self))
            # The task's context, so that ContextVar.set() in the portal is the
            # task's own (greenlets otherwise run in a context of their own).
            gr.gr_context = hub.gr_context
            self._gr = gr
            self._set_target(gr)
        else:
            gr.parent = hub
        self._hub = hub
        self._park = hub.switch

    def _set_target(self, target: Any) -> None:
        self._target = target
        self._switch = target.switch

    def _finished(self, res: Any) -> BaseException:
        """The job ended (*res* says how): what a coroutine would raise now."""
        result, self._result = self._result, None
        self._gr = None
        self._set_target(_FINISHED)
        if res is _RETURNED:
            return StopIteration(result)
        assert res is _RAISED
        return result  # type: ignore[no-any-return]

    def _after_error(self, error: BaseException) -> None:
        """*error* leaves send/throw, our caller: drop that frame's traceback entry."""
        gr = self._gr
        if gr is not None and gr.dead:  # the greenlet itself died (killed)
            self._gr = None
            self._set_target(_FINISHED)
        _strip_own_frame(error)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Step the task by raising an exception at its suspension point."""
        exc = _make_exception(typ, val, tb)
        if self._target is None and self.coro is not None:
            # Never stepped: the coroutine raises at its start, like a native one.
            self._set_target(_FINISHED)
            return self.coro.throw(exc)
        if self._native is not None:
            return self._native_step(None, exc)
        if getcurrent() is not self._hub:
            self._rehome(getcurrent())
        try:
            res = self._target.throw(exc)
            if res is _PARKED:
                return self._trap
            if res is _RETURNED or res is _RAISED:
                raise self._finished(res)
            return self._await_natively(res)
        except BaseException as error:
            self._after_error(error)
            raise

    # -- awaits the hub drives (SQLAlchemy's await_) -----------------------

    def _await_natively(self, aw: Any) -> Any:
        """The portal greenlet switched to the hub with *aw*: drive it here.

        Called by ``send``/``throw`` (both builds) with what the switch
        brought that is not one of our markers.  An awaitable is SQLAlchemy's
        protocol (``getcurrent().parent.switch(awaitable)``, see
        ``greenportal.sqlalchemy``); anything else is a stray switch.
        """
        try:
            self._native = _awaitable_iter(aw)
        except TypeError:
            raise _stray_switch(aw) from None
        del aw
        return self._native_step(None)

    def _native_step(self, value: Any, exc: BaseException | None = None) -> Any:
        """Step ``_native``: its next trap, once it ends the portal greenlet's next.

        (Compiled twin, for ``send``: ``native_send`` in ``_speedups.c``.)
        """
        while True:
            try:
                if exc is None:
                    return self._native.send(value)
                return self._native.throw(exc)
            except StopIteration as stop:
                result, failed = stop.value, False
            except BaseException as error:
                _strip_own_frame(error)
                result, failed = error, True
            if self._native_resume(result, failed) is _PARKED:
                return self._trap
            value = exc = result = None

    def _native_resume(self, result: Any, failed: bool) -> Any:
        """``_native`` ended with *result*: resume the portal greenlet with it.

        Returns ``_PARKED`` when the portal greenlet parked a trap, None when
        it handed over another awaitable (now in ``_native``, to be stepped),
        or raises what the job's end makes ``send`` raise.
        """
        self._native = None
        try:
            hub = getcurrent()
            if hub is not self._hub:
                self._rehome(hub)
            gr = self._gr
            assert gr is not None  # suspended in the switch that handed us the awaitable
            res = gr.throw(result) if failed else gr.switch(result)
            del gr, result
            if res is _PARKED:
                return _PARKED
            if res is _RETURNED or res is _RAISED:
                raise self._finished(res)
            try:
                self._native = _awaitable_iter(res)
            except TypeError:
                raise _stray_switch(res) from None
            return None
        except BaseException as error:
            self._after_error(error)
            raise

    def close(self) -> None:
        """Close the portal: unwind its frames with ``GeneratorExit``."""
        if self._target is None:
            self._set_target(_FINISHED)
            if self.coro is not None:
                self.coro.close()
            return
        if self._target is _FINISHED:
            return
        if self._gr is getcurrent():
            raise ValueError("portal is already executing")
        error: BaseException = GeneratorExit()
        for _ in range(_CLOSE_ROUNDS):
            try:
                self.throw(error)
            except (GeneratorExit, StopIteration):
                return
            # The job awaited again while GeneratorExit unwound it (an await_
            # in an except or finally block).  A native await answers that
            # with RuntimeError in the awaiting frame, which then unwinds the
            # frames around it; do the same at the await that just suspended,
            # so every finally block runs now and nothing stays suspended.  If
            # the job ends with that RuntimeError, it propagates from here.
            error = RuntimeError("coroutine ignored GeneratorExit")
        raise RuntimeError("coroutine ignored GeneratorExit")

    def detach(self) -> None:
        """End the portal's job without touching the coroutine.

        Only valid once the coroutine is suspended at a trap and the task no
        longer steps this portal (see ``_tree.portals_for_tree``).
        """
        if self._gr is None:
            return
        try:
            self.throw(_Detach)
        except StopIteration:
            pass

    def _finalize(self) -> None:
        """Unwind a job still running when the portal is dropped (see "Ownership")."""
        gr = self._gr
        if gr is None or gr.dead or not gr:
            return
        try:
            self.close()
        except (greenlet.error, ValueError):
            # Finalized on another thread: greenlet kills it on its own thread.
            pass

    # -- introspection: describe the wrapped coroutine ----------------------

    @property
    def cr_frame(self) -> types.FrameType | None:
        return getattr(self.coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        """What the task waits for: while sync code of the portal waits in
        :func:`~greenportal.await_`, the awaitable being driven (the
        coroutine itself, for a coroutine), else the wrapped coroutine's own
        ``cr_await``.  So tools that walk ``cr_await`` chains, such as 3.14's
        ``asyncio.capture_call_graph()`` and ``python -m asyncio pstree``,
        walk into what ``await_`` awaits."""
        awaiting = self._awaiting
        if awaiting is None:
            awaiting = self._native
        if awaiting is not None:
            return awaiting
        return getattr(self.coro, "cr_await", None)

    @property
    def cr_code(self) -> types.CodeType | None:
        if self.coro is not None:
            return getattr(self.coro, "cr_code", None)
        return getattr(self.fn, "__code__", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self.coro, "cr_running", False))

    # asyncio's task repr and debug logs use the coroutine's __qualname__, or
    # failing that its __name__: this keeps them about the user's code.  (A
    # __qualname__ property cannot be declared in a class body, and a
    # __getattr__ would slow every attribute access on the hot path.)
    @property
    def __name__(self) -> str:
        return str(_describe(self, "__name__"))

    def __repr__(self) -> str:
        inner = self.coro if self.coro is not None else self.fn
        return f"<greenportal portal running {inner!r}>"


class _PurePortal(_PortalCommon):
    """The pure-Python hot path of :class:`Portal` (twin of ``_speedups.PortalBase``)."""

    __slots__ = (
        "__weakref__",
        "_awaiting",
        "_gr",
        "_hub",
        "_native",
        "_park",
        "_result",
        "_switch",
        "_target",
        "_trap",
        "coro",
        "fn",
        "task_id",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any] | None = None,
        fn: Callable[[], Any] | None = None,
        task_id: int | None = None,
    ) -> None:
        self.coro = coro
        self.fn = fn
        self.task_id = task_id
        self._gr = self._hub = self._target = None
        self._trap = self._awaiting = self._park = self._switch = self._result = None
        self._native = None

    def send(self, value: Any = None) -> Any:
        """Step the task: resume it with *value* and return the next trap."""
        if self._native is not None:
            return self._native_step(value)
        if getcurrent() is not self._hub:
            self._rehome(getcurrent())
        try:
            res = self._switch(value)
            if res is _PARKED:
                # Left in place until the next step overwrites it: _trap is in
                # plain sight of the cycle collector, unlike the greenlet's stack.
                return self._trap
            if res is _RETURNED or res is _RAISED:
                raise self._finished(res)
            return self._await_natively(res)
        except BaseException as error:
            self._after_error(error)
            raise

    def __await__(self) -> _PurePortal:
        return self

    # (The compiled twin is PortalBase's tp_finalize: a Python __del__ would
    # cost a call for every portal that dies.)
    def __del__(self) -> None:
        # (getattr: __init__ may have failed before setting the fields.)
        if getattr(self, "_gr", None) is not None:
            self._finalize()

    def __iter__(self) -> _PurePortal:
        return self

    # Awaiting a portal inline steps it with None each time.
    __next__ = send


_PortalBase: Any = _accel.pick("PortalBase", _PurePortal)
# The compiled base supplies only the hot path; the pure one inherits the rest.
_BASES = (_PurePortal,) if _PortalBase is _PurePortal else (_PortalCommon, _PortalBase)

_PORTAL_DOC = """A task's coroutine (or a sync function) running on its own greenlet.

    Instances are created by greenportal; users meet them as the value of
    ``task.get_coro()`` (asyncio) or ``task.coro`` (Trio) of a task that has a
    portal.  They behave as coroutines: ``send``, ``throw``, ``close`` and the
    ``cr_*`` introspection attributes, which describe the wrapped coroutine.
    """

if TYPE_CHECKING:

    class Portal(_PurePortal):
        __slots__ = ()

else:

    class Portal(*_BASES):
        __doc__ = _PORTAL_DOC
        __slots__ = ()


collections.abc.Coroutine.register(Portal)


class _Finished:
    """Stands in for the portal greenlet once it has ended."""

    def switch(self, *args: object) -> None:
        raise RuntimeError("cannot reuse already awaited coroutine")

    throw = switch


_FINISHED: Any = _Finished()


def _stray_switch(value: object) -> RuntimeError:
    """The error for a greenlet that switched to a portal's hub with its own value."""
    return RuntimeError(
        f"a greenlet switched to the greenlet running the event loop with {value!r} while "
        "a portal's task was being stepped; code running in a portal must not switch to "
        "that greenlet itself (to wait for an awaitable, call greenportal.await_())"
    )


def _describe(portal: _PortalCommon, attr: str) -> object:
    inner: object = portal.coro if portal.coro is not None else portal.fn
    inner = getattr(inner, "func", inner)  # functools.partial
    return getattr(inner, attr, type(inner).__name__)


def _make_exception(typ: Any, val: Any, tb: Any) -> BaseException:
    if isinstance(typ, BaseException):
        exc = typ
    elif isinstance(typ, type) and issubclass(typ, BaseException):
        exc = val if isinstance(val, typ) else (typ() if val is None else typ(val))
    else:
        raise TypeError(
            f"exceptions must be classes or instances deriving from BaseException, not "
            f"{type(typ).__name__}"
        )
    if tb is not None:
        exc = exc.with_traceback(tb)
    return exc


# -- the implementation in use ---------------------------------------------
# Each function with a compiled twin (see _accel.TWINS) is picked once, here
# and in _await, under a name of its own; the Python references above keep
# theirs and are never rebound, so editing one changes the pure-Python build,
# which the test suite runs on every Python alongside the compiled one.

acquire: Callable[[greenlet.greenlet], PortalGreenlet] = _accel.pick("acquire", _acquire)
release: Callable[[PortalGreenlet], bool] = _accel.pick("release", _release)
run_job: Callable[[PortalGreenlet, Any], Any] = _accel.pick("run_job", _run_job)
# (drive_coroutine's compiled twin is called by the compiled run_job only.)
_accel.pick("drive_coroutine", _drive_coroutine)
