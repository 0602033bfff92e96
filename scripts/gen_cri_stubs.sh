#!/usr/bin/env bash
# Generate engine/cri/gen/api_pb2.py(i) and api_pb2_grpc.py from the vendored CRI proto
# (engine/cri/proto/runtime/v1/api.proto) with grpcio-tools. The generated files are checked
# in (so installing engine needs no compiler); tests/cri/test_proto.py fails when they no
# longer match the proto. Needs: pip install grpcio-tools (in the test extras).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
OUT=${1:-$HERE/engine/cri/gen}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m grpc_tools.protoc -I"$HERE/engine/cri/proto" --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" \
    runtime/v1/api.proto
mkdir -p "$OUT"
cp "$TMP/runtime/v1/api_pb2.py" "$OUT/api_pb2.py"
cp "$TMP/runtime/v1/api_pb2.pyi" "$OUT/api_pb2.pyi"
# grpc's stub imports the messages by their proto path; make it a package import
sed -e 's/^from runtime\.v1 import api_pb2 as /from engine.cri.gen import api_pb2 as /' \
    "$TMP/runtime/v1/api_pb2_grpc.py" > "$OUT/api_pb2_grpc.py"
