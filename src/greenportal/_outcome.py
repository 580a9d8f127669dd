"""What crosses a thread or a task boundary: an outcome, or a refused awaitable.

:class:`Outcome` is the one result-or-exception type of greenportal's Python
code: a Runner job's result, the answer a ``to_thread`` host sends its worker,
a ``wrap_iter`` item and a worker thread's return all travel as one (a
Runner's ``Job`` is an ``Outcome`` itself, so that a round trip allocates
nothing more).  (The
portal greenlet's hand-over to its hub does not: it runs on the hot path in
C as well, where the outcome is a marker plus the portal's ``_result`` slot,
and allocating an object per finished job would cost every
``with_portal_run_sync`` call; see ``_portal.py``.)

:func:`close_refused` is the one place that decides which refused awaitables
we close, so that refusing a coroutine never leaves a "coroutine ... was
never awaited" warning behind.
"""

from __future__ import annotations

import types
from typing import Generic, TypeVar

T = TypeVar("T")

_CO_ITERABLE_COROUTINE = 0x100  # inspect.CO_ITERABLE_COROUTINE


class Outcome(Generic[T]):
    """A value, or an exception, to be delivered once.

    Invariant: ``error is None`` for a value; :meth:`unwrap` drops the
    exception reference as it raises, so that no reference cycle through the
    traceback outlives the delivery.
    """

    __slots__ = ("error", "value")

    def __init__(self, value: T | None = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> T:
        """Return the value, or raise the exception (and forget it)."""
        error = self.error
        if error is None:
            return self.value  # type: ignore[return-value]
        self.error = None
        try:
            raise error
        finally:
            del error

    def __repr__(self) -> str:
        if self.error is None:
            return f"Outcome(value={self.value!r})"
        return f"Outcome(error={self.error!r})"


def close_refused(aw: object) -> None:
    """Close a coroutine we refuse to run, so no 'never awaited' warning follows.

    Native coroutines and generator-based ones (``@types.coroutine``) are
    closed, and so are compiled coroutines (Cython's type is also called
    ``coroutine``); anything else (a Future, an object with ``__await__``, a plain
    generator passed by mistake) is the caller's and left alone.
    """
    tp = type(aw)
    if tp is types.CoroutineType or (
        tp is types.GeneratorType and aw.gi_code.co_flags & _CO_ITERABLE_COROUTINE  # type: ignore[attr-defined]
    ):
        aw.close()  # type: ignore[attr-defined]
    elif tp.__name__ == "coroutine" and callable(getattr(aw, "close", None)):
        aw.close()  # type: ignore[attr-defined]  # a compiled (Cython) coroutine
