"""Type stubs for the blocking APIs that :func:`~greenportal.blocking` makes.

Usage::

    python -m greenportal.stubgen MODULE [MODULE ...] [-o OUTDIR]

Each MODULE is imported and ``MODULE.pyi`` is written beside its source (or
under OUTDIR, mirroring the package path).  The stub describes every public
name of the module, so that type checkers see what ``blocking()`` made:

* a :class:`~greenportal.BlockingFunction` is typed by a private spec class
  whose ``__call__`` has the sync signature, ``aio`` the async original and
  ``submit`` a :class:`concurrent.futures.Future`; a
  :class:`~greenportal.BlockingGeneratorFunction` likewise, with generators;
* a wrapper class gets the bases its async class's bases map to, the async
  class's ``__init__``, a spec per async method (so ``obj.m(...)``,
  ``obj.m.aio(...)`` and ``obj.m.submit(...)`` all type-check), its sync
  methods, properties and annotated attributes, ``__enter__``/``__exit__``
  and ``__iter__``/``__next__``, and ``aio`` (the async class on the class,
  the async instance on an instance);
* everything else is re-exported from where it is defined, or, when defined
  in the module itself, declared with its signature or type.

Annotations are translated the way the runtime translates values: in
results, an async class with a wrapper becomes the wrapper, ``AsyncIterator``
``Iterator``, ``AsyncGenerator[Y, S]`` ``Generator[Y, S, None]``, an async
context manager a context manager, through unions, tuples, lists and dict
values; in arguments, a wrapper is accepted where its async class is.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import importlib
import inspect
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ._blocking import BlockingFunction, BlockingGeneratorFunction, BlockingObject
from ._stubtypes import (
    _AIO,
    _EXIT_PARAMS,
    _SELF,
    _UNMIRRORED,
    StubError,
    _class_annotations,
    _class_doc,
    _Context,
    _def,
    _docstring,
    _future_class,
    _import_order,
    _is_acm_function,
    _is_stdlib,
    _is_wrapper,
    _owner,
    _public_names,
    _SelfMarker,
    _signature,
    _strip,
    _Stub,
    _yield_of,
)

__all__ = ["StubError", "generate", "main", "stub_path", "write_stubs"]


class _Builder(_Stub):
    """Writes the blocks: functions, wrapper classes, plain classes, re-exports."""

    def __init__(self, module: types.ModuleType, wrappers: dict[type, tuple[str, str]]) -> None:
        super().__init__(module, wrappers)
        self.aio_descriptor: str | None = None
        # (async class, method) -> (spec name, its type parameters), for overrides.
        self.specs: dict[tuple[type, str], tuple[str, list[Any]]] = {}

    def spec_lines(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        generator: bool,
        drop_first: bool,
        ctx: _Context,
    ) -> list[str]:
        """A spec class's body: ``__call__`` (sync), ``aio`` (async), ``submit`` (functions)."""
        sig = _signature(fn)
        ind = "    "
        if sig is None:
            sync_params = raw_params = ["self", "*args: Any", "**kwargs: Any"]
        else:
            sync_params = ["self", *self.params(sig, ctx, "in", drop_first=drop_first)]
            raw_params = ["self", *self.params(sig, ctx, "raw", drop_first=drop_first)]
        raw_result = self.result(sig, "raw", ctx)
        body = _class_doc(fn, ind)
        if generator:
            ret = sig.return_annotation if sig else Any
            if ret is inspect.Parameter.empty:
                ret = typing.AsyncGenerator[Any, Any]
            if typing.get_origin(ret) is not collections.abc.AsyncGenerator:
                ret = typing.AsyncGenerator[_yield_of(ret), None]  # type: ignore[misc]
            sync_result = self.fmt(ret, "out", ctx)
            body += [
                _def(ind, "__call__", sync_params, sync_result),
                _def(ind, "aio", raw_params, raw_result),
            ]
        else:
            sync_result = self.result(sig, "out", ctx)
            future = self.ref(_future_class())
            body += [
                _def(ind, "__call__", sync_params, sync_result),
                _def(ind, "aio", raw_params, raw_result, prefix="async "),
                _def(ind, "submit", sync_params, f"{future}[{sync_result}]"),
            ]
        return body

    def spec_class(
        self, name: str, bases: Sequence[str], params: Sequence[str], body: list[str]
    ) -> list[str]:
        all_bases = [*bases]
        if params and not bases:
            all_bases.append(f"{self.typing_name('Generic')}[{', '.join(params)}]")
        head = f"class {name}({', '.join(all_bases)}):" if all_bases else f"class {name}:"
        return [f"@{self.typing_name('type_check_only')}", head, *_strip(body)]

    # --- module-level names --------------------------------------------------

    def function(
        self,
        name: str,
        fn: Callable[..., Any],
        indent: str = "",
        first: str | None = None,
        mode: str = "raw",
    ) -> list[str]:
        """A ``def`` for *fn*; *first* replaces its first parameter (``self``, ``cls``)."""
        ctx = _Context()
        sig = _signature(fn)
        if sig is None:
            params = ["*args: Any", "**kwargs: Any"]
        else:
            params = self.params(
                sig, ctx, "in" if mode == "out" else "raw", drop_first=first is not None
            )
        if first is not None:
            params.insert(0, first)
        prefix = "async " if inspect.iscoroutinefunction(fn) else ""
        ret = sig.return_annotation if sig else Any
        if _is_acm_function(fn):
            ret = contextlib.AbstractAsyncContextManager[_yield_of(ret)]  # type: ignore[misc]
        if name == "__init__":
            ret = None
        result = self.fmt(ret, mode, ctx)
        return [
            _def(indent, name, params, result, prefix=prefix, doc=_docstring(fn, indent + "    "))
        ]

    def blocking_function(self, name: str, obj: Any) -> None:
        spec = self.private(f"_{name}_spec")
        generator = isinstance(obj, BlockingGeneratorFunction)
        body = self.spec_lines(spec, obj.aio, generator=generator, drop_first=False, ctx=_Context())
        self.blocks.append(self.spec_class(spec, [], [], body))
        self.blocks.append([f"{name}: {spec}"])

    def value(self, name: str, obj: Any) -> None:
        annotations = getattr(self.module, "__annotations__", {})
        ctx = _Context()
        if isinstance(obj, (typing.TypeVar, typing.ParamSpec)):
            self.typevar(obj, ctx)
            return
        hint = annotations.get(name, type(obj))
        if isinstance(hint, str):
            try:
                hint = eval(hint, vars(self.module))
            except Exception:
                hint = type(obj)
        self.blocks.append([f"{name}: {self.fmt(hint, 'raw', ctx)}"])

    def reexport(self, name: str, obj: Any) -> bool:
        """``from M import X as name`` for an object defined elsewhere; False if it is not."""
        if isinstance(obj, types.ModuleType):
            parent, _, leaf = obj.__name__.rpartition(".")
            if parent:
                self.from_imports.setdefault(parent, set()).add(f"{leaf} as {name}")
            else:
                self.imports.add(f"{obj.__name__} as {name}")
            return True
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(qualname, str) or module == self.name:
            return False
        if "." in qualname or "<" in qualname:
            return False
        source = sys.modules.get(module)
        if source is None or getattr(source, qualname, None) is not obj:
            return False
        self.from_imports.setdefault(module, set()).add(f"{qualname} as {name}")
        return True

    def plain_class(self, name: str, cls: type) -> None:
        ctx = _Context()
        orig = cls.__dict__.get("__orig_bases__", cls.__bases__)
        bases = [b for b in (self.fmt(b, "raw", ctx) for b in orig) if b != "object"]
        head = f"class {name}({', '.join(bases)}):" if bases else f"class {name}:"
        body = _class_doc(cls, "    ")
        for attr, hint in _class_annotations(cls).items():
            if not attr.startswith("_"):
                body.append(f"    {attr}: {self.fmt(hint, 'raw', ctx)}")
        for attr, raw in cls.__dict__.items():
            if not attr.startswith("_") or attr == "__init__":
                body += self.member(attr, raw, "raw")
        self.blocks.append([head, *(_strip(body) or ["    ..."])])

    def member(self, attr: str, raw: Any, mode: str) -> list[str]:
        """A sync member of a class: method, staticmethod, classmethod or property."""
        ind = "    "
        if isinstance(raw, staticmethod):
            return [f"{ind}@staticmethod", *self.function(attr, raw.__func__, ind, mode=mode)]
        if isinstance(raw, classmethod):
            return [f"{ind}@classmethod", *self.function(attr, raw.__func__, ind, "cls", mode=mode)]
        if isinstance(raw, property) and raw.fget is not None:
            lines = [f"{ind}@property", *self.function(attr, raw.fget, ind, "self", mode=mode)]
            if raw.fset is not None:
                sig = _signature(raw.fset)
                params = (
                    self.params(sig, _Context(), "in" if mode == "out" else "raw", drop_first=True)
                    if sig
                    else ["value: Any"]
                )
                lines += [f"{ind}@{attr}.setter", _def(ind, attr, ["self", *params], "None")]
            return lines
        if inspect.isfunction(raw):
            return self.function(attr, raw, ind, "self", mode=mode)
        return []

    # --- wrapper classes -----------------------------------------------------

    def aio_type(self) -> str:
        if self.aio_descriptor is None:
            name = self.aio_descriptor = self.private("_Aio")
            t = self.typevar(_AIO, _Context())
            over, anyt = self.typing_name("overload"), self.typing_name("Any")
            self.blocks.insert(
                0,
                [
                    f"@{self.typing_name('type_check_only')}",
                    f"class {name}({self.typing_name('Generic')}[{t}]):",
                    '    """``Wrapper.aio``: the async class; ``wrapper.aio``: the async one."""',
                    f"    @{over}",
                    f"    def __get__(self, instance: None, owner: type[{anyt}], /)"
                    f" -> type[{t}]: ...",
                    f"    @{over}",
                    f"    def __get__(self, instance: object, owner: type[{anyt}] | None = None, /)"
                    f" -> {t}: ...",
                ],
            )
        return self.aio_descriptor

    def wrapper_class(self, name: str, wrapper: type) -> None:
        cls: type = wrapper.__dict__["__aio_class__"]
        tparams = list(getattr(cls, "__parameters__", ()))
        ctx = _Context()
        raw_self = self.fmt(cls[tuple(tparams)] if tparams else cls, "raw", ctx)  # type: ignore[index]
        bases: list[str] = []
        mirrored: list[type] = []
        generic: list[Any] | None = None
        for base in cls.__dict__.get("__orig_bases__", cls.__bases__):
            origin = typing.get_origin(base) or base
            if origin in (typing.Generic, typing.Protocol):
                generic = list(typing.get_args(base))
            elif origin in self.wrappers:
                bases.append(self.fmt(base, "in", ctx))
                mirrored.append(origin)
        if not mirrored:
            bases.insert(0, f"{self.ref(BlockingObject)}[{raw_self}]")
        if generic:
            names = ", ".join(self.typevar(t, ctx) for t in generic)
            bases.append(f"{self.typing_name('Generic')}[{names}]")
        covered = {k for m in mirrored for k in m.__mro__}
        section = [
            k
            for k in cls.__mro__
            if k not in covered and k is not object and k.__module__ not in _UNMIRRORED
        ]
        ind = "    "
        body = _class_doc(cls, ind)
        body.append(f"{ind}aio: {self.aio_type()}[{raw_self}]")
        members: dict[str, tuple[type, Any]] = {}
        hints: dict[str, Any] = {}
        for k in reversed(section):
            members.update((a, (k, v)) for a, v in k.__dict__.items())
            hints.update(_class_annotations(k))
        for attr, hint in hints.items():
            if not attr.startswith("_") and not isinstance(
                members.get(attr, (0, None))[1], (property, types.FunctionType)
            ):
                body.append(f"{ind}{attr}: {self.fmt(hint, 'out', _Context())}")
        init_owner = _owner(cls, "__init__")
        if init_owner in section:
            assert init_owner is not None
            body += self.function(
                "__init__", init_owner.__dict__["__init__"], ind, "self", mode="out"
            )
        elif not mirrored:
            body.append(f"{ind}def __init__(self) -> None: ...")
        for attr, (_, raw) in members.items():
            if attr.startswith("_") or (attr in hints and not callable(raw)):
                continue
            body += self.wrapper_member(attr, raw, cls, raw_self=raw_self, mirrored=mirrored)
        body += self.protocols(cls, covered, raw_self)
        self.blocks.append([f"class {name}({', '.join(bases)}):", *_strip(body)])

    def wrapper_member(
        self, attr: str, raw: Any, cls: type, *, raw_self: str, mirrored: list[type]
    ) -> list[str]:
        ind = "    "
        fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        generator = inspect.isasyncgenfunction(fn)
        if not (generator or inspect.iscoroutinefunction(fn)):
            if isinstance(raw, (property, staticmethod, classmethod, types.FunctionType)):
                return self.member(attr, raw, "out")
            if isinstance(raw, type) or callable(raw):
                return []
            return [f"{ind}{attr}: {self.fmt(type(raw), 'out', _Context())}"]
        bound = isinstance(raw, types.FunctionType)
        wrapper_name = self.wrappers[cls][1]
        ctx = _Context(self_out="_Self" if bound else wrapper_name, self_raw=raw_self)
        ctx.raw_params = list(getattr(cls, "__parameters__", ()))
        spec = self.private(f"_{wrapper_name}_{attr}")
        body = self.spec_lines(
            spec, fn, generator=generator, drop_first=not isinstance(raw, staticmethod), ctx=ctx
        )
        params = [t for t in ctx.typevars if t in getattr(cls, "__parameters__", ())]
        if ctx.uses_self_out and bound:
            self.typevars.setdefault("_Self", _SELF)
            params.append(_SELF)
        names = [t.__name__ for t in params]
        spec_bases: list[str] = []
        ignore = ""
        overridden = next((m for m in mirrored if hasattr(m, attr)), None)
        if overridden is not None:
            found = next(
                (self.specs[(k, attr)] for k in overridden.__mro__ if (k, attr) in self.specs), None
            )
            if found is not None and all(t is _SELF for t in found[1]):
                base_spec, base_params = found
                spec_bases.append(f"{base_spec}[_Self]" if base_params else base_spec)
                if base_params and _SELF not in params:
                    self.typevars.setdefault("_Self", _SELF)
                    params.append(_SELF)
                    names.append("_Self")
                if names:
                    spec_bases.append(f"{self.typing_name('Generic')}[{', '.join(names)}]")
            else:
                ignore = "  # type: ignore[assignment]"
        self.specs[(cls, attr)] = (spec, params)
        self.blocks.append(self.spec_class(spec, spec_bases, names, body))
        args = [self.typing_name("Self") if t is _SELF else t.__name__ for t in params]
        annotation = f"{spec}[{', '.join(args)}]" if args else spec
        return [f"{ind}{attr}: {annotation}{ignore}"]

    def protocols(self, cls: type, covered: set[type], raw_self: str) -> list[str]:
        """``__enter__``/``__exit__`` and ``__iter__``/``__next__`` from their async twins."""
        ind = "    "
        lines: list[str] = []

        def result(name: str, default: Any) -> tuple[bool, Any]:
            owner = _owner(cls, name)
            if owner is None:
                return False, None
            fn = owner.__dict__[name]
            sig = _signature(fn)
            ret = sig.return_annotation if sig else inspect.Parameter.empty
            if ret is inspect.Parameter.empty:
                ret = default
            return owner not in covered, (fn, ret)

        self_type = typing_self()
        enter_new, enter = result("__aenter__", self_type)
        exit_new, exit_ = result("__aexit__", bool | None)
        if enter and exit_ and (enter_new or exit_new):
            ret = enter[1]
            if ret is cls:
                ret = self_type
            ctx = _Context()
            tb = self._from("types", "TracebackType")
            params = ["self", *(p.format(tb=tb) for p in _EXIT_PARAMS)]
            lines.append(_def(ind, "__enter__", ["self"], self.fmt(ret, "out", ctx)))
            lines.append(_def(ind, "__exit__", params, self.fmt(exit_[1], "out", ctx)))
        iter_new, aiter = result("__aiter__", self_type)
        if aiter and iter_new:
            fn, ret = aiter
            if ret is cls or ret is cls.__name__:
                ret = self_type
            agen = typing.get_origin(ret) is collections.abc.AsyncGenerator
            if inspect.isasyncgenfunction(fn) and not agen:
                ret = typing.AsyncGenerator[_yield_of(ret), None]  # type: ignore[misc]
            lines.append(_def(ind, "__iter__", ["self"], self.fmt(ret, "out", _Context())))
        next_new, anext = result("__anext__", Any)
        if anext and next_new:
            lines.append(_def(ind, "__next__", ["self"], self.fmt(anext[1], "out", _Context())))
        return lines

    # --- the whole module ----------------------------------------------------

    def defining_module(self, name: str, obj: Any) -> str | None:
        """The module of this package that annotates *obj* as its own *name*."""
        top = self.name.partition(".")[0]
        for modname in sorted(sys.modules):
            module = sys.modules[modname]
            if modname == self.name or not (modname == top or modname.startswith(top + ".")):
                continue
            annotated = getattr(module, "__annotations__", {})
            if name in annotated and getattr(module, name, None) is obj:
                return modname
        return None

    def build(self) -> str:
        built: set[str] = set()
        order: list[str] = []

        def visit(name: str) -> None:
            if name in built:
                return
            built.add(name)
            obj = getattr(self.module, name, None)
            if _is_wrapper(obj):
                for base in obj.__dict__["__aio_class__"].__mro__[1:]:
                    home = self.wrappers.get(base)
                    if home is not None and home[0] == self.name and home[1] in self.public:
                        visit(home[1])
            order.append(name)

        for name in self.public:
            visit(name)
        for name in order:
            if not hasattr(self.module, name):
                raise StubError(f"{self.name}.__all__ names {name!r}, which it does not define")
            obj = getattr(self.module, name)
            if isinstance(obj, (BlockingFunction, BlockingGeneratorFunction)):
                self.blocking_function(name, obj)
            elif _is_wrapper(obj):
                home, home_name = self.wrappers[obj.__dict__["__aio_class__"]]
                if home == self.name and home_name == name:
                    self.wrapper_class(name, obj)
                else:
                    self.from_imports.setdefault(home, set()).add(f"{home_name} as {name}")
            elif isinstance(obj, (typing.TypeVar, typing.ParamSpec)):
                self.typevar(obj, _Context())
            elif self.reexport(name, obj):
                pass
            elif (source := self.defining_module(name, obj)) is not None:
                self.from_imports.setdefault(source, set()).add(f"{name} as {name}")
            elif isinstance(obj, type):
                self.plain_class(name, obj)
            elif inspect.isfunction(obj):
                self.blocks.append(self.function(name, obj))
            else:
                self.value(name, obj)
        return self.source()

    def source(self) -> str:
        declarations = [self.declare(tv) for tv in list(self.typevars.values())]
        lines = [f"# Generated by `python -m greenportal.stubgen {self.name}`: do not edit."]
        for stdlib in (True, False):  # the standard library's imports, then the others'
            section = [f"import {m}" for m in sorted(self.imports) if _is_stdlib(m) is stdlib]
            for module in sorted(m for m in self.from_imports if _is_stdlib(m) is stdlib):
                names = sorted(self.from_imports[module], key=_import_order)
                line = f"from {module} import {', '.join(names)}"
                if len(line) > 100:
                    line = "\n".join(
                        [f"from {module} import (", *(f"    {n}," for n in names), ")"]
                    )
                section.append(line)
            lines += [*section, ""] if section else []
        lines += declarations
        previous: list[str] = []
        for block in self.blocks:
            if len(block) > 1 or len(previous) > 1 or block[0].startswith("@"):
                lines.append("")
            lines += block
            previous = block
        return "\n".join(lines).rstrip() + "\n"

    def declare(self, tv: Any) -> str:
        kind = "ParamSpec" if isinstance(tv, typing.ParamSpec) else "TypeVar"
        args = [f'"{tv.__name__}"']
        ctx = _Context()
        if isinstance(tv, typing.TypeVar):
            args += [self.fmt(c, "raw", ctx) for c in tv.__constraints__]
            if tv.__bound__ is not None:
                args.append(f"bound={self.fmt(tv.__bound__, 'raw', ctx)}")
        if tv.__covariant__:
            args.append("covariant=True")
        if tv.__contravariant__:
            args.append("contravariant=True")
        return f"{tv.__name__} = {self.typing_name(kind)}({', '.join(args)})"


