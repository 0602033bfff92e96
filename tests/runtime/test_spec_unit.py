"""The pure parts: docker's process rules, user lookup in a hostile rootfs, capabilities,
rlimit clamping, the seccomp template's conversion, crun's host check. No root needed."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from engine.errors import InvalidArgument
from engine.oci import seccomp
from engine.oci.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    ProcessOverrides,
    SpecOptions,
    build_spec,
    capabilities,
    clamp_rlimit,
    merge_env,
    resolve_process,
)
from engine.oci.user import resolve_user, secure_join
from engine.plugins.crun import runtime as crun_runtime

IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["serve", "--port=80"], "Env": ["A=1", "PATH=/x"],
         "WorkingDir": "", "User": "app"}  # fmt: skip


def test_image_process_defaults() -> None:
    p = resolve_process(IMAGE, ProcessOverrides())
    assert (p.args, p.env, p.cwd, p.user) == (
        ["/entry", "serve", "--port=80"],
        ["A=1", "PATH=/x"],
        "/",
        "app",
    )


def test_entrypoint_override_drops_image_cmd_unless_cmd_given() -> None:
    assert resolve_process(IMAGE, ProcessOverrides(entrypoint=["sh"])).args == ["sh"]
    p = resolve_process(IMAGE, ProcessOverrides(entrypoint=["sh"], cmd=["-c", "true"]))
    assert p.args == ["sh", "-c", "true"]
    assert resolve_process(IMAGE, ProcessOverrides(cmd=["x"])).args == ["/entry", "x"]


def test_env_later_wins_and_path_default() -> None:
    p = resolve_process({"Cmd": ["true"], "Env": ["A=1", "B=2"]}, ProcessOverrides(env=["A=3"]))
    assert p.env == [DEFAULT_PATH, "A=3", "B=2"]
    assert merge_env(["X=1"], ["X"]) == ["X="]
    with pytest.raises(InvalidArgument):
        merge_env(["=oops"])


def test_no_command_is_an_error() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        resolve_process({}, ProcessOverrides())


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nstaff:x:50:app,other\napp:x:1000:\n")
    return root


def test_user_forms(rootfs: Path) -> None:
    assert resolve_user(rootfs, "").uid == 0
    app = resolve_user(rootfs, "app")
    assert (app.uid, app.gid, app.additional_gids, app.home) == (1000, 1000, (1000, 50), "/home/app")
    assert resolve_user(rootfs, "").additional_gids == (0,)  # the primary gid always, as dockerd's
    assert resolve_user(rootfs, "app:staff").additional_gids == (50,)  # a group given: no memberships
    assert resolve_user(rootfs, "app:0").additional_gids == (0,)
    assert resolve_user(rootfs, "1000:1000").additional_gids == (1000,)
    assert resolve_user(rootfs, "1000").home == "/home/app"
    assert (resolve_user(rootfs, "77").uid, resolve_user(rootfs, "77").gid) == (77, 0)
    assert resolve_user(rootfs, "app:staff").gid == 50
    assert resolve_user(rootfs, "5:6").gid == 6
    with pytest.raises(InvalidArgument, match="ghost"):
        resolve_user(rootfs, "ghost")
    with pytest.raises(InvalidArgument, match="nogroup"):
        resolve_user(rootfs, "app:nogroup")


def test_passwd_symlink_cannot_escape(tmp_path: Path) -> None:
    outside = tmp_path / "host-secret"
    outside.write_text("evil:x:4242:4242::/:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # absolute and ../ links both resolve inside the rootfs, where nothing exists
    (root / "etc" / "passwd").symlink_to(outside)
    (root / "etc" / "group").symlink_to("../../../host-secret")
    assert secure_join(root, "/etc/passwd") == root / outside.relative_to("/")
    assert secure_join(root, "/etc/group") == root / "host-secret"
    with pytest.raises(InvalidArgument):
        resolve_user(root, "evil")


def test_capabilities_add_drop() -> None:
    base = SpecOptions(container_id="c", rootfs=Path("/"), args=["true"])
    assert capabilities(base) == list(DEFAULT_CAPABILITIES)
    caps = capabilities(SpecOptions(container_id="c", rootfs=Path("/"), args=["true"],
                                    cap_add=["sys_admin"], cap_drop=["CAP_NET_RAW", "kill"]))  # fmt: skip
    assert "CAP_SYS_ADMIN" in caps and "CAP_NET_RAW" not in caps and "CAP_KILL" not in caps
    with pytest.raises(InvalidArgument, match="capability"):
        capabilities(SpecOptions(container_id="c", rootfs=Path("/"), args=["x"], cap_add=["FLY"]))


def test_rlimits_clamped_to_own_hard_limit() -> None:
    _, own = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert clamp_rlimit("RLIMIT_NOFILE", 10**9, 10**9) == (own, own)
    assert clamp_rlimit("RLIMIT_NOFILE", 10, 20) == (10, 20)


def test_spec_shape(rootfs: Path) -> None:
    spec = build_spec(SpecOptions(container_id="abc", rootfs=rootfs, args=["x"], init=True,
                                  cpus=1.5, pids_limit=5, network_ns="host", user="app"))  # fmt: skip
    assert spec["process"]["args"] == ["/dev/init", "--", "x"]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 50]}
    assert spec["linux"]["cgroupsPath"] == "/engine/abc"
    assert spec["linux"]["resources"]["cpu"] == {"quota": 150000, "period": 100000}
    assert spec["linux"]["resources"]["pids"] == {"limit": 5}
    assert "network" not in {n["type"] for n in spec["linux"]["namespaces"]}
    nofile = [r for r in spec["process"]["rlimits"] if r["type"] == "RLIMIT_NOFILE"]
    assert nofile[0]["hard"] <= resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def test_domainname_is_the_uts_sysctl_and_left_out_with_the_hosts_uts(rootfs: Path) -> None:
    # a sysctl as dockerd writes it: runc 1.1 ignores the spec's own "domainname" field
    spec = build_spec(SpecOptions(container_id="abc", rootfs=rootfs, args=["x"], domainname="example.com"))
    assert spec["linux"]["sysctl"]["kernel.domainname"] == "example.com" and "domainname" not in spec
    chosen = build_spec(SpecOptions(container_id="abc", rootfs=rootfs, args=["x"], domainname="example.com",
                                    sysctls={"kernel.domainname": "mine.org"}))
    assert chosen["linux"]["sysctl"]["kernel.domainname"] == "mine.org"  # --sysctl wins
    shared = build_spec(SpecOptions(container_id="abc", rootfs=rootfs, args=["x"], domainname="example.com",
                                    namespaces={"uts": "host"}))
    assert "kernel.domainname" not in shared["linux"].get("sysctl", {}) and "hostname" not in shared


TEMPLATE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
    "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["s390_x"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
        {"names": ["future"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
    ],
}  # fmt: skip


def test_seccomp_conversion_by_caps_and_arch() -> None:
    plain = seccomp.convert(TEMPLATE, frozenset(), "amd64")
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert plain["defaultErrnoRet"] == 38
    names = [(r["names"][0], r["action"]) for r in plain["syscalls"]]
    assert names == [("read", "SCMP_ACT_ALLOW"), ("mount", "SCMP_ACT_ERRNO"),
                     ("arch_prctl", "SCMP_ACT_ALLOW")]  # fmt: skip
    admin = seccomp.convert(TEMPLATE, frozenset({"CAP_SYS_ADMIN"}), "amd64")
    assert ("mount", "SCMP_ACT_ALLOW") in [(r["names"][0], r["action"]) for r in admin["syscalls"]]
    assert all(set(r) <= {"names", "action", "args", "errnoRet"} for r in admin["syscalls"])


def test_real_default_profile_is_cached() -> None:
    if not seccomp.DEFAULT_PROFILE_PATH.exists():
        pytest.skip("containers-common is not installed")
    a = seccomp.default_profile(frozenset(DEFAULT_CAPABILITIES))
    b = seccomp.default_profile(set(DEFAULT_CAPABILITIES))
    assert a == b and a is not b
    assert seccomp.load_template.cache_info().misses == 1
    allowed = {n for r in a["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert "read" in allowed and "sethostname" not in allowed
    admin = seccomp.default_profile({*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"})
    assert "sethostname" in {n for r in admin["syscalls"] for n in r["names"]}


def test_crun_hybrid_check_names_controllers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb misc\n")
    info = tmp_path / "mountinfo"
    info.write_text(f"35 25 0:30 / {unified} rw,nosuid - cgroup2 cgroup2 rw\n")
    real = crun_runtime.cgroup2_mount
    monkeypatch.setattr(crun_runtime, "cgroup2_mount", lambda: real(info))
    assert crun_runtime.hybrid_controllers() == ["hugetlb", "misc"]
    fix = crun_runtime.hybrid_fix(["hugetlb"])
    assert (
        fix
        == "mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb"
    )
    rt = crun_runtime.CrunRuntime(tmp_path / "state")
    monkeypatch.setattr(rt, "binary_path", lambda: "/usr/bin/crun")
    if os.access("/usr/bin/conmon", os.X_OK):
        reason = rt.availability().reason
        assert "hugetlb, misc" in reason and fix in reason
