"""The hooks ``%load_ext greenportal`` looks for on the package.

IPython's ``%load_ext NAME`` imports *NAME* and calls its
``load_ipython_extension(shell)``.  These two stand in for the ones in
``greenportal.ipython`` and import that module (and IPython) only when
called, so that ``import greenportal`` does not import IPython.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Run every cell of *ipython* in a portal (``%load_ext greenportal``).

    The same as :func:`greenportal.ipython.load_ipython_extension`; see
    :doc:`notebooks`.
    """
    from . import ipython as extension

    extension.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Undo :func:`load_ipython_extension` (``%unload_ext greenportal``).

    The same as :func:`greenportal.ipython.unload_ipython_extension`.
    """
    from . import ipython as extension

    extension.unload_ipython_extension(ipython)
