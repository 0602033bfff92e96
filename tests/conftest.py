"""Shared fixtures. Every test gets its own --root/--run-root; nothing touches the defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.testing.daemon import Daemon


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="run the long variants of bounded tests (fuzzing: many more frames)")


@pytest.fixture
def slow(request: pytest.FixtureRequest) -> bool:
    """True under `pytest --slow`: a bounded test may then run its long variant."""
    return bool(request.config.getoption("--slow"))
