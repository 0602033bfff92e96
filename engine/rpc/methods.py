"""The RPC method table.

A handler is ``async def handler(ctx, params) -> result`` or, for a streaming method,
``async def handler(ctx, params, stream) -> result`` where ``await stream.send(item)`` waits
for the client's credit (backpressure). A method that takes input from the client
(``input=True``, a streaming method) is ``async def handler(ctx, params, stream, input)``:
``await input.receive()`` (or ``async for item in input``) gives the items the client sends
with ``$stream.in``, and consuming them is what grants the client more credit. ``params`` arrive as a dict; a handler declares an
attrs class to structure them into, and unknown keys or wrong types become
``InvalidArgument`` naming the field.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs

from engine.convert import ValidationError, describe_error, wire
from engine.errors import InvalidArgument

T = TypeVar("T")


@attrs.frozen
class MethodInfo:
    name: str
    handler: Callable[..., Awaitable[Any]]
    params_type: type | None
    stream: bool
    doc: str
    input: bool = False


class MethodTable:
    def __init__(self) -> None:
        self._methods: dict[str, MethodInfo] = {}

    def method(
        self, name: str, *, params: type | None = None, stream: bool = False, input: bool = False
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        if input and not stream:
            raise ValueError(f"RPC method {name}: a method that takes input must stream")

        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            if name in self._methods:
                raise ValueError(f"RPC method {name} registered twice")
            self._methods[name] = MethodInfo(name, fn, params, stream, (fn.__doc__ or "").strip(),
                                             input)
            return fn

        return register

    def get(self, name: str) -> MethodInfo | None:
        return self._methods.get(name)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "stream": m.stream, "input": m.input, "doc": m.doc,
             "params": _describe_params(m)}
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
        return wire.structure(params, params_type)
    except ValidationError as e:
        problems = describe_error(e, path=method)
        raise InvalidArgument(f"invalid parameters for {method}: {problems}") from None
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"invalid parameters for {method}: {e}") from None


def unstructure(obj: Any) -> Any:
    return wire.unstructure(obj)
