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

__all__ = ["StubError", "generate", "main", "write_stubs"]


class StubError(Exception):
    """A module could not be imported or found, or its stub not written."""


# Results are translated: async protocol -> sync protocol.
_SYNC_OF: dict[Any, Any] = {
    collections.abc.AsyncIterator: collections.abc.Iterator,
    collections.abc.AsyncIterable: collections.abc.Iterable,
    contextlib.AbstractAsyncContextManager: contextlib.AbstractContextManager,
}
# Containers whose elements (dict: values) the runtime translates.
_ELEMENTWISE = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)
# Names imported with ``from MODULE import NAME`` rather than as ``MODULE.NAME``.
_FROM_MODULES = ("typing", "typing_extensions", "collections.abc", "contextlib", "types")
# Bases a wrapper class does not mirror.
_UNMIRRORED = ("builtins", "abc", "typing", "typing_extensions", "collections.abc", "contextlib")
_SPECIAL_FORMS = {
    "Any",
    "ClassVar",
    "Final",
    "Literal",
    "LiteralString",
    "NoReturn",
    "Never",
    "TypeAlias",
    "TypeGuard",
    "Concatenate",
}


async def _sample() -> Any:  # pragma: no cover - never run; its decorated code object is
    yield None


_ACM_CODE = contextlib.asynccontextmanager(_sample).__code__


def _is_acm_function(fn: Any) -> bool:
    """Whether *fn* is what ``@asynccontextmanager`` made of an async generator function."""
    return getattr(fn, "__code__", None) is _ACM_CODE and hasattr(fn, "__wrapped__")


class _SelfMarkerType:
    _name = "Self"


_SelfMarker = _SelfMarkerType()


def _is_self(tp: Any) -> bool:
    if tp is _SelfMarker:
        return True
    return getattr(tp, "_name", None) == "Self" and type(tp).__module__ in (
        "typing",
        "typing_extensions",
    )


def _is_wrapper(obj: Any) -> bool:
    return (
        isinstance(obj, type)
        and issubclass(obj, BlockingObject)
        and isinstance(obj.__dict__.get("__aio_class__"), type)
    )


def _public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [n for n in vars(module) if not n.startswith("_")]


def _signature(fn: Any) -> inspect.Signature | None:
    """*fn*'s signature, string annotations evaluated where they can be."""
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, SyntaxError, TypeError, AttributeError):
        pass
    try:
        sig = inspect.signature(fn)
    except (ValueError, TypeError):
        return None
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})

    def evaluate(annotation: Any) -> Any:
        if not isinstance(annotation, str):
            return annotation
        try:
            return eval(annotation, namespace)
        except Exception:  # unresolvable (a TYPE_CHECKING import): typed as Any
            return Any

    params = [p.replace(annotation=evaluate(p.annotation)) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=evaluate(sig.return_annotation))


def _class_annotations(cls: type) -> dict[str, Any]:
    try:
        return inspect.get_annotations(cls, eval_str=True)
    except Exception:
        raw = inspect.get_annotations(cls)
        module = sys.modules.get(cls.__module__)
        namespace = dict(vars(module)) if module else {}
        result = {}
        for name, value in raw.items():
            try:
                result[name] = eval(value, namespace) if isinstance(value, str) else value
            except Exception:
                result[name] = Any
        return result


def _is_stdlib(module: str) -> bool:
    return module.partition(".")[0] in sys.stdlib_module_names


def _import_order(name: str) -> tuple[int, str]:
    """isort's order by type: CONSTANTS, then Classes, then functions."""
    bare = name.partition(" ")[0]
    kind = 0 if bare.isupper() and len(bare) > 1 else 1 if bare[:1].isupper() else 2
    return kind, bare


def _class_doc(cls: Any, indent: str) -> list[str]:
    """A class's docstring, and the blank line that follows it."""
    doc = _docstring(cls, indent)
    return [*doc, ""] if doc else []


