"""engine.errgroup: the one place exception groups are flattened."""

from __future__ import annotations

import pytest
import trio

from engine.errgroup import (
    engine_errors,
    first_leaf,
    leaves,
    unwrap_engine_errors,
    unwrap_single_error,
)
from engine.errors import InvalidArgument, NotFound, Unavailable


def test_leaves_walk_nested_groups_in_order() -> None:
    a, b, c = NotFound("a"), ValueError("b"), InvalidArgument("c")
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [a, b]), c])
    assert leaves(group) == [a, b, c]
    assert leaves(a) == [a]
    assert first_leaf(group) is a and first_leaf(c) is c


def test_engine_errors_of_a_nested_group() -> None:
    # Two engine errors inside one sub-group: all are reported (the daemon's old copy
    # compared against the top level's length and reported none).
    a, b, c = NotFound("a"), InvalidArgument("b"), Unavailable("c")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [a, b]), c])
    assert engine_errors(group) == [a, b, c]
    assert engine_errors(a) == [a]


def test_engine_errors_refuses_a_group_with_anything_else() -> None:
    group = ExceptionGroup("g", [NotFound("a"), RuntimeError("bug")])
    assert engine_errors(group) == []
    assert engine_errors(RuntimeError("bug")) == []


async def test_unwrap_engine_errors_raises_the_first_engine_error() -> None:
    async def fail(exc: Exception) -> None:
        raise exc

    with pytest.raises(NotFound, match="gone") as info:
        with unwrap_engine_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail, NotFound("gone"))
    assert isinstance(info.value.__cause__, BaseExceptionGroup)


async def test_unwrap_engine_errors_keeps_a_group_with_a_bug() -> None:
    with pytest.raises(ExceptionGroup) as info:
        with unwrap_engine_errors():
            raise ExceptionGroup("g", [NotFound("a"), KeyError("bug")])
    assert len(info.value.exceptions) == 2


def test_unwrap_single_error_unwraps_one_leaf_of_any_type() -> None:
    with pytest.raises(OSError, match="disk"):
        with unwrap_single_error():
            raise ExceptionGroup("outer", [ExceptionGroup("inner", [OSError("disk")])])


def test_unwrap_single_error_keeps_several() -> None:
    with pytest.raises(ExceptionGroup):
        with unwrap_single_error():
            raise ExceptionGroup("g", [Unavailable("a"), Unavailable("b")])
