"""The ``overlay`` storage driver: safe layer unpacking and overlayfs root filesystems."""

from __future__ import annotations

from .driver import OverlayDriver, StaleReport

__all__ = ["OverlayDriver", "StaleReport"]