def _strip(body: list[str]) -> list[str]:
    return body[:-1] if body and body[-1] == "" else body


def _docstring(obj: Any, indent: str) -> list[str]:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return []
    text = inspect.cleandoc(doc).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    lines = text.splitlines()
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    body = [f"{indent}{line}" if line else "" for line in lines[1:]]
    return [f'{indent}"""{lines[0]}', *body, f'{indent}"""']


class _Context:
    """How one signature's annotations are written: what ``Self`` is, which TypeVars it used."""

    def __init__(self, self_out: str | None = None, self_raw: str | None = None) -> None:
        self.self_out = self_out  # Self in the sync API (a TypeVar or the wrapper's name)
        self.self_raw = self_raw  # Self in the async API (the async class)
        self.uses_self_out = False
        self.raw_params: list[Any] = []  # the class's TypeVars, which self_raw names
        self.typevars: list[Any] = []


class _Stub:
    """The stub of one module, built up piece by piece and rendered by :meth:`source`."""

    def __init__(self, module: types.ModuleType, wrappers: dict[type, tuple[str, str]]) -> None:
        self.module = module
        self.name = module.__name__
        self.wrappers = wrappers  # async class -> (module, wrapper name)
        self.public = _public_names(module)
        self.local: dict[int, str] = {}
        for name in self.public:
            if hasattr(module, name):
                self.local.setdefault(id(getattr(module, name)), name)
        self.reserved = set(self.public)
        self.imports: set[str] = set()
        self.from_imports: dict[str, set[str]] = {}
        self.typevars: dict[str, Any] = {}
        self.blocks: list[list[str]] = []
        self.private_names: set[str] = set()

    # --- names ---------------------------------------------------------------

    def _from(self, module: str, name: str) -> str:
        if name in self.reserved:
            self.imports.add(module)
            return f"{module}.{name}"
        self.from_imports.setdefault(module, set()).add(name)
        return name

    def typing_name(self, name: str) -> str:
        return self._from("typing_extensions" if name == "Self" else "typing", name)

    def ref(self, obj: Any) -> str:
        """How the stub names the class (or other object) *obj*."""
        if obj is None or obj is type(None):
            return "None"
        local = self.local.get(id(obj))
        if local is not None and getattr(self.module, local, None) is obj:
            return local
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
            return self.typing_name("Any")
        if module == "builtins":
            return qualname
        if module in _FROM_MODULES and "." not in qualname:
            return self._from(module, qualname)
        parts = module.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            owner = sys.modules.get(prefix)
            if owner is not None and getattr(owner, qualname, None) is obj:
                module = prefix
                break
        if module in _FROM_MODULES and "." not in qualname:
            return self._from(module, qualname)
        if module == self.name:
            return qualname
        self.imports.add(module)
        return f"{module}.{qualname}"

    def wrapper_ref(self, cls: type) -> str:
        module, name = self.wrappers[cls]
        if module == self.name:
            return name
        self.from_imports.setdefault(module, set()).add(name)
        return name

    def private(self, wanted: str) -> str:
        name, n = wanted, 2
        while name in self.private_names or name in self.reserved:
            name, n = f"{wanted}{n}", n + 1
        self.private_names.add(name)
        return name

    def typevar(self, tv: Any, ctx: _Context) -> str:
        name = str(tv.__name__)
        if tv not in ctx.typevars:
            ctx.typevars.append(tv)
        if self.typevars.setdefault(name, tv) is not tv:  # pragma: no cover - rare
            raise StubError(f"{self.name}: two different TypeVars are both named {name!r}")
        return name

    # --- annotations ---------------------------------------------------------

    def fmt(self, tp: Any, mode: str, ctx: _Context) -> str:
        """*tp* written for the stub.

        *mode* ``"out"``: a result, translated as the runtime translates
        values; ``"in"``: an argument (a wrapper stands for its async class,
        at the top level and in unions); ``"raw"``: as written (the async API).
        """
        if tp is inspect.Parameter.empty or tp is Any:
            return self.typing_name("Any")
        if isinstance(tp, (str, typing.ForwardRef)):  # unevaluated: nothing to say
            return self.typing_name("Any")
        if tp is None or tp is type(None):
            return "None"
        if tp is Ellipsis:
            return "..."
        if isinstance(tp, list):
            return "[" + ", ".join(self.fmt(a, mode, ctx) for a in tp) + "]"
        if _is_self(tp):
            if mode == "raw" and ctx.self_raw is not None:
                for tv in ctx.raw_params:
                    self.typevar(tv, ctx)
                return ctx.self_raw
            if mode != "raw" and ctx.self_out is not None:
                ctx.uses_self_out = True
                return ctx.self_out
            return self.typing_name("Self")
        if isinstance(tp, (typing.TypeVar, typing.ParamSpec, _Var)):
            return self.typevar(tp, ctx)
        if isinstance(tp, typing.ParamSpecArgs):
            return f"{self.typevar(tp.__origin__, ctx)}.args"
        if isinstance(tp, typing.ParamSpecKwargs):
            return f"{self.typevar(tp.__origin__, ctx)}.kwargs"
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        inner = "raw" if mode == "in" else mode
        if origin is typing.Union or isinstance(tp, types.UnionType):
            members = [self.fmt(a, mode, ctx) for a in args if a is not type(None)]
            if type(None) in args:
                members.append("None")
            return " | ".join(dict.fromkeys(members))
        if origin is typing.Literal:
            return self.typing_name("Literal") + "[" + ", ".join(repr(a) for a in args) + "]"
        if origin is typing.Annotated:
            return self.fmt(args[0], mode, ctx)
        name = getattr(tp, "_name", None) or getattr(origin, "_name", None)
        if type(tp).__module__ in ("typing", "typing_extensions") and name in _SPECIAL_FORMS:
            if not args:
                return self.typing_name(name)
            return f"{self.typing_name(name)}[{', '.join(self.fmt(a, inner, ctx) for a in args)}]"
        if origin is None and isinstance(tp, type):
            if mode != "raw" and tp in self.wrappers:
                return self.wrapper_ref(tp)
            if mode == "out" and tp in _SYNC_OF:
                return self.ref(_SYNC_OF[tp])
            if mode == "out" and tp is collections.abc.AsyncGenerator:
                return self.ref(collections.abc.Generator)
            return self.ref(tp)
        if origin is None:
            return self.typing_name("Any")
        if origin is tuple and not args:
            return "tuple[()]"
        if mode == "out":
            if origin is collections.abc.AsyncGenerator:
                y, s = (*args, Any)[:2] if args else (Any, Any)
                gen = self.ref(collections.abc.Generator)
                if s is None or s is type(None):  # Generator's default send and return types
                    return f"{gen}[{self.fmt(y, 'out', ctx)}]"
                return f"{gen}[{self.fmt(y, 'out', ctx)}, {self.fmt(s, 'raw', ctx)}]"
            if origin in _SYNC_OF:
                inner_args = [self.fmt(args[0], "out", ctx)]
                inner_args += [self.fmt(a, "raw", ctx) for a in args[1:]]
                return f"{self.ref(_SYNC_OF[origin])}[{', '.join(inner_args)}]"
        if mode == "out" and origin in _ELEMENTWISE:
            arg_modes = ["out"] * len(args)
        elif mode == "out" and origin in _MAPPINGS:
            arg_modes = ["raw", *["out"] * (len(args) - 1)]
        else:
            arg_modes = ["raw"] * len(args)
        if mode != "raw" and origin in self.wrappers:
            head = self.wrapper_ref(origin)
        else:
            head = self.ref(origin)
        if origin is collections.abc.Callable and args and isinstance(args[0], list):
            params = "[" + ", ".join(self.fmt(a, "raw", ctx) for a in args[0]) + "]"
            return f"{head}[{params}, {self.fmt(args[-1], 'raw', ctx)}]"
        if origin is collections.abc.Callable and len(args) == 2 and args[0] is Ellipsis:
            return f"{head}[..., {self.fmt(args[1], 'raw', ctx)}]"
        written = [self.fmt(a, m, ctx) for a, m in zip(args, arg_modes, strict=True)]
        if origin is collections.abc.Callable:  # Callable[P, R] or Callable[Concatenate[...], R]
            written = [self.fmt(a, "raw", ctx) for a in args]
        return f"{head}[{', '.join(written)}]"

    # --- signatures ----------------------------------------------------------

    def params(
        self, sig: inspect.Signature, ctx: _Context, mode: str, *, drop_first: bool
    ) -> list[str]:
        out: list[str] = []
        params = list(sig.parameters.values())
        if (
            drop_first
            and params
            and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)
        ):
            params = params[1:]
        star_done = False
        for i, p in enumerate(params):
            if p.kind is p.KEYWORD_ONLY and not star_done:
                out.append("*")
                star_done = True
            if p.kind is p.VAR_POSITIONAL:
                star_done = True
            prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
            text = f"{prefix}{p.name}: {self.fmt(p.annotation, mode, ctx)}"
            if p.default is not p.empty:
                text += f" = {_default(p.default)}"
            out.append(text)
            last_positional_only = p.kind is p.POSITIONAL_ONLY and (
                i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY
            )
            if last_positional_only:
                out.append("/")
        return out

    def result(self, sig: inspect.Signature | None, mode: str, ctx: _Context) -> str:
        return self.fmt(sig.return_annotation if sig else Any, mode, ctx)


