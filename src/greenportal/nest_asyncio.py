"""A drop-in for nest_asyncio's ``apply()``: nested runs that suspend one task.

Usage, as with nest_asyncio::

    from greenportal import nest_asyncio
    nest_asyncio.apply()

After that, synchronous code running in an asyncio task may call
``asyncio.run(coro)``, ``asyncio.get_event_loop().run_until_complete(coro)``
or ``loop.run_until_complete(coro)`` on the loop that runs it.  The call
does not run the loop again: it starts *coro* as a task on that loop and
waits for it with :func:`greenportal.await_`, which suspends only the calling
task, sync frames and all, while the loop goes on serving every other task.
``docs/nest_asyncio.rst`` is the user's page (with a side-by-side comparison);
this is the design.

What apply() changes
--------------------
Process-wide, once (a second call changes nothing more):

* ``asyncio.run`` is replaced, ``asyncio.Runner.run`` (3.11+) wrapped, and
  ``run_until_complete`` wrapped on ``asyncio.BaseEventLoop`` and on
  ``uvloop.Loop`` (if uvloop is imported; it is a Python subclass of uvloop's
  C loop, so it takes the patch).  Each takes the nested path only inside a
  portal of a task of the running loop; anywhere else it does what it did.

Per loop: a task factory, chained in front of whatever factory the loop had
(a pure-Python Task factory, ``asyncio.eager_task_factory``...), that gives
every task created from then on a portal.  The loops that get it are:

* the loop running in this thread when apply() is called, or the loop
  passed as ``apply(loop)``;
* every loop started afterwards, in any thread, by ``asyncio.run``,
  ``asyncio.Runner.run`` or a top-level ``loop.run_until_complete``: the
  factory is in place before the first task is created, so the main task has
  a portal too.

The calling task: when apply() runs inside a task of the loop it gives
portals to, that task gets one as well (:func:`greenportal.bestow_portal`).
Its code is running on the task's own stack, which no greenlet can suspend,
so that portal starts working once the task has yielded to the loop: a
nested call later in the same step raises the original RuntimeError, with a
note saying so.

Why suspend the task rather than re-enter the loop
--------------------------------------------------
nest_asyncio makes the loop re-entrant: a nested ``run_until_complete`` runs
loop iterations itself, so every other task's callbacks run *inside* the
nested call, on top of the caller's frames.  That needs its own copy of the
loop's ``_run_once`` (on private attributes, hence BaseEventLoop only: it
refuses uvloop), pure-Python Tasks swapped in for the C Task, and patches of
the task bookkeeping; and calls can only unwind in order: a nested call
cannot return while one made inside it (by another task) is still waiting.

A portal needs none of that.  The loop runs exactly as written, C Task and
uvloop included; the waiting task is simply not stepped until its awaitable
is done, and each waiting call returns as soon as its own coroutine is done.

Rejected:

* *Re-entering the loop* (nest_asyncio's design): above.
* *A fresh loop in a worker thread*, blocking the caller until it is done:
  the outer loop would stall for the whole call, and the coroutine could not
  use anything bound to the outer loop (a queue, a lock, a connection pool),
  which is what code inside an application or a notebook usually wants.
* *Running the coroutine inside the calling task* (``await_(coro)``): one
  task cheaper, but ``asyncio.run`` gives its coroutine a task of its own,
  and code can tell: ``asyncio.current_task()``, context variables set by
  the coroutine (a task runs in a copy of the caller's context), the
  cancellation counts behind ``asyncio.timeout``.  So a nested call makes a
  task, through the loop's factory (so it has a portal and can nest again),
  and awaits it; cancelling the caller cancels that task, as ``await task``
  does.
* *Installing the portal at the nested call*: too late.  A portal has to be
  in place before the step that runs the sync code (see above), which is why
  the factory gives one to every task in advance, and why tasks created
  before apply() cannot nest.
* *Patching get_event_loop and the policy*, as nest_asyncio does: inside a
  task ``get_event_loop()`` already returns the running loop, and the policy
  system is deprecated from Python 3.14.

Semantics of a nested call
--------------------------
``asyncio.run(coro)`` returns what *coro* returns and raises what it raises.
It differs from a fresh ``asyncio.run`` because it runs on the outer loop:

* tasks that *coro* starts and leaves behind go on running on the outer
  loop; nothing cancels them when the call returns;
* async generators it leaves unfinished are finalized by the outer loop (when
  collected, or at the outer loop's ``shutdown_asyncgens``), not on return;
* ``run_in_executor(None, ...)`` uses the outer loop's default executor,
  which the call does not shut down;
* ``debug=`` is ignored (the outer loop's mode applies; nest_asyncio sets the
  outer loop's mode instead), and so is ``loop_factory=`` (3.12+; it is not
  called); other keywords raise asyncio's TypeError;
* no SIGINT handler is installed, and the thread's current loop is left alone;
* what is not a coroutine raises asyncio's ValueError, and nothing is created
  (on 3.14, where ``asyncio.run`` takes any awaitable, other awaitables are
  waited for in a task, and what is not awaitable raises TypeError).

``loop.run_until_complete(x)`` waits for *x* as ``await`` would: a Future or
Task as it is (so cancelling the caller cancels it, which a fresh
``run_until_complete`` would not do), a coroutine or other awaitable in a task
of its own (``asyncio.ensure_future``); a non-awaitable raises asyncio's
TypeError.

Costs and known gaps
--------------------
* Every task created on a loop after apply() has a portal: a greenlet while
  it runs, and a greenlet switch on each step.  On a loop with an
  eager task factory, tasks created from inside a portal start on the next
  iteration instead of eagerly (``_backends/_eager.py``); after apply() that
  is every task created by a task, while tasks created in callbacks still
  start eagerly.
* Tasks created before apply() (other than the caller) and plain callbacks
  cannot nest: the call raises asyncio's RuntimeError, with a note naming the
  fix (on 3.11+ an exception note, on 3.10 a second line of the message).
* A later ``loop.set_task_factory()`` replaces the portal factory; apply()
  again chains a new one in front.  A loop started by ``run_forever()`` alone
  gets portals only through ``apply(loop)``.
* ``asyncio.Runner.run`` does not nest (a Runner owns a loop of its own); its
  RuntimeError gets a note too.  A name bound by ``from asyncio import run``
  before apply() keeps the original function.
* uvloop: both calls nest on ``uvloop.Loop`` loops.  A loop of the bare C
  type ``uvloop.loop.Loop`` cannot be patched: apply() warns; nested
  ``asyncio.run`` works there, nested ``run_until_complete`` raises uvloop's
  own RuntimeError, which can carry no hint (and uvloop has already made the
  coroutine a task, which runs unwaited for).  On Python 3.10, where
  ``uvloop.run`` does not go through ``asyncio.run``, import uvloop before
  calling apply().
* ``asyncio.run`` with no loop running keeps its whole behaviour: a fresh
  loop (with the portal factory), closed at the end.

The mechanics live in ``_backends/_nest.py``: this module knows no event loop
library (``tests/test_layout.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._api import bestow_portal
from ._backends import _nest

if TYPE_CHECKING:
    import asyncio

__all__ = ["apply"]


def apply(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Let sync code in asyncio tasks call ``asyncio.run()`` and ``run_until_complete()``.

    The calls suspend only the calling task, through :func:`greenportal.await_`,
    while the loop keeps running.  Patches asyncio once per process; gives
    every task created from now on, on *loop* (default: the running loop, if
    any) and on every loop started later by ``asyncio.run``,
    ``asyncio.Runner`` or ``loop.run_until_complete``, a portal.  Called
    inside a task of that loop, it gives the calling task a portal too, which
    works once the task has yielded to the loop (``await asyncio.sleep(0)``).
    Applying again changes nothing more.

    Raises:
        ValueError: *loop* is not an event loop.
    """
    task = _nest.apply(loop)
    if task is not None:
        bestow_portal(task)
