"""Exception groups flattened back into the plain errors callers expect: the one place that
walks a (nested) group.

Nurseries raise groups (trio's strict exception groups); the RPC maps a single
``EngineError`` to a code, the daemon's ``main`` prints each engine error, and the registry's
retry logic looks at ``Unavailable``, not at a group. All three read a group through
``leaves`` here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import EngineError


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` that are not groups, depth first, in order
    (``[exc]`` itself when it is not a group)."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for sub in exc.exceptions for leaf in leaves(sub)]


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) groups; ``exc`` itself when it is no group."""
    return leaves(exc)[0]


def engine_errors(exc: BaseException) -> list[EngineError]:
    """Every ``EngineError`` in ``exc`` when that is all it holds; ``[]`` when it holds
    anything else too (a bug or a cancellation must not be reported as a usage error)."""
    found = leaves(exc)
    if not all(isinstance(e, EngineError) for e in found):
        return []
    return [e for e in found if isinstance(e, EngineError)]


@contextmanager
def unwrap_engine_errors() -> Iterator[None]:
    """Inside: a nursery whose tasks raise engine errors. When every exception in the group
    is an ``EngineError``, the first one is raised alone (the RPC maps it to a code); a group
    with anything else (a bug, a cancellation) propagates unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = engine_errors(group)
        if not errors:
            raise
        raise errors[0] from group


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Inside: a nursery. A group that holds exactly one exception (of any type, at any
    depth) becomes that exception again, so ``except SomeError`` around it still works;
    a group of several propagates unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        found = leaves(group)
        if len(found) != 1:
            raise
        raise found[0] from group
