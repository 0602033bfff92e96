"""A crictl session end to end against engined's CRI: pull, runp, create, start, exec,
logs (in the CRI log format, at the path kubelet asks for), hostPort, stopp, rmp."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.cri.conftest import CRI

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (P|F) (.*)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_version_and_status(cri: CRI) -> None:
    out = cri.crictl("version").stdout
    assert "RuntimeName:  engine" in out and "RuntimeApiVersion:  v1" in out
    info = json.loads(cri.crictl("info").stdout)
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


def test_images_pull_list_status_remove(cri: CRI) -> None:
    cri.crictl("pull", BUSYBOX)
    images = json.loads(cri.crictl("images", "-o", "json").stdout)["images"]
    assert any(BUSYBOX in i["repoTags"] for i in images), images  # the upstream name, mirrored
    status = json.loads(cri.crictl("inspecti", BUSYBOX).stdout)["status"]
    assert status["repoTags"] == [BUSYBOX] and status["id"].startswith("sha256:")
    cri.crictl("rmi", BUSYBOX)
    assert cri.crictl("inspecti", BUSYBOX, check=False).returncode != 0
    # a missing image is an error that names it, and the daemon stays up
    missing = cri.crictl("pull", "registry.k8s.io/e2e-test-images/nosuch:1.0", check=False)
    assert missing.returncode != 0 and "nosuch" in missing.stderr
    cri.crictl("version")


def test_pod_session(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    host_port = _free_port()
    pod = _write(tmp_path / "pod.json", {
        "metadata": {"name": "session", "namespace": "default", "uid": "uid-session", "attempt": 0},
        "hostname": "session-pod", "log_directory": str(log_dir),
        "dns_config": {"servers": ["127.0.0.1"], "searches": ["example.test"], "options": ["ndots:2"]},
        "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": host_port}],
        "linux": {},
    })
    ctr = _write(tmp_path / "ctr.json", {
        "metadata": {"name": "web"}, "image": {"image": BUSYBOX}, "log_path": "web.log",
        "command": ["sh", "-c", "echo hello out; echo hello err >&2; exec httpd -f -p 80 -h /etc"],
        "linux": {},
    })
    pod_id = cri.crictl("runp", pod).stdout.strip()
    inspect = json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]
    assert inspect["state"] == "SANDBOX_READY"
    ip = inspect["network"]["ip"]
    assert ip and ip.rsplit(".", 1)[0] == cri.pod_subnet.rsplit(".", 1)[0]

    ctr_id = cri.crictl("create", pod_id, ctr, pod).stdout.strip()
    cri.crictl("start", ctr_id)
    assert json.loads(cri.crictl("inspect", ctr_id).stdout)["status"]["state"] == "CONTAINER_RUNNING"

    # ExecSync: output, exit code, the pod's hostname and DNS
    assert cri.crictl("exec", "-s", ctr_id, "hostname").stdout.strip() == "session-pod"
    resolv = cri.crictl("exec", "-s", ctr_id, "cat", "/etc/resolv.conf").stdout
    assert "nameserver 127.0.0.1" in resolv and "search example.test" in resolv and "ndots:2" in resolv
    failed = cri.crictl("exec", "-s", ctr_id, "sh", "-c", "echo to-err >&2; exit 3", check=False)
    assert failed.returncode != 0 and "exited with 3" in failed.stderr

    # logs: the CRI format at log_directory/log_path, and through crictl
    log_file = log_dir / "web.log"
    # both lines: stdout and stderr come through pipes of their own, logged in either order
    assert _wait_for(lambda: log_file.exists() and all(line in log_file.read_text()
                                                       for line in ("hello out", "hello err")))
    lines = log_file.read_text().splitlines()
    parsed = [CRI_LOG_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert ("stdout", "F", "hello out") in [(m.group(2), m.group(3), m.group(4)) for m in parsed if m]
    assert ("stderr", "F", "hello err") in [(m.group(2), m.group(3), m.group(4)) for m in parsed if m]
    logs = cri.crictl("logs", ctr_id)
    assert "hello out" in logs.stdout and "hello err" in logs.stderr

    # hostPort and the pod IP answer from the host (once httpd, exec'd after the echoes, listens)
    def answers(url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode().strip()
        except OSError:
            return ""

    for url in (f"http://127.0.0.1:{host_port}/hostname", f"http://{ip}:80/hostname"):
        assert _wait_for(lambda url=url: answers(url) == "session-pod"), url

    # stop and remove are idempotent; nothing of the pod is left
    cri.crictl("stopp", pod_id)
    cri.crictl("stopp", pod_id)
    assert json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]["state"] == "SANDBOX_NOTREADY"
    assert json.loads(cri.crictl("inspect", ctr_id).stdout)["status"]["state"] == "CONTAINER_EXITED"
    cri.crictl("rmp", pod_id)
    assert cri.crictl("pods", "-q").stdout.strip() == ""
    assert cri.crictl("ps", "-a", "-q").stdout.strip() == ""
    netns_dir = cri.daemon.run_root / "cri" / "netns"
    assert not netns_dir.exists() or not any(netns_dir.iterdir())
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert pod_id not in nat
    # the engine's containers for the pod are gone too
    assert cri.daemon.call("container.list", all=True) == []


def test_bad_requests_keep_the_daemon_up(cri: CRI, tmp_path: Path) -> None:
    pod = _write(tmp_path / "pod.json", {"metadata": {"name": "x", "namespace": "d", "uid": ""}})
    bad = cri.crictl("runp", pod, check=False)
    assert bad.returncode != 0 and "uid" in bad.stderr
    missing = cri.crictl("inspectp", "0123456789ab", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    cri.crictl("rmp", "0123456789ab", check=False)  # crictl looks it up first; no crash
    cri.crictl("version")
