"""What build_spec asks for is what the container gets: identity, filesystem, limits,
seccomp and rlimits, checked from inside the container with busybox."""

from __future__ import annotations

import resource
from pathlib import Path

import trio

from engine.oci.spec import BindMount, TmpfsMount

from .conftest import Harness, read_log


async def test_env_cwd_user_hostname(harness: Harness) -> None:
    ctr, info = await harness.run(
        ["sh", "-c", "id; pwd; hostname; env"],
        env=["GREETING=hello world"],
        cwd="/tmp",
        user="app",
        hostname="box1",
    )
    out, err = read_log(ctr.log_path)
    assert info.exit_code == 0, err
    lines = out.splitlines()
    assert lines[0] == "uid=1000(app) gid=1000(app) groups=10(wheel),50(staff),1000(app)"
    assert lines[1:3] == ["/tmp", "box1"]
    env = set(lines[3:])
    assert {"GREETING=hello world", "HOME=/home/app", "HOSTNAME=box1"} <= env
    assert any(e.startswith("PATH=/usr/local/sbin:") for e in env)


async def test_numeric_user_and_named_group(harness: Harness) -> None:
    ctr, info = await harness.run(["id"], user="4242:staff")
    assert info.exit_code == 0
    assert read_log(ctr.log_path)[0] == "uid=4242 gid=50(staff) groups=50(staff)\n"  # no memberships


async def test_read_only_rootfs_with_tmpfs_and_bind(harness: Harness, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note.txt").write_text("from the host\n")
    script = (
        "touch /root/x 2>/dev/null && echo rootfs-writable || echo rootfs-ro;"
        "touch /scratch/x && echo tmpfs-ok;"
        "cat /data/note.txt; echo back > /data/reply.txt"
    )
    ctr, info = await harness.run(
        ["sh", "-c", script],
        read_only=True,
        tmpfs=[TmpfsMount("/scratch")],
        mounts=[BindMount(shared, "/data")],
    )
    out, err = read_log(ctr.log_path)
    assert info.exit_code == 0, err
    assert out == "rootfs-ro\ntmpfs-ok\nfrom the host\n"
    assert (shared / "reply.txt").read_text() == "back\n"


async def test_read_only_bind(harness: Harness, tmp_path: Path) -> None:
    ctr, info = await harness.run(
        ["sh", "-c", "echo x > /data/f"], mounts=[BindMount(tmp_path, "/data", read_only=True)]
    )
    assert info.exit_code != 0
    assert "Read-only file system" in read_log(ctr.log_path)[1]


async def test_pids_limit(harness: Harness) -> None:
    script = (
        "cat /sys/fs/cgroup/pids/pids.max; for i in $(seq 1 30); do sleep 5 & done 2>&1; echo done"
    )
    ctr = await harness.create(["sh", "-c", script], pids_limit=10)
    limit_file = Path(f"/sys/fs/cgroup/pids/engine/{ctr.id}/pids.max")
    assert (await trio.Path(limit_file).read_text()).strip() == "10"
    await harness.runtime.start(ctr.id)
    with trio.fail_after(20):
        await harness.runtime.wait_exit(ctr.id, ctr.state_dir)
    out, err = read_log(ctr.log_path)
    assert out.splitlines()[0] == "10"
    assert "can't fork" in out + err or "Resource temporarily unavailable" in out + err


async def test_memory_limit_oom_is_reported(harness: Harness) -> None:
    mib = 1024 * 1024
    ctr, info = await harness.run(["tail", "/dev/zero"], memory=16 * mib, memory_swap=16 * mib)
    assert info.oom_killed, info
    assert info.exit_code == 137
    assert ctr.spec["linux"]["resources"]["memory"] == {"limit": 16 * mib, "swap": 16 * mib}


async def test_default_seccomp_and_caps(harness: Harness) -> None:
    ctr, info = await harness.run(["sh", "-c", "grep -E '^(Seccomp|CapEff):' /proc/self/status"])
    out = read_log(ctr.log_path)[0]
    assert info.exit_code == 0
    assert "Seccomp:\t2" in out
    assert "CapEff:\t00000000a80425fb" in out  # docker's 14 capabilities


async def test_no_sys_admin_by_default(harness: Harness) -> None:
    # uid 0 in the container is not the host's root: no CAP_SYS_ADMIN, no new mount ns
    ctr, info = await harness.run(["unshare", "-m", "true"])
    assert info.exit_code != 0
    assert "Operation not permitted" in read_log(ctr.log_path)[1]


async def test_rlimits_are_clamped_to_the_engine(harness: Harness) -> None:
    _, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ctr, info = await harness.run(
        ["sh", "-c", "ulimit -n; ulimit -Hn"], rlimits={"nofile": (10**7, 10**7)}
    )
    assert info.exit_code == 0, read_log(ctr.log_path)
    soft, hard = (int(x) for x in read_log(ctr.log_path)[0].split())
    assert soft == hard == own_hard
    assert own_hard <= 20000 or own_hard == resource.RLIM_INFINITY
