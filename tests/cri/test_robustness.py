"""The CRI under the issue's robustness checks: a pod's containers share one network
namespace (localhost between them); a SIGKILLed engined comes back with the same pods and
containers, in the same states, still controllable; bad gRPC input gets a clear status and
the daemon keeps serving."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from engine.cri.gen import api_pb2 as pb
from engine.cri.gen import api_pb2_grpc
from tests.cri.conftest import CRI
from tests.cri.test_crictl import BUSYBOX, _wait_for, _write

FETCH = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 127.0.0.1 8080"


def _pod(tmp_path: Path, name: str) -> str:
    log_dir = tmp_path / f"logs-{name}"
    log_dir.mkdir()
    return _write(tmp_path / f"{name}-pod.json", {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "attempt": 0},
        "log_directory": str(log_dir), "linux": {},
    })


def _container(tmp_path: Path, name: str, script: str) -> str:
    return _write(tmp_path / f"{name}.json", {
        "metadata": {"name": name}, "image": {"image": BUSYBOX}, "log_path": f"{name}.log",
        "command": ["sh", "-c", script], "linux": {},
    })


def _state(cri: CRI, ctr_id: str) -> str:
    return str(json.loads(cri.crictl("inspect", ctr_id).stdout)["status"]["state"])


def test_two_containers_share_the_pod_network(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod = _pod(tmp_path, "shared")
    pod_id = cri.crictl("runp", pod).stdout.strip()
    # the server listens on the pod's loopback only: the client reaches it only if both
    # containers are in the same network namespace
    server = _container(tmp_path, "server", "mkdir -p /srv && echo shared-netns-ok > /srv/index.html"
                        " && exec httpd -f -p 127.0.0.1:8080 -h /srv")
    client = _container(tmp_path, "client", f"until {FETCH} > /tmp/got && grep -q shared-netns-ok /tmp/got;"
                        " do sleep 0.2; done; echo fetched: $(grep shared-netns /tmp/got); exec sleep 3600")
    server_id = cri.crictl("create", pod_id, server, pod).stdout.strip()
    client_id = cri.crictl("create", pod_id, client, pod).stdout.strip()
    cri.crictl("start", client_id)  # first: it retries until the server listens
    cri.crictl("start", server_id)
    assert _wait_for(lambda: "fetched: shared-netns-ok" in cri.crictl("logs", client_id).stdout, 20), \
        cri.crictl("logs", client_id).stdout + cri.daemon.log()[-3000:]

    # and on demand, with the whole HTTP answer
    answer = cri.crictl("exec", "-s", client_id, "sh", "-c", FETCH).stdout
    assert answer.startswith("HTTP/1.") and " 200 " in answer.splitlines()[0], answer
    assert "shared-netns-ok" in answer
    netns = {cri.crictl("exec", "-s", cid, "readlink", "/proc/self/ns/net").stdout.strip()
             for cid in (server_id, client_id)}
    assert len(netns) == 1 and netns.pop().startswith("net:[")
    # the pod's localhost is not the host's
    host = json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]["network"]["ip"]
    assert host and not host.startswith("127.")

    cri.crictl("stopp", pod_id)
    cri.crictl("rmp", pod_id)
    assert cri.crictl("ps", "-a", "-q").stdout.strip() == ""
    assert cri.daemon.call("container.list", all=True) == []


def test_pod_survives_a_sigkill_of_the_daemon(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod = _pod(tmp_path, "survivor")
    pod_id = cri.crictl("runp", pod).stdout.strip()
    web = _container(tmp_path, "web", "echo web-up; exec httpd -f -p 8080 -h /etc")
    once = _container(tmp_path, "once", "echo done-once; exit 7")
    idle = _container(tmp_path, "idle", "sleep 3600")
    web_id = cri.crictl("create", pod_id, web, pod).stdout.strip()
    once_id = cri.crictl("create", pod_id, once, pod).stdout.strip()
    idle_id = cri.crictl("create", pod_id, idle, pod).stdout.strip()  # never started
    cri.crictl("start", web_id)
    cri.crictl("start", once_id)
    assert _wait_for(lambda: _state(cri, once_id) == "CONTAINER_EXITED", 15)
    before_pods = json.loads(cri.crictl("pods", "-o", "json").stdout)["items"]
    before = {c["id"]: c["state"] for c in json.loads(cri.crictl("ps", "-a", "-o", "json").stdout)["containers"]}
    assert before == {web_id: "CONTAINER_RUNNING", once_id: "CONTAINER_EXITED", idle_id: "CONTAINER_CREATED"}
    pod_ip = json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]["network"]["ip"]

    cri.daemon.kill9()
    cri.daemon.start()

    after_pods = json.loads(cri.crictl("pods", "-o", "json").stdout)["items"]
    assert [(p["id"], p["state"], p["metadata"]) for p in after_pods] == \
        [(p["id"], p["state"], p["metadata"]) for p in before_pods]
    assert after_pods[0]["state"] == "SANDBOX_READY"
    after = {c["id"]: c["state"] for c in json.loads(cri.crictl("ps", "-a", "-o", "json").stdout)["containers"]}
    assert after == before
    status = json.loads(cri.crictl("inspect", once_id).stdout)["status"]
    assert status["exitCode"] == 7
    inspectp = json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]
    assert inspectp["network"]["ip"] == pod_ip

    # still controllable: exec, logs, start of the created one, then stop and remove
    assert "web-up" in cri.crictl("logs", web_id).stdout
    assert "done-once" in cri.crictl("logs", once_id).stdout
    answer = cri.crictl("exec", "-s", idle_id, "true", check=False)
    assert answer.returncode != 0  # not running yet: an error, not a hang
    cri.crictl("start", idle_id)
    assert _state(cri, idle_id) == "CONTAINER_RUNNING"
    fetched = cri.crictl("exec", "-s", idle_id, "sh", "-c",
                         "printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 5 127.0.0.1 8080").stdout
    assert " 200 " in fetched.splitlines()[0], fetched  # a new container joins the old pod's netns

    cri.crictl("stop", web_id)
    assert _state(cri, web_id) == "CONTAINER_EXITED"
    cri.crictl("stopp", pod_id)
    assert json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]["state"] == "SANDBOX_NOTREADY"
    cri.crictl("rmp", pod_id)
    assert cri.crictl("pods", "-q").stdout.strip() == ""
    assert cri.crictl("ps", "-a", "-q").stdout.strip() == ""
    assert cri.daemon.call("container.list", all=True) == []
    netns_dir = cri.daemon.run_root / "cri" / "netns"
    assert not netns_dir.exists() or not any(netns_dir.iterdir())

    # and the records stay right across a second (clean) restart
    cri.daemon.stop()
    cri.daemon.start()
    assert cri.crictl("pods", "-q").stdout.strip() == ""


def test_restart_settles_what_a_crash_left_half_made(cri: CRI, tmp_path: Path) -> None:
    """A crash in the middle of CreateContainer leaves a CRI record whose engine container
    was never finished (the engine discards it at start-up); a crash in the middle of a
    removal could leave an engine container made for the CRI with no record. After the
    restart neither is left: the first record is forgotten, the second container removed.
    (The crash itself is reproduced by editing the state file: its timing cannot be hit.)"""
    cri.crictl("pull", BUSYBOX)
    pod = _pod(tmp_path, "crashy")
    pod_id = cri.crictl("runp", pod).stdout.strip()
    half_id = cri.crictl("create", pod_id, _container(tmp_path, "half", "sleep 3600"), pod).stdout.strip()
    kept_id = cri.crictl("create", pod_id, _container(tmp_path, "kept", "sleep 3600"), pod).stdout.strip()
    orphan = cri.daemon.call("container.create", image=BUSYBOX, name="orphan", cmd=["true"],
                             labels={"io.engine.cri.kind": "container", "io.engine.cri.sandbox": pod_id})
    orphan_id = orphan["Id"] if isinstance(orphan, dict) else orphan

    cri.daemon.kill9()
    state_file = cri.daemon.root / "containers" / half_id / "state.json"
    state = json.loads(state_file.read_text())
    state["state"] = "creating"
    state_file.write_text(json.dumps(state))
    cri.daemon.start()

    assert cri.crictl("ps", "-a", "-q").stdout.split() == [kept_id]
    engine_ids = {c["Id"] for c in cri.daemon.call("container.list", all=True)}
    assert half_id not in engine_ids and orphan_id not in engine_ids and kept_id in engine_ids
    assert json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]["state"] == "SANDBOX_READY"
    assert not (cri.daemon.root / "cri" / "containers" / f"{half_id}.json").exists()
    cri.crictl("start", kept_id)
    cri.crictl("stopp", pod_id)
    cri.crictl("rmp", pod_id)
    assert cri.daemon.call("container.list", all=True) == []


STALL_PLUGIN = """#!/bin/sh
# a CNI plugin that never finishes ADD (it records its pid), and whose DEL succeeds
if [ "$CNI_COMMAND" = ADD ]; then echo $$ > {marker}; exec sleep 300; fi
exit 0
"""


def test_sigkill_during_run_pod_sandbox_leaves_a_pod_that_releases_its_network(
        cri: CRI, tmp_path: Path) -> None:
    """The daemon dies while CNI ADD runs (the bridge plugin has made the veth and leased an
    IP; the next plugin of the chain hangs). After the restart the pod is listed NOTREADY,
    and StopPodSandbox/RemovePodSandbox release its namespace and its IP lease."""
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    for name in ("bridge", "host-local", "portmap", "loopback"):
        (bin_dir / name).symlink_to(f"/usr/lib/cni/{name}")
    marker = tmp_path / "stall.pid"
    (bin_dir / "stall").write_text(STALL_PLUGIN.format(marker=marker))
    (bin_dir / "stall").chmod(0o755)
    conf = next((tmp_path / "cni").glob("*.conflist"))
    conflist = json.loads(conf.read_text())
    conflist["plugins"].insert(1, {"type": "stall"})
    conf.write_text(json.dumps(conflist))
    ipam_dir = tmp_path / "ipam"

    pod = _pod(tmp_path, "interrupted")
    runp = subprocess.Popen([str(cri.crictl_bin), "-r", cri.endpoint, "runp", pod],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: marker.exists() and marker.read_text().strip() != "", 30), \
            cri.daemon.log()[-3000:]
        cri.daemon.kill9()
    finally:
        runp.kill()
        runp.wait(10)
        if marker.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(marker.read_text().strip()), signal.SIGKILL)
    leases = [f for f in ipam_dir.rglob("*") if f.is_file() and f.name[0].isdigit()]
    assert leases, "the bridge plugin did not lease an address before the crash"
    cri.daemon.start()

    pods = json.loads(cri.crictl("pods", "-o", "json").stdout)["items"]
    assert [(p["metadata"]["name"], p["state"]) for p in pods] == [("interrupted", "SANDBOX_NOTREADY")]
    pod_id = pods[0]["id"]
    netns_file = cri.daemon.run_root / "cri" / "netns" / pod_id
    assert netns_file.exists()
    cri.crictl("stopp", pod_id)
    cri.crictl("rmp", pod_id)
    assert cri.crictl("pods", "-q").stdout.strip() == ""
    assert not netns_file.exists()
    assert not [f for f in ipam_dir.rglob("*") if f.is_file() and f.name[0].isdigit()], \
        "the pod's IP lease was not released"
    assert cri.daemon.call("container.list", all=True) == []


@pytest.fixture
def stub(cri: CRI) -> api_pb2_grpc.RuntimeServiceStub:
    channel = grpc.insecure_channel(cri.endpoint.replace("unix://", "unix:"))
    return api_pb2_grpc.RuntimeServiceStub(channel)


def _error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=60)
    return info.value


def _raw(cri: CRI, method: str, response_class):  # type: ignore[no-untyped-def]
    """A RuntimeService method taking the request as bytes (no serializer)."""
    channel = grpc.insecure_channel(cri.endpoint.replace("unix://", "unix:"))
    return channel.unary_unary(f"/runtime.v1.RuntimeService/{method}",
                               response_deserializer=response_class.FromString)


def test_bad_grpc_input_gets_a_clear_status(cri: CRI, stub: api_pb2_grpc.RuntimeServiceStub) -> None:
    # a sandbox id that does not exist
    e = _error(stub.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id="feedface0000"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "feedface0000" in e.details()
    e = _error(stub.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id="feedface0000", config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image=BUSYBOX))))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "feedface0000" in e.details()
    e = _error(stub.ContainerStatus, pb.ContainerStatusRequest(container_id="feedface0000"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "feedface0000" in e.details()

    # missing required fields
    e = _error(stub.RunPodSandbox, pb.RunPodSandboxRequest())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "uid" in e.details()
    e = _error(stub.CreateContainer, pb.CreateContainerRequest())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "pod sandbox id is required" in e.details()
    e = _error(stub.ExecSync, pb.ExecSyncRequest())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "container id is required" in e.details()

    # unknown fields are ignored (proto3: a newer kubelet's additions); field 111, varint 1
    unknown = b"\xf8\x06\x01"
    version = _raw(cri, "Version", pb.VersionResponse)(
        pb.VersionRequest(version="v1").SerializeToString() + unknown, timeout=60)
    assert version.runtime_name == "engine"
    listed = _raw(cri, "ListPodSandbox", pb.ListPodSandboxResponse)(unknown, timeout=60)
    assert list(listed.items) == []

    # bytes that are no protobuf at all
    with pytest.raises(grpc.RpcError) as info:
        _raw(cri, "RunPodSandbox", pb.RunPodSandboxResponse)(b"\x0a\xff\xff\xff\xff\x0f", timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid RunPodSandboxRequest" in info.value.details()

    # a huge config: over the 16 MiB message limit, and under it but with absurd metadata
    huge = pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="huge", namespace="d", uid="u"),
        annotations={"blob": "x" * (17 * 1024 * 1024)}))
    e = _error(stub.RunPodSandbox, huge)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in e.details()
    big = pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="big", namespace="d", uid="u"),
        labels={f"k{i}": "v" * 100 for i in range(20000)}))
    e = _error(stub.RunPodSandbox, big)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels take" in e.details()

    # a method engine does not implement says so
    e = _error(stub.CheckpointContainer, pb.CheckpointContainerRequest(container_id="x"))
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED and "CheckpointContainer" in e.details()

    # nothing was made, and the daemon keeps serving
    assert cri.daemon.proc is not None and cri.daemon.proc.poll() is None
    assert stub.Version(pb.VersionRequest(), timeout=60).runtime_api_version == "v1"
    assert list(stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items) == []
    assert cri.daemon.call("container.list", all=True) == []
    assert "Traceback" not in cri.daemon.log()
