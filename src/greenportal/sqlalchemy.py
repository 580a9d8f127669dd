"""SQLAlchemy's asyncio extension from synchronous code inside a portal.

SQLAlchemy runs its sync core on top of async drivers with its own greenlet
bridge: ``AsyncSession`` methods enter a greenlet of SQLAlchemy's
(``greenlet_spawn``), and the sync code inside calls SQLAlchemy's
``await_()`` (``await_only()`` in 2.0), which hands the driver's coroutine to
the greenlet's parent.  Outside such a greenlet, that ``await_()`` raises
``MissingGreenlet``: this is what a lazy load of an attribute does when sync
code touches it outside ``AsyncSession.run_sync()``.

This module makes every greenportal portal greenlet a greenlet SQLAlchemy
accepts.  SQLAlchemy tells its greenlets apart by a class attribute,
``__sqlalchemy_greenlet_provider__``, and awaits with
``getcurrent().parent.switch(awaitable)``.  The portal greenlet's parent is
the *hub*, the greenlet stepping the task (normally the event loop's), and
there are two ways to serve that switch:

* **The hub drives the awaitable** (SQLAlchemy's own dialect code awaiting
  its driver: every query, lazy load and commit).  The switch reaches the
  portal's ``send`` with an awaitable instead of one of the portal's
  markers, and from then on the portal steps that awaitable itself, trap by
  trap, until it ends; then it resumes the portal greenlet with the result,
  or throws the exception in (``_portal``, "Awaits the hub drives").  One
  switch pair per wait and none per trap, as in SQLAlchemy's own
  ``greenlet_spawn``, and nothing to set up beforehand.  The awaitable's
  frames then run on the hub, so sync code called from inside it cannot
  wait again: greenportal's :func:`~greenportal.await_` raises a
  ``RuntimeError`` that says so, and SQLAlchemy's raises ``MissingGreenlet``,
  as they would under ``greenlet_spawn``.  Driver calls never do that.
* **A driver greenlet** (any other code calling SQLAlchemy's ``await_()``
  directly: the awaitable may be anything, and may call sync code that waits
  again).  When SQLAlchemy's await function reads the attribute on behalf of
  a caller outside SQLAlchemy, the portal greenlet gets a short-lived driver
  greenlet as its parent.  The driver takes the awaitable, puts the portal
  greenlet's real parent back, becomes a child of the portal greenlet and
  runs :func:`greenportal.await_` on it, so the awaitable runs on a greenlet
  inside the portal and both kinds of nested await work.  When it ends,
  greenlet hands its result, or raises its exception, in the portal
  greenlet, where SQLAlchemy's ``switch`` is waiting.

Which way a wait goes is decided by who awaits: the frame that called
SQLAlchemy's await function belongs to a ``sqlalchemy.`` module or not.  The
switch itself needs no recognising (the hub knows its own markers), but we
found no signal other than the caller's module for "this awaitable is a
driver call": the awaitables are the drivers' own coroutines.  SQLAlchemy
reads the attribute before every wait, so its descriptor has a compiled
twin (``_speedups.SwitchProvider``), told the module prefix from here.

It is on from ``import greenportal``: nothing is imported from SQLAlchemy,
and nothing changes unless SQLAlchemy's own ``await_()`` or ``in_greenlet()``
runs in a portal.  :func:`disable` turns it off (SQLAlchemy then raises
``MissingGreenlet`` in portals again), :func:`enable` back on.

SQLAlchemy itself is not patched.  Tested with SQLAlchemy 2.0 and 2.1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import greenlet

from . import _accel
from ._await import await_, current_portal
from ._portal import PortalGreenlet

__all__ = ["disable", "enable", "is_enabled"]

_ATTRIBUTE = "__sqlalchemy_greenlet_provider__"

# SQLAlchemy's functions that read the attribute and then switch to the
# parent: await_ (2.1), await_only and await_fallback (2.0).  Its
# in_greenlet() reads it without switching.
_SWITCHING_CALLERS = frozenset({"await_", "await_only", "await_fallback"})
_PREFIX = "sqlalchemy."

_getcurrent = greenlet.getcurrent
_getframe = sys._getframe


def _drive(portal_gr: greenlet.greenlet) -> Any:
    """Body of a driver greenlet: take SQLAlchemy's awaitable and await_ it.

    Started by :func:`_arm`, it returns to the portal greenlet at once and is
    resumed by SQLAlchemy's ``parent.switch(awaitable)``.
    """
    awaitable = portal_gr.switch()
    me = _getcurrent()
    # Undo the parent swap first: from here on the portal greenlet is as
    # greenportal left it, and we are one more greenlet inside it.
    hub = me.parent
    assert hub is not None
    portal_gr.parent = hub
    me.parent = portal_gr
    return await_(awaitable)


def _arm(portal_gr: greenlet.greenlet) -> None:
    """Give *portal_gr* (the current greenlet) a started driver as its parent."""
    hub = portal_gr.parent
    driver = _Driver(_drive, hub)
    driver.gr_context = portal_gr.gr_context
    portal_gr.parent = driver
    driver.switch(portal_gr)


def _module_of_frame(depth: int) -> str:
    """``__name__`` of the module running at *depth* frames above our caller ('' if none)."""
    try:
        frame = _getframe(depth + 1)
    except ValueError:
        return ""
    return str(frame.f_globals.get("__name__", ""))


# 3.12+ names the module of a frame without making a frame object.
_module_at: Callable[[int], str | None] = getattr(sys, "_getframemodulename", _module_of_frame)


def _reader_switches(depth: int, prefix: str, switchers: frozenset[str]) -> bool:
    """Whether the code *depth* frames above our caller is SQLAlchemy's await function."""
    try:
        frame = _getframe(depth + 1)
    except ValueError:
        return False
    return frame.f_code.co_name in switchers and str(
        frame.f_globals.get("__name__", "")
    ).startswith(prefix)


