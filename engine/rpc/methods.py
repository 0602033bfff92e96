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

import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs

from engine.convert import ValidationError, describe_error, wire, wire_keys
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


# An error message names at most this many characters of what was wrong: a hostile request
# (a map of a million unknown keys) must not get an answer the size of itself.
MAX_ERROR_TEXT = 2048
# unknown keys an error names before it only counts the rest
NAMED_EXTRA_KEYS = 10


def clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def forget_traceback(exc: BaseException, *, clear_frames: bool = False) -> None:
    """Drop what a failure of the client's making keeps alive: the frames of its traceback
    (and of every exception grouped or chained under it) hold the request's params, often
    in reference cycles that only a full collection would free. ``clear_frames`` also
    empties those frames, which is only safe when none of them can be a suspended
    coroutine's (Python 3.11 finalises a coroutine whose frame is cleared)."""
    pending = [exc]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            if clear_frames:
                traceback.clear_frames(e.__traceback__)
            e.__traceback__ = None
        pending.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        e.__cause__ = e.__context__ = None
        pending.extend(getattr(e, "exceptions", ()))


def structure_params(params: dict[str, Any], params_type: type[T], method: str) -> T:
    if isinstance(params, dict) and attrs.has(params_type):
        # Named before cattrs runs: it would build an error per unknown key.
        known = wire_keys(params_type)
        extra = [k for k in params if k not in known]
        if extra:
            named = ", ".join(clip(repr(k), 100) for k in extra[:NAMED_EXTRA_KEYS])
            more = f" and {len(extra) - NAMED_EXTRA_KEYS} more" if len(extra) > NAMED_EXTRA_KEYS else ""
            raise InvalidArgument(
                f"invalid parameters for {method}: extra fields found ({named}{more}); "
                "`rpc.describe` lists each method's fields")
    try:
        return wire.structure(params, params_type)
    except ValidationError as e:
        problems = describe_error(e, path=method)
        forget_traceback(e, clear_frames=True)  # cattrs' own frames, all finished
    except (TypeError, ValueError) as e:
        problems = str(e)
        forget_traceback(e, clear_frames=True)
    # Raised out here, not in the except blocks, so it carries no context (and no params).
    raise InvalidArgument(f"invalid parameters for {method}: {clip(problems)}")


def unstructure(obj: Any) -> Any:
    return wire.unstructure(obj)
