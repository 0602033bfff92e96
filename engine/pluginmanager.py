"""Loading plugins: built-ins and third parties alike come from the ``engine.plugins``
entry-point group.

``ENGINE_DISABLED_PLUGINS=a,b`` blocks plugins by entry-point name; ``ENGINE_TRACE_PLUGINS=1``
logs every hook call. A plugin that fails to import is reported (``system.info`` lists it
with the error) instead of taking the daemon down.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import Any

import attrs
import pluggy

from engine import hookspecs
from engine.plugin import ENTRY_POINT_GROUP, CredentialsLookup, Register, RegistryCredentials

log = logging.getLogger("engine.plugins")


@attrs.define
class LoadedPlugins:
    manager: pluggy.PluginManager
    register: Register
    loaded: dict[str, str] = attrs.field(factory=dict)  # plugin name -> module/dist
    failed: dict[str, str] = attrs.field(factory=dict)  # plugin name -> error
    disabled: list[str] = attrs.field(factory=list)


def _disabled_names() -> list[str]:
    return [n.strip() for n in os.environ.get("ENGINE_DISABLED_PLUGINS", "").split(",") if n.strip()]


def load_plugins(config: dict[str, Any], extra: list[tuple[str, object]] | None = None) -> LoadedPlugins:
    pm = pluggy.PluginManager("engine")
    pm.add_hookspecs(hookspecs)
    result = LoadedPlugins(pm, Register(), disabled=_disabled_names())
    for name in result.disabled:
        pm.set_blocked(name)

    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or pm.is_blocked(ep.name):
            continue
        seen.add(ep.name)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as e:  # a broken plugin must not stop the daemon
            log.error("plugin %s (%s) failed to load: %s", ep.name, ep.value, e)
            result.failed[ep.name] = f"{type(e).__name__}: {e}"
            continue
        dist = getattr(ep, "dist", None)
        result.loaded[ep.name] = f"{ep.value} ({dist.name} {dist.version})" if dist else ep.value

    for name, plugin in extra or []:
        pm.register(plugin, name=name)
        result.loaded[name] = repr(plugin)
    pm.check_pending()

    if os.environ.get("ENGINE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.info("plugin trace: %s", msg.rstrip()))
        pm.enable_tracing()

    pm.hook.engine_configure.call_historic(kwargs={"config": config})
    _collect(pm, result, config)
    return result


def credentials_lookup(pm: pluggy.PluginManager, config: dict[str, Any]) -> CredentialsLookup:
    """The engine's answer to "credentials for this registry host?": the source chosen by
    ``engine_registry_credentials``, asked."""

    async def lookup(host: str) -> RegistryCredentials | None:
        source = pm.hook.engine_registry_credentials(host=host, config=config)
        return None if source is None else await source.get(host)

    return lookup


def _collect(pm: pluggy.PluginManager, result: LoadedPlugins, config: dict[str, Any]) -> None:
    """Call each plugin's ``engine_add_*`` hook on its own, so the register knows the owner
    of every component and one broken plugin is isolated from the rest. They are called
    in pluggy's call order (``tryfirst`` first, ``trylast`` last), which is the order the
    engine asks registry clients whether they handle a host."""
    credentials = credentials_lookup(pm, config)
    for hook_name in ("engine_add_runtimes", "engine_add_storage_drivers", "engine_add_registry_clients",
                      "engine_add_volume_drivers"):
        hook = getattr(pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):  # pluggy calls the list back to front
            result.register.current_plugin = impl.plugin_name
            kwargs = {"register": result.register, "config": config, "credentials": credentials}
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as e:
                log.error("plugin %s failed in %s: %s", impl.plugin_name, hook_name, e)
                result.failed[impl.plugin_name] = f"{hook_name}: {type(e).__name__}: {e}"
    result.register.current_plugin = ""
