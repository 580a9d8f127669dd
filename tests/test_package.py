"""Packaging and public-surface hygiene."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.resources
import inspect
import pathlib
import re
import sys
import types
from dataclasses import dataclass, field

import pytest

import greenportal

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(greenportal).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(greenportal.__all__) - {"__version__"}


def test_public_objects_claim_the_package() -> None:
    for name in greenportal.__all__:
        obj = getattr(greenportal, name)
        if callable(obj):
            assert obj.__module__ == "greenportal", name


def test_version_matches_metadata() -> None:
    assert importlib.metadata.version("greenportal") == greenportal.__version__


def test_py_typed_is_shipped() -> None:
    assert importlib.resources.files("greenportal").joinpath("py.typed").is_file()


# --- every public name and member in the reference ----------------------------

# The public modules, and the pages that document them: the package in
# docs/reference.rst, the integrations on the pages that declare them
# (py:module), each with autodoc directives and explicit entries.
PUBLIC_MODULES = [
    "greenportal",
    "greenportal.aiohttp",
    "greenportal.asgi",
    "greenportal.fastapi",
    "greenportal.starlette",
    "greenportal.sqlalchemy",
    "greenportal.ipython",
    "greenportal.pytest_plugin",
    "greenportal.nest_asyncio",
    "greenportal.stubgen",
]
REFERENCE_PAGES = ["reference.rst", "integrations.rst", "notebooks.rst", "nest_asyncio.rst"]

_RST_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?:py:)?(?P<kind>[a-z]+):: *(?P<target>[\w.]*)")
_RST_OPTION = re.compile(r"^ +:(?P<name>[\w-]+):(?P<value>.*)$")
# The directives (py:X, autoX) that document one object.
_OBJECT_KINDS = {
    "function",
    "decorator",
    "class",
    "exception",
    "data",
    "attribute",
    "property",
    "method",
    "classmethod",
    "staticmethod",
}


@dataclass
class Documented:
    """What the reference pages document, by qualified name."""

    names: set[str] = field(default_factory=set)  # directives and :members: lists
    all_members: set[str] = field(default_factory=set)  # classes with a bare :members:
    undoc_members: set[str] = field(default_factory=set)  # ... and :undoc-members:


def _documented(pages: list[pathlib.Path]) -> Documented:
    """Parse the autodoc and py-domain directives of *pages* (no Sphinx needed)."""
    found = Documented()
    for page in pages:
        module = "greenportal"
        classes: list[tuple[int, str]] = []  # (indent, qualified name) of enclosing classes
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = _RST_DIRECTIVE.match(line)
            if match is None:
                continue
            indent, target = len(match["indent"]), match["target"]
            kind = match["kind"].removeprefix("auto")
            if kind in ("module", "currentmodule"):
                module = target
                continue
            if kind not in _OBJECT_KINDS or not target:
                continue
            while classes and classes[-1][0] >= indent:
                classes.pop()
            options = []
            for option in lines[i + 1 :]:
                opt = _RST_OPTION.match(option)
                if opt is None:
                    break
                options.append((opt["name"], opt["value"]))
            if target.startswith("greenportal."):
                qualified = target
            elif classes:
                qualified = f"{classes[-1][1]}.{target}"
            else:
                in_module = dict(options).get("module", "").strip() or module
                qualified = f"{in_module}.{target}"
            found.names.add(qualified)
            if kind not in ("class", "exception"):
                continue
            classes.append((indent, qualified))
            for name, value in options:
                if name == "members":
                    listed = [m.strip() for m in value.split(",") if m.strip()]
                    found.names.update(f"{qualified}.{m}" for m in listed)
                    if not listed:
                        found.all_members.add(qualified)
                elif name == "undoc-members":
                    found.undoc_members.add(qualified)
    return found


def _ours(cls: type) -> bool:
    return cls.__module__ == "greenportal" or cls.__module__.startswith("greenportal.")


def _source_file(cls: type) -> str:
    # Classes re-exported by the package claim __module__ "greenportal":
    # find their real file through a function they define.
    for value in vars(cls).values():
        code = getattr(getattr(value, "fget", value), "__code__", None)
        if code is not None:
            return str(code.co_filename)
    return str(sys.modules[cls.__module__].__file__)


def _instance_attributes(cls: type) -> set[str]:
    """Public attributes that the class's methods assign to ``self``."""
    tree = ast.parse(pathlib.Path(_source_file(cls)).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == cls.__name__):
            continue
        for sub in ast.walk(node):
            targets: list[ast.expr] = []
            if isinstance(sub, ast.Assign):
                targets = sub.targets
            elif isinstance(sub, ast.AnnAssign):
                targets = [sub.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                    and not target.attr.startswith("_")
                ):
                    names.add(target.attr)
    return names


def public_members(cls: type) -> dict[str, bool]:
    """A class's public members that greenportal defines: name -> has a docstring.

    Inherited members count only where a greenportal class defines them
    (not object's, Exception's, Starlette's ...), instance attributes
    assigned in its methods included (those have no docstring to find).
    """
    members: dict[str, bool] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        owner = next((c for c in cls.__mro__ if name in vars(c)), None)
        if owner is None or not _ours(owner):
            continue
        value = vars(owner)[name]
        doc = getattr(value, "__doc__", None)
        members[name] = bool(doc) and doc is not getattr(type(value), "__doc__", None)
    for base in cls.__mro__:
        if _ours(base):
            for name in _instance_attributes(base):
                members.setdefault(name, False)
    return members


def _public_module(name: str) -> types.ModuleType:
    # The integrations import their frameworks: skip what is not installed
    # (the wheels' test run has none of aiohttp, FastAPI or IPython).
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("greenportal"):
            raise
        pytest.skip(f"{name} needs {error.name}, which is not installed")


def _reference() -> Documented:
    pages = [REPO / "docs" / page for page in REFERENCE_PAGES]
    if not all(page.exists() for page in pages):  # an installed wheel without the repo
        pytest.skip("docs/ not found")
    return _documented(pages)


def test_every_public_module_is_checked() -> None:
    package = pathlib.Path(greenportal.__file__).parent
    public = {f"greenportal.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    assert public == set(PUBLIC_MODULES) - {"greenportal"}


def test_the_reference_parser_sees_what_autodoc_sees() -> None:
    found = _reference()
    assert "greenportal.Runner.run" in found.names  # an explicit entry in autoclass
    assert "greenportal.async_iter.send" in found.names  # a :members: list
    assert "greenportal.SPEEDUPS" in found.names  # .. data:: under .. module::
    assert "greenportal.aiohttp.setup" in found.names  # a qualified autofunction


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_an_entry_in_the_reference(module_name: str) -> None:
    module = _public_module(module_name)
    found = _reference()
    missing = [n for n in module.__all__ if f"{module_name}.{n}" not in found.names]
    assert not missing, f"no directive in docs/{{{','.join(REFERENCE_PAGES)}}} for {missing}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_member_is_in_the_reference(module_name: str) -> None:
    module = _public_module(module_name)
    found = _reference()
    missing = []
    for name in module.__all__:
        cls = getattr(module, name)
        if not inspect.isclass(cls):
            continue
        qualified = f"{module_name}.{name}"
        for member, has_doc in sorted(public_members(cls).items()):
            if f"{qualified}.{member}" in found.names:
                continue
            if qualified in found.all_members and (has_doc or qualified in found.undoc_members):
                continue  # autodoc's bare :members: takes members with docstrings
            missing.append(f"{qualified}.{member}")
    assert not missing, (
        f"document these in the reference (autodoc :members: or an explicit entry): {missing}"
    )