def _default(value: Any) -> str:
    """A default as the stub writes it: short literals as they are, anything else ``...``."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if type(value) in (int, float) and len(repr(value)) <= 20:
        return repr(value)
    if type(value) is str and len(value) <= 40 and value.isprintable():
        text = repr(value)
        if '"' not in value and "\\" not in text:
            text = f'"{value}"'
        return text
    return "..."


def _def(
    indent: str,
    name: str,
    params: Sequence[str],
    result: str,
    *,
    prefix: str = "",
    doc: Sequence[str] = (),
) -> str:
    """A ``def`` line (``: ...``, or a docstring body), one parameter a line when too long."""
    end = ":" if doc else ": ..."
    one = f"{indent}{prefix}def {name}({', '.join(params)}) -> {result}{end}"
    if len(one) <= 100:
        lines = [one]
    else:
        lines = [f"{indent}{prefix}def {name}(", *(f"{indent}    {p}," for p in params)]
        lines.append(f"{indent}) -> {result}{end}")
    return "\n".join([*lines, *doc])


def _yield_of(annotation: Any) -> Any:
    """The item type of an ``AsyncIterator[T]``/``AsyncGenerator[T, S]`` annotation."""
    args = typing.get_args(annotation)
    return args[0] if args else Any


def _future_class() -> type:
    import concurrent.futures

    return concurrent.futures.Future


class _Var:
    """A TypeVar that only the stub declares (``_Self``, ``_AioT_co``)."""

    __constraints__ = ()
    __bound__ = None
    __contravariant__ = False

    def __init__(self, name: str, *, covariant: bool = False) -> None:
        self.__name__ = name
        self.__covariant__ = covariant


_SELF = _Var("_Self")
_AIO = _Var("_AioT_co", covariant=True)
_EXIT_PARAMS = [
    "exc_type: type[BaseException] | None",
    "exc: BaseException | None",
    "tb: {tb} | None",
]


def _owner(cls: type, name: str) -> type | None:
    return next((k for k in cls.__mro__ if name in k.__dict__), None)


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
