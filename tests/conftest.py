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
