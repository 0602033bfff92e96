"""How long from ``create`` to the recorded exit of ``true``, through conmon.

The figure to beat is podman's 114 ms (``podman run --rm --network none``, peers/README.md);
this measures the runtime layer only (bundle and rootfs prepared beforehand), with the
default seccomp profile, 14 capabilities and cgroups, like podman's config."""

from __future__ import annotations

import json
import shutil
import statistics

import trio

from engine.oci.spec import build_spec

from .conftest import Harness

ROUNDS = 7
BUDGET = 0.114  # podman's median; ours must be well under it


async def _prepared(harness: Harness) -> tuple[str, object, dict[str, object]]:
    cid, bundle, options = harness.options(["true"])
    await trio.to_thread.run_sync(
        lambda: shutil.copytree(harness.template, options.rootfs, symlinks=True)
    )
    return cid, bundle, await trio.to_thread.run_sync(build_spec, options)


async def test_create_to_exit_latency(harness: Harness) -> None:
    times = []
    for _ in range(ROUNDS):
        cid, bundle, spec = await _prepared(harness)
        start = trio.current_time()
        ctr = await harness.create_from_spec(cid, bundle, spec)  # type: ignore[arg-type]
        await harness.runtime.start(ctr.id)
        with trio.fail_after(10):
            info = await harness.runtime.wait_exit(ctr.id, ctr.state_dir)
        times.append(trio.current_time() - start)
        assert info.exit_code == 0
        await harness.runtime.delete(ctr.id)
    median = statistics.median(times)
    print(f"\n{harness.runtime.name}: create->exit of `true` median {median * 1000:.1f} ms "
          f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}) over {ROUNDS} runs: "
          + json.dumps([round(t * 1000, 1) for t in times]))  # fmt: skip
    assert median < BUDGET, times
