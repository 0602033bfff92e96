"""Mount propagation of a CRI container's host-path mounts, through crictl, with runc and
crun: a bidirectional (rshared) mount sees what the host mounts under its source after the
container started, and the host sees what the container mounts there; host-to-container
(rslave) only the first; private (rprivate) neither. A source that cannot propagate (not on
a shared host mount) is refused at CreateContainer, as containerd does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.testing.mounts import mount, propagating_dir
from tests.cri.conftest import CRI
from tests.cri.test_crictl import BUSYBOX, _write

NAMES = {"rprivate": "PROPAGATION_PRIVATE", "rslave": "PROPAGATION_HOST_TO_CONTAINER",
         "rshared": "PROPAGATION_BIDIRECTIONAL"}
CODES = {"rprivate": 0, "rslave": 1, "rshared": 2}  # the CRI's MountPropagation


def _privileged_pod(cri: CRI, tmp_path: Path, name: str, runtime: str) -> tuple[str, str]:
    pod = _write(tmp_path / f"{name}-pod.json", {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "attempt": 0},
        "linux": {"security_context": {"privileged": True}},
    })
    return cri.crictl("runp", "--runtime", runtime, pod).stdout.strip(), pod


def _container_json(tmp_path: Path, source: Path, mode: str) -> str:
    return _write(tmp_path / f"ctr-{mode}.json", {
        "metadata": {"name": f"mp-{mode}"}, "image": {"image": BUSYBOX}, "command": ["sleep", "1000"],
        "mounts": [{"host_path": str(source), "container_path": "/mnt/vol", "propagation": CODES[mode]}],
        # privileged: the container mounts too
        "linux": {"security_context": {"privileged": True}},
    })


@pytest.mark.parametrize(("mode", "runtime"), [
    ("rshared", "runc"), ("rslave", "runc"), ("rprivate", "runc"), ("rshared", "crun"), ("rslave", "crun"),
])
def test_mount_propagation_between_host_and_container(cri: CRI, tmp_path: Path, mode: str,
                                                      runtime: str) -> None:
    cri.crictl("pull", BUSYBOX)
    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "from-host").write_text("host\n")
    # kubelet's pod volumes sit on a shared mount; a private one for the rprivate case
    with propagating_dir(tmp_path / "vol", "rprivate" if mode == "rprivate" else "rshared") as source:
        (source / "hostmnt").mkdir()
        (source / "ctrmnt").mkdir()
        pod_id, pod = _privileged_pod(cri, tmp_path, f"mp-{mode}-{runtime}", runtime)
        try:
            ctr_id = cri.crictl("create", pod_id, _container_json(tmp_path, source, mode), pod).stdout.strip()
            cri.crictl("start", ctr_id)
            status = json.loads(cri.crictl("inspect", ctr_id).stdout)["status"]
            assert [(m["hostPath"], m["containerPath"], m["propagation"]) for m in status["mounts"]] == \
                [(str(source), "/mnt/vol", NAMES[mode])]

            # host -> container: a mount made on the host after the start
            mount("--bind", str(flags), str(source / "hostmnt"))
            seen = cri.crictl("exec", "-s", ctr_id, "ls", "/mnt/vol/hostmnt").stdout.split()
            assert seen == ([] if mode == "rprivate" else ["from-host"])

            # container -> host
            cri.crictl("exec", "-s", ctr_id, "sh", "-c", "mount -t tmpfs tmpfs /mnt/vol/ctrmnt && "
                       "echo ctr > /mnt/vol/ctrmnt/from-container")
            inside = cri.crictl("exec", "-s", ctr_id, "cat", "/mnt/vol/ctrmnt/from-container").stdout
            assert inside.strip() == "ctr"
            assert (source / "ctrmnt" / "from-container").exists() == (mode == "rshared")
        finally:
            cri.crictl("stopp", pod_id, check=False)
            cri.crictl("rmp", pod_id, check=False)


def test_a_source_that_cannot_propagate_is_refused(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    with propagating_dir(tmp_path / "private", "rprivate") as source:
        pod_id, pod = _privileged_pod(cri, tmp_path, "mp-refused", "runc")
        try:
            for mode, wanted in (("rshared", "not a shared mount"), ("rslave", "not a shared or slave mount")):
                refused = cri.crictl("create", pod_id, _container_json(tmp_path, source, mode), pod, check=False)
                assert refused.returncode != 0
                assert f"path '{source}' is mounted on '{source}' but it is {wanted}" in refused.stderr
            assert cri.crictl("ps", "-a", "-q", "-p", pod_id).stdout.split() == []
            # rprivate asks nothing of the host
            ctr_id = cri.crictl("create", pod_id, _container_json(tmp_path, source, "rprivate"), pod).stdout.strip()
            assert cri.crictl("ps", "-a", "-q", "-p", pod_id).stdout.split() == [ctr_id]
        finally:
            cri.crictl("stopp", pod_id, check=False)
            cri.crictl("rmp", pod_id, check=False)
