"""The CRI's small pure parts: the vendored proto and its stubs, per-host mirrors, seccomp
profile choice, the OCI spec patch, image users, credentials."""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cri.gen import api_pb2 as pb
from engine.cri.images import request_credentials
from engine.cri.pods import seccomp_profile
from engine.errors import InvalidArgument
from engine.oci.spec import apply_patch
from engine.supervisor.config import mirrors_for_plugins
from engine.testing.daemon import require

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_stubs_match_the_vendored_proto(tmp_path: Path) -> None:
    """The generated code is checked in; regenerating it from the proto must give the same
    descriptor (grpcio-tools is in the test extras)."""
    require(importlib.util.find_spec("grpc_tools") is not None, "grpcio-tools is not installed")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gen_cri_stubs.sh"), str(tmp_path)],
                          capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    fresh = (tmp_path / "api_pb2.py").read_text()
    checked_in = (REPO / "engine" / "cri" / "gen" / "api_pb2.py").read_text()
    marker = "AddSerializedFile("
    assert fresh[fresh.index(marker):].split("\n", 1)[0] == checked_in[checked_in.index(marker):].split("\n", 1)[0]
    assert pb.DESCRIPTOR.package == "runtime.v1"
    assert {s.name for s in pb.DESCRIPTOR.services_by_name.values()} == {"RuntimeService", "ImageService"}


def test_per_host_mirrors() -> None:
    assert mirrors_for_plugins(["https://m.example"]) == ["https://m.example"]
    assert mirrors_for_plugins(["registry.k8s.io=http://127.0.0.1:5600", "https://hub.mirror",
                                "gcr.io=http://127.0.0.1:5600"]) == {
        "registry.k8s.io": ["http://127.0.0.1:5600"], "docker.io": ["https://hub.mirror"],
        "gcr.io": ["http://127.0.0.1:5600"]}


def test_seccomp_profile_choice() -> None:
    ctx = pb.LinuxContainerSecurityContext
    assert seccomp_profile(ctx()) == "unconfined"  # the CRI's default
    assert seccomp_profile(ctx(seccomp_profile_path="runtime/default")) == ""
    assert seccomp_profile(ctx(seccomp_profile_path="localhost//p.json")) == "/p.json"
    with pytest.raises(InvalidArgument):
        seccomp_profile(ctx(seccomp_profile_path="/p.json"))
    profile = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    assert seccomp_profile(ctx(seccomp=profile, seccomp_profile_path="unconfined")) == ""
    local = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="/x.json")
    assert seccomp_profile(ctx(seccomp=local)) == "/x.json"


def test_spec_patch_merges_dicts_and_replaces_lists() -> None:
    spec = {"linux": {"maskedPaths": ["/a"], "resources": {"memory": {"limit": 1}}}, "hostname": "h"}
    apply_patch(spec, {"linux": {"maskedPaths": ["/b"], "resources": {"cpu": {"shares": 2}}},
                       "hostname": None})
    assert spec == {"linux": {"maskedPaths": ["/b"], "resources": {"memory": {"limit": 1},
                                                                    "cpu": {"shares": 2}}}}


def test_pull_credentials() -> None:
    assert request_credentials(pb.AuthConfig()) is None
    creds = request_credentials(pb.AuthConfig(auth=base64.b64encode(b"u:p").decode()))
    assert creds is not None and (creds.username, creds.password) == ("u", "p")
    with pytest.raises(InvalidArgument):
        request_credentials(pb.AuthConfig(registry_token="t"))