class _Provider:
    """``__sqlalchemy_greenlet_provider__`` of portal greenlets: true where await_ can work.

    Read by SQLAlchemy on the current greenlet before each wait, so the
    compiled twin (``_speedups.SwitchProvider``, the same given the same
    arguments) is what runs where the extension is built.
    """

    def __init__(
        self, prefix: str, switchers: frozenset[str], arm: Callable[[greenlet.greenlet], None]
    ) -> None:
        self.prefix = prefix
        self.switchers = switchers
        self.arm = arm

    def __get__(self, gr: greenlet.greenlet | None, owner: type | None = None) -> Any:
        if gr is None:
            return self
        if gr is not _getcurrent():
            return True  # the class's answer; only the current greenlet can await
        if current_portal() is None:
            # A pooled portal greenlet, or another task's (an eager task's
            # first step): SQLAlchemy raises MissingGreenlet, as it should.
            return False
        # Frame 1 reads the attribute (SQLAlchemy's await function, or its
        # in_greenlet()); frame 2 called it.  Called from SQLAlchemy's own
        # code, a switch that follows goes to the hub, which drives the
        # awaitable: nothing to prepare.  Called from elsewhere, an await
        # gets a driver greenlet (see above).
        prefix = self.prefix
        if not (_module_at(2) or "").startswith(prefix) and _reader_switches(
            1, prefix, self.switchers
        ):
            self.arm(gr)
        return True


class _DriverProvider:
    """The same attribute on driver greenlets, which always arm: their parent is no hub."""

    def __get__(self, gr: greenlet.greenlet | None, owner: type | None = None) -> Any:
        if gr is None:
            return self
        if gr is not _getcurrent():
            return True
        if current_portal() is None:
            return False
        if _reader_switches(1, _PREFIX, _SWITCHING_CALLERS):
            _arm(gr)
        return True


def _arm_portal_greenlet(gr: greenlet.greenlet) -> None:
    # (_arm, looked up at each call: the tests count the driver greenlets.)
    _arm(gr)


_PROVIDER = _accel.pick("SwitchProvider", _Provider)(
    _PREFIX, _SWITCHING_CALLERS, _arm_portal_greenlet
)


class _Driver(greenlet.greenlet):
    """A driver greenlet; SQLAlchemy's await_ also works in the code it awaits."""

    __sqlalchemy_greenlet_provider__ = _DriverProvider()


def enable() -> None:
    """Let SQLAlchemy's asyncio extension run from sync code in portals (the default)."""
    try:
        setattr(PortalGreenlet, _ATTRIBUTE, _PROVIDER)
    except (TypeError, AttributeError) as error:  # pragma: no cover - a build without it
        raise RuntimeError(
            "greenportal.sqlalchemy cannot mark portal greenlets for SQLAlchemy in this "
            f"build of greenportal ({error}); SQLAlchemy's lazy loads will raise "
            "MissingGreenlet in portals; await SQLAlchemy's async API with await_() instead"
        ) from error


def disable() -> None:
    """Undo :func:`enable`: SQLAlchemy raises ``MissingGreenlet`` in portals again."""
    if _ATTRIBUTE in PortalGreenlet.__dict__:
        delattr(PortalGreenlet, _ATTRIBUTE)


def is_enabled() -> bool:
    """Whether SQLAlchemy accepts portal greenlets (see :func:`enable`)."""
    return PortalGreenlet.__dict__.get(_ATTRIBUTE) is _PROVIDER


try:
    enable()
except RuntimeError:  # pragma: no cover - importing greenportal must not fail over this
    pass
