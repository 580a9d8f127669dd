"""The annotations of greenportal.stubgen: how a stub names types, translated for blocking APIs.

:class:`_Stub` holds what one stub imports and declares, and writes an
annotation three ways (see :meth:`_Stub.fmt`): a result of the blocking API,
translated as the runtime translates values; an argument of it, where a
wrapper stands for its async class; and as written, for the ``.aio`` API.
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from ._blocking import BlockingObject


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


async def _sample() -> Any:  # pragma: no cover - never run: only decorated, below
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
        self.imports.add(module)  # its own module too, for a name the stub does not declare
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
            if origin is contextlib.AbstractAsyncContextManager and args[1:] == (bool | None,):
                args = args[:1]  # 3.13's default exit type, which 3.10-3.12 do not spell out
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
