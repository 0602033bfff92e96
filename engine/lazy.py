"""Modules imported at their first use, to keep the idle daemon small.

The daemon imports every plugin at start, but most of them need their heavy libraries
only for some requests: httpx (with httpcore, h11 and email, ~3 MiB) only once a registry
is contacted, trio-websocket only with a WebSocket listener. Code names such a module as
usual (``httpx.AsyncClient``), through a ``LazyModule`` at run time and the real module
under TYPE_CHECKING, so type checks are unchanged:

    if TYPE_CHECKING:
        import httpx
    else:
        httpx = LazyModule("httpx")
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``; the first attribute read imports it (and runs
    ``on_import`` with it once, e.g. to tune it), later reads go straight to it."""

    def __init__(self, name: str, on_import: Callable[[ModuleType], None] | None = None) -> None:
        self._name = name
        self._on_import = on_import
        self._module: ModuleType | None = None
        self._lock = threading.Lock()  # worker threads may be first to use it

    def load(self) -> ModuleType:
        module = self._module
        if module is not None:
            return module
        with self._lock:
            if self._module is None:
                module = importlib.import_module(self._name)
                if self._on_import is not None:
                    self._on_import(module)
                self._module = module
            return self._module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"
