"""Plugin contracts: the built-ins implement every method the engine calls, and a plugin
object that lacks one is refused at registration, by name (never discovered later by a
failing call or probed for with getattr)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InvalidArgument
from engine.plugin import Register, Runtime, StorageDriver
from engine.pluginmanager import load_plugins
from engine.plugins.runc.runtime import RuncRuntime


def test_the_built_in_plugins_register_complete_objects(tmp_path: Path) -> None:
    loaded = load_plugins({"root": str(tmp_path / "root"), "run_root": str(tmp_path / "run"),
                           "config_dir": str(tmp_path / "etc"), "plugins": {}})
    assert not loaded.failed, loaded.failed
    register = loaded.register
    assert {"runc", "crun"} <= set(register.runtimes)
    assert "overlay" in register.storage_drivers
    assert register.registry_clients
    for runtime in register.runtimes.values():
        assert isinstance(runtime, Runtime)
    for driver in register.storage_drivers.values():
        assert isinstance(driver, StorageDriver)


class HalfARuntime:
    """A runtime that forgot ``exec`` and ``adapt_spec``."""

    name = "half"

    def __init__(self) -> None:
        whole = RuncRuntime(Path("/nonexistent"))
        for member in ("availability", "create", "create_when_ready", "start", "kill", "pause",
                       "resume", "delete", "state", "wait_exit", "read_exit"):
            setattr(self, member, getattr(whole, member))


def test_an_incomplete_runtime_is_refused_by_name() -> None:
    register = Register(current_plugin="broken-plugin")
    with pytest.raises(InvalidArgument) as info:
        register.runtime(HalfARuntime())  # type: ignore[arg-type]
    message = str(info.value)
    assert "broken-plugin" in message and "adapt_spec" in message and "exec" in message
    assert "half" not in register.runtimes


def test_an_incomplete_storage_driver_is_refused_by_name() -> None:
    class NoCleanup:
        name = "partial"

    register = Register(current_plugin="p")
    with pytest.raises(InvalidArgument, match="cleanup_stale"):
        register.storage_driver(NoCleanup())  # type: ignore[arg-type]
