#!/usr/bin/env python3
"""Write the CRI ``runtime.v1`` api.proto back out from a compiled FileDescriptorProto.

How engine/cri/proto/api.proto was made (offline: only PyPI is reachable here). PyPI's
``container-runtime-interface-api`` 2.0.1 (Apache-2.0) ships ``cri_api/v1/api_pb2.py``,
compiled from Kubernetes' ``k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`` (Apache-2.0,
The Kubernetes Authors). Its serialized descriptor holds every message, enum, field number
and RPC of that file (not the comments); this script prints it as proto3 source:

    pip download --no-deps container-runtime-interface-api==2.0.1
    unzip -o container_runtime_interface_api-2.0.1-py3-none-any.whl -d x
    python scripts/cri_proto_from_descriptor.py x/cri_api/v1/api_pb2.py > engine/cri/proto/api.proto

The Python stubs are then generated from it with grpcio-tools (scripts/gen_cri_stubs.sh).
"""

from __future__ import annotations

import ast
import re
import sys

from google.protobuf import descriptor_pb2

HEADER = """\
/*
Copyright The Kubernetes Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// The Kubernetes Container Runtime Interface, runtime.v1 (k8s.io/cri-api
// pkg/apis/runtime/v1/api.proto). Regenerated from the compiled descriptor without the
// upstream comments: see scripts/cri_proto_from_descriptor.py for how.
"""

F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    F.TYPE_DOUBLE: "double", F.TYPE_FLOAT: "float", F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64", F.TYPE_INT32: "int32", F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32", F.TYPE_BOOL: "bool", F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes", F.TYPE_UINT32: "uint32", F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64", F.TYPE_SINT32: "sint32", F.TYPE_SINT64: "sint64",
}  # fmt: skip


def type_name(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type in SCALARS:
        return SCALARS[field.type]
    return field.type_name.removeprefix(f".{package}.")


def emit_enum(enum: descriptor_pb2.EnumDescriptorProto, indent: str, out: list[str]) -> None:
    out.append(f"{indent}enum {enum.name} {{")
    if enum.options.allow_alias:
        out.append(f"{indent}    option allow_alias = true;")
    for value in enum.value:
        out.append(f"{indent}    {value.name} = {value.number};")
    out.append(f"{indent}}}")


def emit_message(msg: descriptor_pb2.DescriptorProto, package: str, indent: str,
                 out: list[str]) -> None:
    maps = {n.name: n for n in msg.nested_type if n.options.map_entry}
    out.append(f"{indent}message {msg.name} {{")
    for enum in msg.enum_type:
        emit_enum(enum, indent + "    ", out)
    for nested in msg.nested_type:
        if not nested.options.map_entry:
            emit_message(nested, package, indent + "    ", out)
    oneofs: dict[int, list[descriptor_pb2.FieldDescriptorProto]] = {}
    for field in msg.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneofs.setdefault(field.oneof_index, []).append(field)
    done: set[int] = set()
    for field in msg.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            index = field.oneof_index
            if index in done:
                continue
            done.add(index)
            out.append(f"{indent}    oneof {msg.oneof_decl[index].name} {{")
            for member in oneofs[index]:
                out.append(f"{indent}        {type_name(member, package)} {member.name} = {member.number};")
            out.append(f"{indent}    }}")
            continue
        entry_name = field.type_name.rsplit(".", 1)[-1]
        if field.label == F.LABEL_REPEATED and entry_name in maps:
            key, value = maps[entry_name].field
            text = f"map<{type_name(key, package)}, {type_name(value, package)}> {field.name}"
        else:
            label = "repeated " if field.label == F.LABEL_REPEATED else (
                "optional " if field.proto3_optional else "")
            text = f"{label}{type_name(field, package)} {field.name}"
        options = " [deprecated = true]" if field.options.deprecated else ""
        out.append(f"{indent}    {text} = {field.number}{options};")
    out.append(f"{indent}}}")


def emit_file(fd: descriptor_pb2.FileDescriptorProto) -> str:
    out = [HEADER, f'syntax = "{fd.syntax or "proto2"}";', "", f"package {fd.package};", ""]
    if fd.options.go_package:
        out += [f'option go_package = "{fd.options.go_package}";', ""]
    for service in fd.service:
        out.append(f"service {service.name} {{")
        for m in service.method:
            req = ("stream " if m.client_streaming else "") + m.input_type.removeprefix(f".{fd.package}.")
            resp = ("stream " if m.server_streaming else "") + m.output_type.removeprefix(f".{fd.package}.")
            out.append(f"    rpc {m.name}({req}) returns ({resp}) {{}}")
        out.append("}")
        out.append("")
    for enum in fd.enum_type:
        emit_enum(enum, "", out)
        out.append("")
    for msg in fd.message_type:
        emit_message(msg, fd.package, "", out)
        out.append("")
    return "\n".join(out)


def main(path: str) -> None:
    source = open(path).read()
    match = re.search(r"AddSerializedFile\(\s*(b'.*?')\s*\)", source, re.S)
    if match is None:
        sys.exit(f"{path}: no serialized descriptor found")
    fd = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(match.group(1)))
    sys.stdout.write(emit_file(fd))


if __name__ == "__main__":
    main(sys.argv[1])
