"""docker's ways of asking for mounts, parsed: ``-v``, ``--mount`` and ``--volumes-from``.

``-v /host:/ctr[:ro]`` is a bind (engine.supervisor.container_service.parse_volume keeps
those), ``-v NAME:/ctr[:ro,nocopy]`` a named volume, ``-v /ctr`` an anonymous one.
``-v /host:/ctr:rshared`` and ``--mount type=bind,…,bind-propagation=rslave`` give the
bind's mount propagation (docker's six: [r]private, [r]shared, [r]slave).
``--mount type=volume|bind|tmpfs,src=…,dst=…,readonly,volume-nocopy,volume-driver=…,
volume-opt=K=V,volume-label=K=V,tmpfs-size=…,tmpfs-mode=…`` says the same with keys.
"""

from __future__ import annotations

import posixpath

import attrs

from engine.actors.model import BindMount, TmpfsMount
from engine.errors import InvalidArgument
from engine.oci.propagation import PROPAGATIONS, check_mode
from engine.volumes.store import check_name


@attrs.frozen
class VolumeRequest:
    name: str  # "": a new anonymous volume
    destination: str
    read_only: bool = False
    nocopy: bool = False
    driver: str = ""
    options: dict[str, str] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)


Parsed = BindMount | TmpfsMount | VolumeRequest


def is_bind_spec(spec: str) -> bool:
    """Whether ``-v spec`` is a bind of a host path (the other forms are volumes)."""
    parts = spec.split(":")
    return len(parts) >= 2 and parts[0].startswith("/")


def _destination(path: str, spec: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"invalid mount {spec!r}: the destination must be an absolute path")
    clean = posixpath.normpath(path)
    if clean == "/":
        raise InvalidArgument(f"invalid mount {spec!r}: a volume cannot be mounted over /")
    return clean


def bind_options(spec: str, text: str) -> tuple[bool, str]:
    """The options of ``-v /host:/ctr:OPTIONS`` (docker's: ``ro``/``rw`` and one mount
    propagation, comma-separated): (read only, propagation or "")."""
    read_only, propagation = False, ""
    for option in text.split(","):
        if option in ("ro", "rw"):
            read_only = option == "ro"
        elif option in PROPAGATIONS and not propagation:
            propagation = option
        else:
            raise InvalidArgument(f"invalid volume option {option!r} in {spec!r}: use ro or rw, and "
                                  f"at most one of {', '.join(sorted(PROPAGATIONS))}")
    return read_only, propagation


def format_bind(bind: BindMount) -> str:
    """The ``-v`` value that gives ``bind`` (docker's HostConfig.Binds entry)."""
    options = ",".join(o for o in ("ro" if bind.read_only else "", bind.propagation) if o)
    return f"{bind.source}:{bind.destination}" + (f":{options}" if options else "")


