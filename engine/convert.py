"""The engine's cattrs configuration: one factory, its hooks, and the three converters made
from it.

Models stay plain attrs classes; how they meet JSON or msgpack is decided here. A field may
say how it is spelt on the wire with ``attrs.field(metadata=field_meta(...))`` (read by the
hooks below, for every converter), so a module never builds its own converter or registers
its own hooks.

- ``disk``: the JSON files the engine writes for itself (container config and state,
  networks, CNI attachments). Unknown keys are ignored and values are taken as they are, so a
  record written by an older or newer engine still loads (live-restore must not lose a
  container over a renamed field).
- ``wire``: RPC parameters and the daemon's configuration. Strict: an unknown key or a value
  of the wrong type is refused, naming the field (cattrs coerces by default, "5" -> 5 and
  "ab" -> ["a", "b"]; an RPC must not guess).
- ``documents``: OCI and Docker JSON (manifests, indexes, image configs). Values are strictly
  typed (a manifest with the wrong JSON types is malformed, not something to coerce), unknown
  keys are tolerated (the specs say so), JSON null counts as absent for a field with a default
  (Go's encoding/json, which wrote most of these documents, reads null that way), and
  default-valued fields are left out of new documents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf import json as json_preset
from cattrs.preconf import msgpack as msgpack_preset

Preset = Literal["json", "msgpack"]

# What a failed structure raises (callers catch it without importing cattrs themselves).
ValidationError = cattrs.BaseValidationError

# field metadata keys the hooks read
_WIRE_NAME = "engine.wire_name"
_OMIT = "engine.omit"
_KEEP_DEFAULT = "engine.keep_default"
_STRING_AS_LIST = "engine.string_as_list"


def field_meta(
    *, name: str | None = None, omit: bool = False, keep_default: bool = False,
    string_as_list: bool = False,
) -> dict[str, Any]:
    """Field metadata for the converters: ``name`` is the key on the wire when it differs
    from the attribute's; ``omit`` keeps the field off the wire both ways (e.g. the raw bytes
    a document was parsed from); ``keep_default`` writes the field even when it holds its
    default, where a converter leaves defaults out (a spec requires the key)."""
    meta: dict[str, Any] = {}
    if string_as_list:
        # docker reads Entrypoint/Cmd as a "string slice": a plain string is one element
        meta[_STRING_AS_LIST] = True
    if name is not None:
        meta[_WIRE_NAME] = name
    if omit:
        meta[_OMIT] = True
    if keep_default:
        meta[_KEEP_DEFAULT] = True
    return meta


def make_converter(
    preset: Preset = "json",
    *,
    strict: bool = False,
    forbid_extra_keys: bool = False,
    omit_if_default: bool = False,
    null_as_absent: bool = False,
) -> cattrs.Converter:
    """A converter with the engine's hooks. ``strict``: scalars, arrays and maps must already
    have the declared type (an int is accepted for a float). ``null_as_absent``: a null value
    for a field with a default is taken as if the key were missing."""
    make = json_preset.make_converter if preset == "json" else msgpack_preset.make_converter
    conv: cattrs.Converter = make(forbid_extra_keys=forbid_extra_keys)
    if strict:
        _register_strict_hooks(conv)
    _register_attrs_hooks(conv, omit_if_default=omit_if_default, null_as_absent=null_as_absent)
    return conv


def describe_error(exc: BaseException, path: str = "$") -> str:
    """A structuring failure in words, each problem with the field's path
    (``invalid value for type, expected int @ $.memory``)."""
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path=path))
    return str(exc)


def wire_keys(cls: type) -> set[str]:
    """The keys an attrs class is read from (its fields' wire names), omitted fields aside."""
    return {f.metadata.get(_WIRE_NAME, f.name) for f in attrs.fields(cls) if not f.metadata.get(_OMIT)}


# --- the hooks -----------------------------------------------------------------------------


def _strict_scalar(tp: type) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if not (type(value) is tp or (tp is float and type(value) is int)):
            raise TypeError(f"expected {tp.__name__}, got {type(value).__name__}")
        return value

    return hook


_SCALARS = (str, int, float, bool, bytes)


def _fits(value: Any, tp: Any) -> bool:
    """False when the strict hooks would surely refuse ``value`` as a ``tp`` (scalars and
    lists/maps of them); True when they accept it or ``tp`` is beyond this quick look."""
    if tp in _SCALARS:
        return type(value) is tp or (tp is float and type(value) is int)
    origin = get_origin(tp)
    if origin is list:
        if not isinstance(value, list | tuple):
            return False
        (item_type,) = get_args(tp) or (Any,)
        return all(_fits(item, item_type) for item in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        key_type, value_type = get_args(tp) or (Any, Any)
        return all(_fits(k, key_type) and _fits(v, value_type) for k, v in value.items())
    return True


def _strict_list_factory(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    inner = list_structure_factory(tp, conv)
    (item_type,) = get_args(tp) or (Any,)

    def hook(value: Any, t: Any) -> Any:
        if not isinstance(value, list | tuple):  # msgpack may hand over tuples
            raise TypeError(f"expected an array, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not _fits(item, item_type):
                # cattrs would report every bad item (a million of them for a hostile
                # request, gigabytes of exceptions): it sees the items up to the first one.
                return inner(value[: i + 1], t)
        return inner(value, t)

    return hook


def _strict_dict_factory(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    inner = mapping_structure_factory(tp, conv)
    key_type, value_type = get_args(tp) or (Any, Any)

    def hook(value: Any, t: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a map, got {type(value).__name__}")
        for k, v in value.items():
            if not (_fits(k, key_type) and _fits(v, value_type)):
                return inner({k: v}, t)  # the first bad entry only (see the list hook)
        return inner(value, t)

    return hook


def _register_strict_hooks(conv: cattrs.Converter) -> None:
    for tp in (str, int, float, bool, bytes):
        conv.register_structure_hook(tp, _strict_scalar(tp))
    conv.register_structure_hook_factory(lambda t: get_origin(t) is list, _strict_list_factory)
    conv.register_structure_hook_factory(lambda t: get_origin(t) is dict, _strict_dict_factory)


def _overrides(cls: type, conv: cattrs.Converter) -> dict[str, Any]:
    """Per-field cattrs overrides from the fields' ``field_meta``."""
    result: dict[str, Any] = {}
    for field in attrs.fields(cls):
        meta = field.metadata
        if meta.get(_OMIT):
            result[field.name] = override(omit=True)
        elif _WIRE_NAME in meta or meta.get(_KEEP_DEFAULT):
            result[field.name] = override(
                rename=meta.get(_WIRE_NAME),
                omit_if_default=False if meta.get(_KEEP_DEFAULT) else None,
            )
    return result


def _register_attrs_hooks(
    conv: cattrs.Converter, *, omit_if_default: bool, null_as_absent: bool
) -> None:
    def structure_factory(cls: Any, c: cattrs.Converter) -> Callable[[Any, Any], Any]:
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, c, **_overrides(cls, c))
        if not null_as_absent:
            return inner
        optional = {
            f.metadata.get(_WIRE_NAME, f.name)
            for f in attrs.fields(cls)
            if f.default is not attrs.NOTHING
        }

        one_or_many = {
            f.metadata.get(_WIRE_NAME, f.name) for f in attrs.fields(cls) if f.metadata.get(_STRING_AS_LIST)
        }

        def structure_nulls(data: Any, t: Any) -> Any:
            if isinstance(data, dict):
                data = {
                    k: [v] if k in one_or_many and isinstance(v, str) else v
                    for k, v in data.items()
                    if not (v is None and k in optional)
                }
            return inner(data, t)

        return structure_nulls

    def unstructure_factory(cls: Any, c: cattrs.Converter) -> Callable[[Any], Any]:
        return make_dict_unstructure_fn(
            cls, c, _cattrs_omit_if_default=omit_if_default, **_overrides(cls, c)
        )

    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)


disk = make_converter("json")
wire = make_converter("msgpack", strict=True, forbid_extra_keys=True)
documents = make_converter("json", strict=True, omit_if_default=True, null_as_absent=True)
