"""greenportal: call async code from synchronous code, wherever it runs.

Inside an asyncio or Trio task that has a *portal*, plain synchronous code
calls :func:`await_` and only that task waits while the event loop serves
everyone else.  The public API is a drop-in for greenback's:
``import greenportal as greenback`` keeps a greenback program working.

Module map (imports go one way, down this list; ``docs/principle.rst``):

* ``__init__``: this re-export, nothing else;
* ``_api``, ``_tree``, ``_adapters``, ``_blocking``, ``_classes``, ``_futures``,
  ``_threads``,
  ``_runner``, ``_bridges``, ``_dispatch``, ``_guards``: the public functions
  (and ``_guards``' check for async callables), none of which knows an event
  loop library;
* ``_extension``: the IPython extension hooks, which import
  ``greenportal.ipython`` (an integration) only when called;
* ``_backends``: everything that does (``_asyncio``, ``_eager``, ``_ctask``,
  ``_trio``, ``_anyio``), behind the interface in its ``__init__``;
* ``_portal``: the engine (the greenlet portal and ``await_``);
* ``_accel`` (the optional C accelerator and its table of twins) and
  ``_outcome`` (one result-or-exception type): the bottom.

pytest loads ``greenportal.pytest_plugin`` from an entry point, and would
then warn that this package, when imported before pytest started, cannot have
its asserts rewritten: PYTEST_DONT_REWRITE says that it need not.
"""

# Portal greenlets speak SQLAlchemy's greenlet protocol (see greenportal.sqlalchemy);
# this imports nothing from SQLAlchemy.
from . import sqlalchemy as sqlalchemy
from ._accel import SPEEDUPS as SPEEDUPS
from ._adapters import async_context as async_context
from ._adapters import async_iter as async_iter
from ._adapters import autoawait as autoawait
from ._adapters import decorate_as_sync as decorate_as_sync
from ._api import bestow_portal as bestow_portal
from ._api import ensure_portal as ensure_portal
from ._api import has_portal as has_portal
from ._api import portal as portal
from ._api import with_portal_run as with_portal_run
from ._api import with_portal_run_sync as with_portal_run_sync
from ._await import await_ as await_
from ._backends._executor import LoopExecutor as LoopExecutor
from ._backends._trio import AutoPortalInstrument as AutoPortalInstrument
from ._blocking import BlockingFunction as BlockingFunction
from ._blocking import BlockingGeneratorFunction as BlockingGeneratorFunction
from ._blocking import BlockingObject as BlockingObject
from ._classes import blocking as blocking
from ._dispatch import await_slow as _await_slow  # noqa: F401  (registers the slow path)
from ._extension import load_ipython_extension as load_ipython_extension
from ._extension import unload_ipython_extension as unload_ipython_extension
from ._futures import BlockingFuture as BlockingFuture
from ._runner import Runner as Runner
from ._runner import RunnerClosedError as RunnerClosedError
from ._runner import SyncContext as SyncContext
from ._runner import default_runner as default_runner
from ._runner import set_default_runner as set_default_runner
from ._threads import ThreadLimiter as ThreadLimiter
from ._threads import asyncify as asyncify
from ._threads import default_thread_limiter as default_thread_limiter
from ._threads import to_thread as to_thread
from ._tree import portals_for_children as portals_for_children
from ._tree import portals_for_tree as portals_for_tree
from ._tree import with_portal_run_tree as with_portal_run_tree
from ._version import __version__ as __version__

__all__ = [
    # creating portals
    "ensure_portal",
    "bestow_portal",
    "has_portal",
    "with_portal_run",
    "with_portal_run_sync",
    "with_portal_run_tree",
    "portals_for_tree",
    "portals_for_children",
    "AutoPortalInstrument",
    "portal",
    # using them
    "await_",
    "autoawait",
    "decorate_as_sync",
    "async_context",
    "async_iter",
    # one implementation, two APIs
    "blocking",
    "BlockingFunction",
    "BlockingFuture",
    "BlockingGeneratorFunction",
    "BlockingObject",
    # threads and sync programs
    "to_thread",
    "asyncify",
    "ThreadLimiter",
    "default_thread_limiter",
    "LoopExecutor",
    "Runner",
    "RunnerClosedError",
    "SyncContext",
    "default_runner",
    "set_default_runner",
    # %load_ext greenportal (IPython is imported only when they are called)
    "load_ipython_extension",
    "unload_ipython_extension",
    # introspection (python -m greenportal prints a fuller report)
    "SPEEDUPS",
    "__version__",
]


def _fixup_module_metadata() -> None:
    # Tracebacks, reprs and the docs should say greenportal.X, not
    # greenportal._api.X.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("greenportal."):
            obj.__module__ = "greenportal"


_fixup_module_metadata()
del _fixup_module_metadata