def typing_self() -> Any:
    """A stand-in for ``Self`` where an annotation is missing (written as ``Self``)."""
    return _SelfMarker


# --- the command -------------------------------------------------------------


def _import(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise StubError(f"no module named {name!r}") from None
        raise StubError(f"cannot import {name!r}: {type(error).__name__}: {error}") from None
    except (Exception, SystemExit) as error:
        raise StubError(f"cannot import {name!r}: {type(error).__name__}: {error}") from None


def _wrappers(modules: Iterable[types.ModuleType]) -> dict[type, tuple[str, str]]:
    found: dict[type, tuple[str, str]] = {}
    for module in modules:
        for name in _public_names(module):
            obj = getattr(module, name, None)
            if _is_wrapper(obj):
                found.setdefault(obj.__dict__["__aio_class__"], (module.__name__, name))
    return found


def generate(module: types.ModuleType | str, *, also: Iterable[types.ModuleType | str] = ()) -> str:
    """The stub of *module*; *also*: other modules whose wrappers its annotations may name."""
    mod = _import(module) if isinstance(module, str) else module
    others = [_import(m) if isinstance(m, str) else m for m in also]
    return _Builder(mod, _wrappers([mod, *others])).build()


def stub_path(module: types.ModuleType, outdir: Path | None = None) -> Path:
    """Where *module*'s stub goes: beside its source, or under *outdir*."""
    is_package = hasattr(module, "__path__")
    parts = module.__name__.split(".")
    if outdir is not None:
        return (
            outdir.joinpath(*parts, "__init__.pyi")
            if is_package
            else outdir.joinpath(*parts[:-1], parts[-1] + ".pyi")
        )
    source = getattr(module, "__file__", None)
    if not source:
        raise StubError(f"module {module.__name__!r} has no source file; use -o OUTDIR")
    folder = Path(source).parent
    return folder / "__init__.pyi" if is_package else folder / (parts[-1] + ".pyi")


def write_stubs(names: Sequence[str], outdir: Path | None = None) -> list[Path]:
    """Generate every stub first, then write each (through a temporary file, renamed)."""
    modules = [_import(name) for name in names]
    stubs = [(stub_path(m, outdir), generate(m, also=modules)) for m in modules]
    for path, text in stubs:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return [path for path, _ in stubs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m greenportal.stubgen",
        description="Write type stubs (.pyi) for modules that export blocking() APIs.",
    )
    parser.add_argument("modules", nargs="+", metavar="MODULE", help="a module to import")
    parser.add_argument(
        "-o",
        "--outdir",
        type=Path,
        help="write under OUTDIR (default: beside each module's source)",
    )
    args = parser.parse_args(argv)
    try:
        paths = write_stubs(args.modules, args.outdir)
    except StubError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
