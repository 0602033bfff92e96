"""Turn a nursery's exception group back into the one engine error callers expect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import EngineError


@contextmanager
def unwrap_engine_errors() -> Iterator[None]:
    """Inside: a nursery whose tasks raise engine errors. When every exception in the group
    is an ``EngineError``, the first one is raised alone (the RPC maps it to a code); a group
    with anything else (a bug, a cancellation) propagates unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, rest = group.split(EngineError)
        if matched is None or rest is not None:
            raise
        first = _first_leaf(matched)
        raise first from group


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) groups; ``exc`` itself when it is no group."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _first_leaf(group: BaseExceptionGroup[EngineError]) -> EngineError:
    exc = first_leaf(group)
    assert isinstance(exc, EngineError)
    return exc
