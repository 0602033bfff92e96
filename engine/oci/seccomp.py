"""The default seccomp profile, converted for one container.

``/usr/share/containers/seccomp.json`` (containers/common, the same format as moby's
``profiles/seccomp/default.json``) is a *template*: each syscall rule may apply only to some
architectures (``includes/excludes.arches``), to containers holding (or lacking) some
capabilities (``includes/excludes.caps``) and to kernels from ``minKernel`` on. The OCI
``linux.seccomp`` object has none of that, so we evaluate the template for this host's
architecture and the container's capability set, the way moby's ``setupSeccomp`` does.

The file is read once per process; the converted profile is cached per capability set.
"""

from __future__ import annotations

import copy
import functools
import json
import platform
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument, Unavailable
from engine.images.types import host_architecture

DEFAULT_PROFILE_PATH = Path("/usr/share/containers/seccomp.json")

_SCMP_ARCH = {
    "amd64": "SCMP_ARCH_X86_64",
    "arm64": "SCMP_ARCH_AARCH64",
    "arm": "SCMP_ARCH_ARM",
    "386": "SCMP_ARCH_X86",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}
_RULE_KEYS = ("names", "action", "args", "errnoRet")


@functools.lru_cache(maxsize=4)
def load_template(path: Path = DEFAULT_PROFILE_PATH) -> dict[str, Any]:
    """The parsed template (read once). Blocking on first call."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise Unavailable(
            f"the default seccomp profile {path} is missing; install the "
            "golang-github-containers-common package (or run with seccomp=unconfined)"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {path} is not valid JSON: {exc}") from None


def _kernel_version() -> tuple[int, ...]:
    numbers: list[int] = []
    for piece in platform.release().split("-")[0].split(".")[:2]:
        numbers.append(int("".join(ch for ch in piece if ch.isdigit()) or 0))
    return tuple(numbers)


def _parse_kernel(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2])


def _architectures(template: dict[str, Any], goarch: str) -> list[str]:
    native = _SCMP_ARCH.get(goarch)
    for entry in template.get("archMap") or []:
        if entry.get("architecture") == native:
            return [native, *entry.get("subArchitectures", [])]
    return [native] if native else []


def _rule_applies(rule: dict[str, Any], goarch: str, caps: frozenset[str]) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("arches") and goarch not in inc["arches"]:
        return False
    if exc.get("arches") and goarch in exc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if inc.get("minKernel") and _kernel_version() < _parse_kernel(inc["minKernel"]):
        return False
    return True


def _oci_rule(rule: dict[str, Any]) -> dict[str, Any]:
    out = {key: rule[key] for key in _RULE_KEYS if rule.get(key) not in (None, [])}
    if "errnoRet" not in out and rule.get("action") == "SCMP_ACT_ERRNO" and "errno" in rule:
        out["errnoRet"] = 1  # the template names EPERM only as a string in old files
    return out


def convert(
    template: dict[str, Any], caps: frozenset[str], goarch: str | None = None
) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a container holding ``caps`` on ``goarch``."""
    arch = goarch or host_architecture()  # the template names architectures the Go way
    profile: dict[str, Any] = {"defaultAction": template["defaultAction"]}
    if template.get("defaultErrnoRet") is not None:
        profile["defaultErrnoRet"] = template["defaultErrnoRet"]
    profile["architectures"] = _architectures(template, arch)
    profile["syscalls"] = [
        _oci_rule(rule)
        for rule in template.get("syscalls") or []
        if _rule_applies(rule, arch, caps)
    ]
    return profile


@functools.lru_cache(maxsize=64)
def _default_for(caps: frozenset[str], path: Path) -> dict[str, Any]:
    return convert(load_template(path), caps)


def default_profile(
    caps: frozenset[str] | set[str], path: Path = DEFAULT_PROFILE_PATH
) -> dict[str, Any]:
    """The default profile for this capability set (a fresh copy: callers may edit it)."""
    return copy.deepcopy(_default_for(frozenset(caps), path))
