"""The seccomp program the daemon precompiles for crun (``run.oci.seccomp_bpf_data``) is the
program crun would have compiled itself, and crun installs it."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
import trio

from engine.errors import InvalidArgument
from engine.oci import seccomp_bpf
from engine.oci.spec import build_spec
from engine.plugins.crun.runtime import CrunRuntime

from .conftest import Harness, read_log

CRUN_ONLY = pytest.mark.parametrize("runtime", ["crun"], indirect=True)


async def _spec_and_rootfs(harness: Harness, args: list[str], **kw: object) -> tuple[str, Path, dict]:  # type: ignore[type-arg]
    cid, bundle, options = harness.options(args, **kw)  # type: ignore[arg-type]
    await trio.to_thread.run_sync(lambda: shutil.copytree(harness.template, options.rootfs, symlinks=True))
    return cid, bundle, await trio.to_thread.run_sync(build_spec, options)


@CRUN_ONLY
async def test_precompiled_program_is_the_one_crun_compiles(harness: Harness) -> None:
    # Left to itself (no annotation), crun compiles the profile and keeps the program in
    # its state directory; ours must be the same bytes, for the default profile and for a
    # container with other capabilities (the profile depends on them).
    for caps in ({}, {"cap_add": ["SYS_ADMIN", "SYS_PTRACE"]}):
        cid, bundle, spec = await _spec_and_rootfs(harness, ["true"], **caps)
        assert spec["linux"]["seccomp"]["syscalls"], "the default profile is expected here"
        await harness.create_from_spec(cid, bundle, spec)
        state_root = harness.runtime.state_root
        crun_program = (state_root / cid / "seccomp.bpf").read_bytes()
        ours = seccomp_bpf.compile_profile(spec["linux"]["seccomp"])
        assert ours is not None and len(ours) > 1000
        assert ours == crun_program


@CRUN_ONLY
async def test_crun_installs_the_precompiled_program(harness: Harness) -> None:
    runtime = harness.runtime
    assert isinstance(runtime, CrunRuntime)
    cid, bundle, spec = await _spec_and_rootfs(
        harness, ["sh", "-c", "grep -E '^(Seccomp|Seccomp_filters):' /proc/self/status"]
    )
    annotated = runtime.adapt_spec(spec)
    program = base64.b64decode(annotated["annotations"][seccomp_bpf.ANNOTATION])
    assert program == seccomp_bpf.compile_profile(spec["linux"]["seccomp"])
    ctr = await harness.create_from_spec(cid, bundle, annotated)
    await runtime.start(ctr.id)
    with trio.fail_after(20):
        info = await runtime.wait_exit(ctr.id, ctr.state_dir)
    out, _ = read_log(ctr.log_path)
    assert info.exit_code == 0, out
    assert "Seccomp:\t2" in out and "Seccomp_filters:\t1" in out
    # crun loaded our bytes: it copies them to its state directory for later execs
    assert (runtime.state_root / cid / "seccomp.bpf").read_bytes() == program


def test_profiles_only_the_runtime_can_apply_are_left_to_it() -> None:
    notify = {"defaultAction": "SCMP_ACT_ALLOW",
              "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}
    assert seccomp_bpf.compile_profile(notify) is None
    spec = {"linux": {"seccomp": notify}, "annotations": {"a": "b"}}
    assert seccomp_bpf.annotate(spec) == spec
    assert seccomp_bpf.annotate({"linux": {}}) == {"linux": {}}


def test_invalid_profiles_are_refused_with_the_reason() -> None:
    with pytest.raises(InvalidArgument, match="architecture"):
        seccomp_bpf.compile_profile({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NOPE"]})
    with pytest.raises(InvalidArgument, match="operator"):
        seccomp_bpf.compile_profile({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_ALMOST"}]}]})
    with pytest.raises(InvalidArgument, match="errno"):
        seccomp_bpf.compile_profile({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]})
