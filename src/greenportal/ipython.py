"""IPython and Jupyter: every cell runs in a portal (``%load_ext greenportal``).

::

    %load_ext greenportal          # or: %load_ext greenportal.ipython

From the next cell on, a cell's synchronous code, and everything it calls,
can use :func:`greenportal.await_`; ``asyncio.run()`` and
``loop.run_until_complete()`` in a cell, or in a library it calls, suspend
the cell instead of failing, as after :func:`greenportal.nest_asyncio.apply`
on the kernel's loop.  ``%unload_ext greenportal`` undoes it.
``docs/notebooks.rst`` is the user's page; this is the design.

How a cell runs, without the extension
--------------------------------------
ipykernel (6 and 7) runs its own asyncio loop, and handles each message in a
task of that loop.  For an ``execute_request`` it asks the shell
``should_run_async(code, ...)``, which says yes only when ``%autoawait`` is on
and the cell contains a top-level ``await``.  Then (provided
``shell.loop_runner`` is IPython's asyncio runner) the cell's
``shell.run_cell_async(...)`` coroutine becomes a task of its own
(``asyncio.ensure_future``), and a SIGINT while it runs cancels that task.
Otherwise the kernel calls ``shell.run_cell()``, which drives the same
coroutine synchronously (IPython's "pseudo-sync runner", which fails if the
coroutine ever yields), inside the kernel's message-handling task.

Terminal IPython has no loop running; it asks the same question and runs
async cells with ``get_asyncio_loop().run_until_complete(coro)`` (IPython's
own loop, kept for the whole session), others with the pseudo-sync runner.

What the extension changes
--------------------------
On the shell, two instance attributes, which shadow the class's methods:

* ``should_run_async`` says yes to every cell when ``%autoawait`` is on, the
  cell has no preprocessing (syntax or transformer) error and
  ``shell.loop_runner`` is IPython's asyncio runner; otherwise it answers as
  IPython does.  So every cell runs as a task of the kernel's loop (in the
  terminal, through ``run_until_complete`` on IPython's loop), exactly the
  path IPython and ipykernel already take for cells with a top-level
  ``await``.
* ``run_cell_async``, wrapped (``functools.wraps``, so its signature, which
  ipykernel inspects for ``cell_id`` and ``cell_meta``, is the original's),
  runs the original with :func:`greenportal.with_portal_run` when the cell
  runs in a task: the cell gets a portal even if the task has none (its
  factory was replaced, or the cell runs on a subshell's loop).  It adds no
  checkpoint, and costs nothing when the task has a portal already.  When
  the pseudo-sync runner drives it (``%autoawait off``), it adds nothing:
  a portal there would let ``await_`` yield to a runner that cannot wait.
  On the main thread, in a task, it also handles SIGINT (the kernel's
  interrupt) while the cell runs, ``%autoawait off`` or not: see
  "Interrupts" below.

On the loop (the one running when the extension is loaded from a kernel
cell; else the loop of the first cell that runs in a task: IPython's
``get_asyncio_loop()`` in the terminal, the kernel's loop when the kernel
loads the extension from its configuration, before its loop runs): what
:func:`greenportal.nest_asyncio.apply` does, except that the calling task
gets no portal.  That patches ``asyncio.run`` and ``run_until_complete``
process-wide (they only act differently inside a portal) and installs a
task factory that gives every task created on the loop from then on a
portal.  That makes nested
runs work in the tasks a cell starts too, and it is what gives the cell's
own task its portal in the first place (the wrapper then finds one).

Unloading restores the shell's two attributes to what they were (no
instance attribute, or whatever one was there), or, if something else has
replaced them since, leaves them and turns the extension's wrappers into
pass-throughs.  It takes the task factory off the loop only if loading put
it there and it is still the loop's factory.  The process-wide asyncio
patches stay: outside portals they do what asyncio does.  Loading twice is
loading once; unloading what was never loaded does nothing.

Why every cell becomes a task
-----------------------------
A portal has to be in place before the step of the task that runs the sync
code (``docs/principle.rst``); the only step the extension can get in front
of is the start of a task it controls.  Running every cell the way async
cells already run gives each cell such a start, and brings the rest of what
async cells have: Ctrl-C (the kernel's interrupt) cancels the cell's task,
so a cell waiting in ``await_`` ends with ``CancelledError`` and a
traceback, and the kernel goes on.

Interrupts
----------
ipykernel interrupts an async cell by cancelling its task from a SIGINT
handler, through a callback that it schedules without waking the loop: the
cancellation arrives only when the loop's ``select()`` returns for some other
reason (ipykernel issue 881), and a cell busy in sync code (``while True``,
``time.sleep``) is never interrupted, as a synchronous cell would be.  With
every cell async, that would make runaway cells unstoppable.  So for the
length of the cell, the wrapper puts a handler in front of ipykernel's:

* if the signal arrives while the cell's task is running the cell's code
  (a frame under IPython's ``run_code`` is on the stack), it raises
  ``KeyboardInterrupt`` there, exactly as in a synchronous cell;
* otherwise the cell is waiting (in ``await_``, or a top-level ``await``):
  it calls ipykernel's handler (or, where Python's default handler was in
  place, as in terminal IPython, cancels the cell's task itself) and wakes
  the loop, so that the wait ends at once with ``CancelledError``.

Rejected:

* *A portal for the message-handling task only* (it does get one from the
  factory, which is why ``await_`` also works with ``%autoawait off`` in a
  kernel): that task is ipykernel's, not the cell's, and what the cell runs
  in depends on how ipykernel dispatches messages, which has changed
  between its versions; the cell's own task is what IPython defines.
* *An input transformer that prepends* ``await greenportal.ensure_portal()``
  to each cell: it changes the user's code (tracebacks, ``%history``,
  ``_i``), adds a checkpoint to every cell, and the portal it makes would
  only work from the cell's second step.
* *Replacing* ``shell.loop_runner``: ipykernel takes the async path only when
  the runner *is* IPython's asyncio runner, so any other object sends every
  cell down the synchronous path.
* *Patching the InteractiveShell class*: every shell of the process (and
  subclasses) would change, and unloading could not tell what to restore.

Known gaps
----------
* ``%autoawait off``: cells run synchronously in the kernel's task for the
  message.  ipykernel 7 makes one per message, after loading, so it has a
  portal: ``await_`` and nested ``asyncio.run`` still work, and an
  interrupt while such a cell waits cancels that task (the cell ends with
  ``CancelledError``).  ipykernel 6 handles every message in one task,
  created when the kernel started, which has no portal: ``await_`` raises.
  In terminal IPython no loop runs then, so ``await_`` runs its awaitable on
  :func:`greenportal.default_runner`'s loop, not IPython's.
* ``%autoawait trio`` (and curio, or any runner other than IPython's asyncio
  runner) keeps IPython's behaviour: cells without top-level ``await`` run
  synchronously and have no portal; a cell can give itself one with
  ``await greenportal.ensure_portal()``, and ``greenportal.await_`` in
  terminal IPython uses the default runner.  ipykernel's Trio mode
  (``--IPKernelApp.trio_loop``) is not supported.
* The cell that runs ``%load_ext greenportal`` is running already: it gets
  no portal (one bestowed on its task would work only after the task yields,
  and in ipykernel 6 that task is the one that handles every message); the
  next cell has one.
* Tasks created on the loop before loading have no portal; tasks created
  afterwards all do (a greenlet each while they run, and on a loop with an
  eager task factory, tasks created inside a portal start on the next
  iteration instead of eagerly; see ``greenportal.nest_asyncio``).
* Threads: code a cell runs in a ``threading.Thread`` of its own has no loop;
  ``await_`` there uses the default runner.  ``asyncio.to_thread`` and
  ``run_in_executor`` threads work as everywhere (``docs/where.rst``).
  ipykernel 7's subshells run cells on loops of their own threads: the cell
  gets a portal from the wrapper, tasks it creates get none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

try:
    from IPython.core.async_helpers import _asyncio_runner
    from IPython.core.interactiveshell import InteractiveShell
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "greenportal.ipython needs IPython, which is not installed: pip install ipython"
    ) from error

from ._api import with_portal_run
from ._backends import _nest

__all__ = ["load_ipython_extension", "unload_ipython_extension"]

# The shell attributes the extension replaces, in the order it replaces them.
_ATTRIBUTES = ("should_run_async", "run_cell_async")
# What an instance dictionary lacked before loading.
_ABSENT = object()


class _Loaded:
    """What loading changed on one shell, so that unloading can undo exactly that."""

    def __init__(self, shell: InteractiveShell) -> None:
        self.active = True
        # The instance attributes before loading (_ABSENT: none), and ours.
        self.previous: dict[str, object] = {
            name: vars(shell).get(name, _ABSENT) for name in _ATTRIBUTES
        }
        self.installed: dict[str, object] = {}
        # The loop given portals, and its factory before and after apply()
        # (the same object if apply() installed nothing).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.factory_before: object = None
        self.factory_after: object = None
        # Per thread: did should_run_async just send the next cell to a task?
        self.decision = threading.local()


_loaded: weakref.WeakKeyDictionary[InteractiveShell, _Loaded] = weakref.WeakKeyDictionary()


def _check_shell(ipython: object, what: str) -> InteractiveShell:
    if not isinstance(ipython, InteractiveShell):
        raise TypeError(
            f"greenportal's IPython extension: {what} needs an IPython InteractiveShell "
            f"(what get_ipython() returns), got {ipython!r}"
        )
    return ipython


def _make_should_run_async(
    shell: InteractiveShell, state: _Loaded, original: Callable[..., bool]
) -> Callable[..., bool]:
    @functools.wraps(original)
    def should_run_async(raw_cell: str, *args: Any, **kwargs: Any) -> bool:
        answer = bool(original(raw_cell, *args, **kwargs))
        if (
            not answer
            and state.active
            and shell.autoawait
            and kwargs.get("preprocessing_exc_tuple") is None
            and shell.loop_runner is _asyncio_runner
        ):
            answer = True
        state.decision.to_task = answer and shell.loop_runner is _asyncio_runner
        return answer

    return should_run_async


def _inside(frame: FrameType | None, code: CodeType | None) -> bool:
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _interruptible(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], run_code: CodeType | None
) -> Iterator[None]:
    """Let SIGINT interrupt the cell that *task* runs, busy or waiting.

    While the cell's own code runs (the signal arrives in a frame under
    IPython's ``run_code``, in *task*'s step), raise KeyboardInterrupt there,
    as in a synchronous cell; while *task* runs anything else, do what the
    handler that was there does.  Otherwise the cell is waiting: hand the
    signal to that handler (ipykernel's, which cancels the cell's task) or,
    if that is Python's default, cancel the task; then wake the loop, which
    would otherwise run that handler's callback only when its ``select()``
    times out (ipykernel issue 881).
    """
    previous = signal.getsignal(signal.SIGINT)
    # None where Python's default (KeyboardInterrupt) or no Python handler is.
    handler: Callable[[int, FrameType | None], Any] | None = None
    if callable(previous) and previous is not signal.default_int_handler:
        handler = previous

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if asyncio.current_task(loop) is task:
            if handler is None or _inside(frame, run_code):
                raise KeyboardInterrupt
            handler(signum, frame)
            return
        if handler is None:
            loop.call_soon_threadsafe(task.cancel)
        else:
            handler(signum, frame)
        loop.call_soon_threadsafe(_nothing)  # writes to the loop's self-pipe

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)


def _nothing() -> None:
    pass


def _make_run_cell_async(
    shell: InteractiveShell, state: _Loaded, original: Callable[..., Any]
) -> Callable[..., Any]:
    run_code = getattr(getattr(type(shell), "run_code", None), "__code__", None)

    @functools.wraps(original)
    async def run_cell_async(*args: Any, **kwargs: Any) -> Any:
        # Read at the coroutine's first step: the kernel and the terminal both
        # ask should_run_async about a cell before they start running it.
        to_task = getattr(state.decision, "to_task", False)
        state.decision.to_task = False
        loop = asyncio._get_running_loop()
        task = asyncio.current_task() if loop is not None else None
        if not state.active or loop is None or task is None:
            return await original(*args, **kwargs)  # terminal IPython, not in a task
        if state.loop is None:
            _give_portals(state, loop)  # loaded before the loop ran (from the config)
        with contextlib.ExitStack() as stack:
            if threading.current_thread() is threading.main_thread():
                stack.enter_context(_interruptible(loop, task, run_code))
            if to_task:
                return await with_portal_run(original, *args, **kwargs)
            # The pseudo-sync runner (%autoawait off) in the kernel's message task.
            return await original(*args, **kwargs)

    return run_cell_async


def _give_portals(state: _Loaded, loop: asyncio.AbstractEventLoop) -> None:
    """nest_asyncio.apply(*loop*), remembering the factory it replaced.

    Unlike ``nest_asyncio.apply()``, it gives the calling task no portal: in
    ipykernel 6 that task handles every message of the session, and would
    keep its portal after unloading.
    """
    state.loop = loop
    state.factory_before = loop.get_task_factory()
    _nest.apply(loop)
    state.factory_after = loop.get_task_factory()


def load_ipython_extension(ipython: Any) -> None:
    """Run every cell of *ipython* in a portal, and let nested asyncio runs suspend it.

    What ``%load_ext greenportal`` calls.  From the next cell on, the sync
    code of a cell, and everything it calls, can use :func:`greenportal.await_`,
    and ``asyncio.run()`` or ``loop.run_until_complete()`` there waits in a
    task of the kernel's loop (see :func:`greenportal.nest_asyncio.apply`)
    while the loop keeps running.  Loading again changes nothing more.

    Raises:
        TypeError: *ipython* is not an IPython ``InteractiveShell``.
    """
    shell = _check_shell(ipython, "load_ipython_extension()")
    if shell in _loaded:
        return
    state = _Loaded(shell)
    running = asyncio._get_running_loop()
    if running is not None:
        _give_portals(state, running)
    # Else (terminal IPython, or an extension loaded from the configuration
    # before the kernel's loop runs): the first cell run in a task does it.
    state.installed = {
        "should_run_async": _make_should_run_async(shell, state, shell.should_run_async),
        "run_cell_async": _make_run_cell_async(shell, state, shell.run_cell_async),
    }
    for name in _ATTRIBUTES:
        setattr(shell, name, state.installed[name])
    _loaded[shell] = state


def unload_ipython_extension(ipython: Any) -> None:
    """Undo :func:`load_ipython_extension` on *ipython* (``%unload_ext greenportal``).

    Cells run as they did before loading.  Shell attributes replaced by
    someone else since loading are left alone (the extension's wrappers
    underneath them stop acting), and so is a task factory set on the loop
    since.  Tasks that have portals keep them.  Does nothing if the
    extension is not loaded on *ipython*.

    Raises:
        TypeError: *ipython* is not an IPython ``InteractiveShell``.
    """
    shell = _check_shell(ipython, "unload_ipython_extension()")
    state = _loaded.pop(shell, None)
    if state is None:
        return
    state.active = False
    for name in reversed(_ATTRIBUTES):
        if vars(shell).get(name, _ABSENT) is not state.installed[name]:
            continue  # replaced since: ours, now inactive, passes calls through
        previous = state.previous[name]
        if previous is _ABSENT:
            delattr(shell, name)
        else:
            setattr(shell, name, previous)
    loop = state.loop
    if (
        loop is not None
        and state.factory_after is not state.factory_before
        and not loop.is_closed()
        and loop.get_task_factory() is state.factory_after
    ):
        loop.set_task_factory(state.factory_before)  # type: ignore[arg-type]