def parse_volume_flag(spec: str) -> VolumeRequest:
    """``-v NAME:/path[:opts]`` or ``-v /path`` (not a bind: see ``is_bind_spec``)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return VolumeRequest("", _destination(parts[0], spec))
    if len(parts) > 3:
        raise InvalidArgument(f"invalid volume {spec!r}: expected NAME:DST[:OPTIONS]")
    name, destination = parts[0], parts[1]
    if not name:
        raise InvalidArgument(f"invalid volume {spec!r}: the volume name is empty")
    if name.startswith(".") or "/" in name:
        raise InvalidArgument(f"invalid volume {spec!r}: a host path must be absolute; a volume "
                              "name has no slash")
    read_only, nocopy = False, False
    for option in (parts[2].split(",") if len(parts) == 3 else []):
        if option == "ro":
            read_only = True
        elif option in ("rw", "z", "Z", ""):
            pass
        elif option == "nocopy":
            nocopy = True
        else:
            raise InvalidArgument(f"invalid volume option {option!r} in {spec!r}: use ro, rw or nocopy")
    return VolumeRequest(check_name(name), _destination(destination, spec), read_only, nocopy)


def _flag(value: str | None, key: str, spec: str) -> bool:
    if value is None:
        return True
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"invalid --mount {spec!r}: {key}={value} is not a boolean")


def _key_value(value: str | None, key: str, spec: str) -> tuple[str, str]:
    if not value or "=" not in value:
        raise InvalidArgument(f"invalid --mount {spec!r}: {key} takes KEY=VALUE")
    k, _, v = value.partition("=")
    return k, v


def parse_mount_flag(spec: str) -> Parsed:
    """One ``--mount`` value."""
    fields: dict[str, str | None] = {}
    options: dict[str, str] = {}
    labels: dict[str, str] = {}
    for item in _split_csv(spec):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if key == "volume-opt":
            k, v = _key_value(value if sep else None, key, spec)
            options[k] = v
        elif key == "volume-label":
            k, v = _key_value(value if sep else None, key, spec)
            labels[k] = v
        else:
            fields[key] = value if sep else None
    kind = fields.pop("type", None) or "volume"
    source = fields.pop("source", None) or fields.pop("src", None) or ""
    target = fields.pop("destination", None) or fields.pop("dst", None) or fields.pop("target", None)
    read_only = False
    for key in ("readonly", "ro"):
        if key in fields:
            read_only = _flag(fields.pop(key), key, spec)
    if not target:
        raise InvalidArgument(f"invalid --mount {spec!r}: the destination (dst=) is missing")
    destination = _destination(target, spec)
    fields.pop("consistency", None)
    if kind == "bind":
        propagation = fields.pop("bind-propagation", None) or ""
        _refuse_rest(fields, spec)
        if not source.startswith("/"):
            raise InvalidArgument(f"invalid --mount {spec!r}: a bind needs an absolute src")
        if propagation:
            check_mode(propagation, f"--mount {spec!r}")
        return BindMount(source, destination, read_only, propagation)
    if kind == "tmpfs":
        if source:
            raise InvalidArgument(f"invalid --mount {spec!r}: a tmpfs takes no src")
        # docker's ConvertTmpfsOptions: ro, mode, size in the largest unit that divides it
        opts = ["ro"] if read_only else []
        size = fields.pop("tmpfs-size", None)
        mode = fields.pop("tmpfs-mode", None)
        _refuse_rest(fields, spec)
        if mode:
            try:
                mode_bits = int(mode, 8)
            except ValueError:
                raise InvalidArgument(f"invalid --mount {spec!r}: tmpfs-mode is octal") from None
            if mode_bits:
                opts.append(f"mode={mode_bits:o}")
        if size and int(_size(size, spec)):
            opts.append(f"size={tmpfs_size_option(int(_size(size, spec)))}")
        return TmpfsMount(destination, ",".join(opts), from_mount=True)
    if kind != "volume":
        raise InvalidArgument(f"invalid --mount {spec!r}: type is volume, bind or tmpfs, not {kind!r}")
    nocopy = _flag(fields.pop("volume-nocopy"), "volume-nocopy", spec) if "volume-nocopy" in fields else False
    driver = fields.pop("volume-driver", None) or ""
    _refuse_rest(fields, spec)
    if source.startswith("/"):
        raise InvalidArgument(f"invalid --mount {spec!r}: a volume's src is a name; use "
                              "type=bind for a host path")
    return VolumeRequest(check_name(source) if source else "", destination, read_only, nocopy,
                         driver, options, labels)


def tmpfs_size_option(size: int) -> str:
    """docker's tmpfs size= value of a byte count: in g, m or k when one divides it."""
    for suffix, divisor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % divisor == 0:
            return f"{size // divisor}{suffix}"
    return str(size)


def _size(text: str, spec: str) -> str:
    from engine.humanize import parse_size

    try:
        return str(parse_size(text))
    except (ValueError, InvalidArgument):
        raise InvalidArgument(f"invalid --mount {spec!r}: tmpfs-size {text!r} is not a size") from None


def _refuse_rest(fields: dict[str, str | None], spec: str) -> None:
    if fields:
        raise InvalidArgument(f"invalid --mount {spec!r}: unknown or misplaced key(s) "
                              f"{', '.join(sorted(fields))}")


def _split_csv(text: str) -> list[str]:
    """Comma-separated, with "double quotes" around a value that has commas (docker's csv)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i for i in (s.strip() for s in items) if i]


def parse_volumes_from(spec: str) -> tuple[str, bool | None]:
    """``CTR[:ro|rw]``: the container and the mode (None: each mount's own)."""
    ref, _, mode = spec.partition(":")
    if not ref:
        raise InvalidArgument(f"invalid --volumes-from {spec!r}: no container")
    if mode not in ("", "ro", "rw"):
        raise InvalidArgument(f"invalid --volumes-from {spec!r}: the mode is ro or rw")
    return ref, (None if not mode else mode == "ro")
