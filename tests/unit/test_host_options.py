"""docker's host options' parsing and checks (engine.supervisor.host_options,
engine.oci.devices), and what they make of the OCI spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.actors.model import ContainerConfig
from engine.errors import InvalidArgument
from engine.oci import spec as oci
from engine.oci.devices import device_rules, parse_device
from engine.supervisor.container_service import CreateSpec, has_host_options
from engine.supervisor.host_options import apply_host_options, check_sysctls, parse_ulimits


def config(**kw: object) -> ContainerConfig:
    return ContainerConfig(id="c" * 64, name="n", image="busybox", image_id="i", created=0.0, runtime="runc",
                           **kw)  # type: ignore[arg-type]


def test_ulimits_as_docker_parses_them() -> None:
    assert parse_ulimits(["nofile=1024:2048", "nproc=10", "core=-1"]) == {
        "nofile": [1024, 2048], "nproc": [10, 10], "core": [-1, -1]}
    for bad, words in (("nofile", "invalid ulimit argument"), ("as=1", "invalid ulimit type: as"),
                       ("nofile=2:1", "2 > 1"), ("nofile=x", "whole numbers")):
        with pytest.raises(InvalidArgument, match=words):
            parse_ulimits([bad])


def test_sysctls_only_namespaced_ones() -> None:
    assert check_sysctls({"net.core.somaxconn": "1024", "kernel.sem": "1 2 3 4", "fs.mqueue.msg_max": "20"},
                         config())
    for key in ("kernel.pid_max", "vm.swappiness", "kernel.hostname"):
        with pytest.raises(InvalidArgument, match="is not allowed"):
            check_sysctls({key: "1"}, config())
    with pytest.raises(InvalidArgument, match="network namespace"):
        check_sysctls({"net.core.somaxconn": "1"}, config(network_mode="host"))


def test_devices_as_docker_parses_them() -> None:
    assert parse_device("/dev/null") == ("/dev/null", "/dev/null", "rwm")
    assert parse_device("/dev/null:r") == ("/dev/null", "/dev/null", "r")
    assert parse_device("/dev/null:/dev/x") == ("/dev/null", "/dev/x", "rwm")
    assert parse_device("/dev/null:/dev/x:rw") == ("/dev/null", "/dev/x", "rw")
    assert device_rules(["/dev/null:/dev/x:rw"]) == [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]
    for bad in ("/dev/null:/dev/x:rwx", "dev/null", "/a:/b:rw:x", ""):
        with pytest.raises(InvalidArgument):
            parse_device(bad)


def test_security_opts_and_namespaces_set_the_config() -> None:
    c = config()
    apply_host_options(c, CreateSpec(image="busybox", security_opt=["no-new-privileges", "seccomp=unconfined"],
                                     pid="host", ipc="shareable", uts="host"))
    assert c.no_new_privileges and c.seccomp_profile == "unconfined" and c.namespaces == {"pid": "host", "uts": "host"}
    c = config()
    apply_host_options(c, CreateSpec(image="busybox", security_opt=['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']))
    assert c.seccomp_json == '{"defaultAction":"SCMP_ACT_ALLOW"}'
    with pytest.raises(InvalidArgument, match="defaultAction"):
        apply_host_options(config(), CreateSpec(image="busybox", security_opt=["seccomp=[]"]))
    with pytest.raises(InvalidArgument, match="invalid UTS mode"):
        apply_host_options(config(), CreateSpec(image="busybox", uts="bogus"))


def test_a_plain_create_has_no_host_options() -> None:
    assert not has_host_options(CreateSpec(image="busybox"))
    assert has_host_options(CreateSpec(image="busybox", shm_size=1))
    assert has_host_options(CreateSpec(image="busybox", privileged=True))


def test_spec_of_the_options(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:\n")
    options = oci.SpecOptions(container_id="c" * 64, rootfs=tmp_path, args=["true"], shm_size=8 * 1024 * 1024,
                              group_add=["staff", "7"], cpu_quota=30000, cpu_period=60000,
                              rlimits={"nofile": (100, 200)}, oom_score_adj=5,
                              namespaces={"pid": "host"})
    spec = oci.build_spec(options)
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert "size=8192k" in shm["options"]
    assert spec["process"]["user"]["additionalGids"] == [0, 50, 7]
    assert spec["linux"]["resources"]["cpu"] == {"quota": 30000, "period": 60000}
    assert {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200} in spec["process"]["rlimits"]
    assert spec["process"]["oomScoreAdj"] == 5
    assert "pid" not in [n["type"] for n in spec["linux"]["namespaces"]]
    host_ipc = oci.build_spec(oci.SpecOptions(container_id="c" * 64, rootfs=tmp_path, args=["true"],
                                              namespaces={"ipc": "host"}))
    shm = next(m for m in host_ipc["mounts"] if m["destination"] == "/dev/shm")
    assert shm["type"] == "bind" and shm["source"] == "/dev/shm"
    privileged = oci.build_spec(oci.SpecOptions(container_id="c" * 64, rootfs=tmp_path, args=["true"],
                                                privileged=True))
    assert any(d["path"] == "/dev/null" for d in privileged["linux"]["devices"])
    assert "maskedPaths" not in privileged["linux"] and "seccomp" not in privileged["linux"]
