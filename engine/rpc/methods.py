"""The RPC method table.

A handler is ``async def handler(ctx, params) -> result`` or, for a streaming method,
``async def handler(ctx, params, stream) -> result`` where ``await stream.send(item)`` waits
for the client's credit (backpressure). ``params`` arrive as a dict; a handler declares an
attrs class to structure them into, and unknown keys or wrong types become
``InvalidArgument`` naming the field.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.preconf.msgpack import make_converter

from engine.errors import InvalidArgument

T = TypeVar("T")



def _make_strict_converter() -> cattrs.Converter:
    """cattrs coerces by default ("5" -> 5, "ab" -> ["a", "b"]); an RPC must not guess."""
    conv = make_converter(forbid_extra_keys=True)

    def strict(tp: type) -> Callable[[Any, Any], Any]:
        def hook(value: Any, _: Any) -> Any:
            ok = type(value) is tp or (tp is float and type(value) is int)
            if not ok:
                raise TypeError(f"expected {tp.__name__}, got {type(value).__name__}")
            return value

        return hook

    for tp in (str, int, float, bool, bytes):
        conv.register_structure_hook(tp, strict(tp))

    def list_factory(tp: Any, c: cattrs.Converter) -> Callable[[Any, Any], Any]:
        inner = list_structure_factory(tp, c)

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise TypeError(f"expected an array, got {type(value).__name__}")
            return inner(value, t)

        return hook

    def dict_factory(tp: Any, c: cattrs.Converter) -> Callable[[Any, Any], Any]:
        inner = mapping_structure_factory(tp, c)

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a map, got {type(value).__name__}")
            return inner(value, t)

        return hook

    conv.register_structure_hook_factory(lambda t: get_origin(t) is list, list_factory)
    conv.register_structure_hook_factory(lambda t: get_origin(t) is dict, dict_factory)
    return conv


converter = _make_strict_converter()


@attrs.frozen
class MethodInfo:
    name: str
    handler: Callable[..., Awaitable[Any]]
    params_type: type | None
    stream: bool
    doc: str


class MethodTable:
    def __init__(self) -> None:
        self._methods: dict[str, MethodInfo] = {}

    def method(
        self, name: str, *, params: type | None = None, stream: bool = False
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            if name in self._methods:
                raise ValueError(f"RPC method {name} registered twice")
            self._methods[name] = MethodInfo(name, fn, params, stream, (fn.__doc__ or "").strip())
            return fn

        return register

    def get(self, name: str) -> MethodInfo | None:
        return self._methods.get(name)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "stream": m.stream, "doc": m.doc, "params": _describe_params(m)}
            for m in sorted(self._methods.values(), key=lambda m: m.name)
        ]


def _describe_params(info: MethodInfo) -> dict[str, str]:
    if info.params_type is None or not attrs.has(info.params_type):
        return {}
    return {f.name: _type_name(f.type) for f in attrs.fields(info.params_type)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def structure_params(params: dict[str, Any], params_type: type[T], method: str) -> T:
    try:
        return converter.structure(params, params_type)
    except cattrs.ClassValidationError as e:
        problems = "; ".join(cattrs.transform_error(e, path=method))
        raise InvalidArgument(f"invalid parameters for {method}: {problems}") from None
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"invalid parameters for {method}: {e}") from None


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)
