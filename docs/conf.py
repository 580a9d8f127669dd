"""Sphinx configuration for the greenportal documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

Set ``GREENPORTAL_DOCS_INTERSPHINX=1`` to link to the Python, Trio and
greenlet documentation; that needs network access to fetch their inventories.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

# Document the source tree next to this directory, installed or not.
_SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(_SRC))

from greenportal._version import __version__ as _greenportal_version  # noqa: E402

# -- Project information -------------------------------------------------------

project = "greenportal"
author = "The greenportal developers"
copyright = "the greenportal developers"
release = _greenportal_version
version = ".".join(release.split(".")[:2])

# -- General configuration -----------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]

exclude_patterns = ["_build"]
default_role = "obj"

# autodoc: members in source order; type hints in the signature, as the
# source spells them (see _source_signature below).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

# napoleon: the docstrings use Google style only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# -- Cross-references ----------------------------------------------------------

# Fetching inventories needs the network, so it is opt-in.
if os.environ.get("GREENPORTAL_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "trio": ("https://trio.readthedocs.io/en/stable/", None),
        "greenlet": ("https://greenlet.readthedocs.io/en/latest/", None),
    }
else:
    intersphinx_mapping = {}

nitpicky = True

# Names that no inventory can resolve.  The signatures show annotations as
# written in the source (see _source_signature below), so the type variables
# and the ParamSpec of the generic functions appear by their bare names.
# (typing names such as Callable or Awaitable need no entry: Sphinx never
# reports them.)
nitpick_ignore = [
    ("py:class", "T"),
    ("py:class", "T2"),
    ("py:class", "P"),
    ("py:class", "P.args"),
    ("py:class", "P.kwargs"),
    ("py:class", "P2"),
    # The type variables of blocking() and BlockingObject.
    ("py:class", "C"),
    ("py:class", "S"),
    ("py:class", "Y"),
    # threadpool()'s: the function it marks and returns.
    ("py:class", "F"),
    # Runner.__exit__'s annotation, written bare (from types import TracebackType).
    ("py:class", "TracebackType"),
    # stubgen's signatures, written bare (from pathlib import Path).
    ("py:class", "Path"),
    # fastapi.PortalRoute.get_route_handler's: Starlette's Request and Response.
    ("py:class", "Request"),
    ("py:class", "Response"),
]
if not intersphinx_mapping:
    # Targets in the Python, Trio and greenlet docs, which only their
    # inventories can resolve; offline they render as plain text.  With
    # intersphinx on they must resolve, so they are not ignored then.
    nitpick_ignore += [
        ("py:class", "asyncio.AbstractEventLoop"),
        ("py:class", "asyncio.Task"),
        ("py:class", "concurrent.futures.Future"),
        ("py:class", "contextlib.AbstractAsyncContextManager"),
        ("py:class", "types.ModuleType"),
        ("py:exc", "asyncio.CancelledError"),
        ("py:class", "collections.abc.Coroutine"),
        ("py:mod", "contextvars"),
        ("py:func", "functools.lru_cache"),
        ("py:class", "greenlet.greenlet"),
        ("py:class", "trio.lowlevel.Task"),
        ("py:exc", "trio.Cancelled"),
    ]


class _Written:
    """An annotation that renders as the text it was written with."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def _written(annotation):
    if annotation is inspect.Parameter.empty:
        return annotation
    return _Written(annotation if isinstance(annotation, str) else repr(annotation))


def _source_signature(app, what, name, obj, options, signature, return_annotation):
    """Show a signature's annotations as the source spells them.

    greenportal's modules use ``from __future__ import annotations``, so every
    annotation is a string.  autodoc evaluates those strings and renders the
    resulting objects again, which mangles ParamSpec: ``*args: P.args``
    comes out as ``*args: ~typing.~P`` and ``Callable[P, T]`` as
    ``Callable[[~P], T]``.  Rendering the source strings avoids both and is
    exactly what a reader of the code sees.  Signatures without annotations
    (including explicit ones given in the .rst files) are left alone.
    """
    if what not in ("function", "method", "class"):
        return None
    if ":" not in (signature or "") and not return_annotation:
        return None
    try:
        sig = inspect.signature(obj, eval_str=False)
    except (TypeError, ValueError):
        return None

    params = [p.replace(annotation=_written(p.annotation)) for p in sig.parameters.values()]
    if what == "method" and params and params[0].name in ("self", "cls"):
        # autodoc hands over the function found on the class: drop its self.
        params = params[1:]
    text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    if what == "class" or sig.return_annotation is inspect.Signature.empty:
        return text, None
    return text, repr(_written(sig.return_annotation))


def setup(app):
    app.connect("autodoc-process-signature", _source_signature)


# -- HTML output ---------------------------------------------------------------

# furo: its content column widens with the window and scrolls wide code
# blocks instead of clipping them (alabaster's fixed column clipped them).
# Without furo installed (a bare Sphinx), the build falls back to alabaster.
try:
    import furo  # noqa: F401
except ImportError:
    html_theme = "alabaster"
    html_theme_options = {
        "description": "Call async code from synchronous code inside a running task.",
        "fixed_sidebar": True,
    }
else:
    html_theme = "furo"
    html_theme_options = {}
html_title = f"greenportal {release}"
