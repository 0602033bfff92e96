"""The CRI's streaming server end to end: crictl exec / exec -it / attach / port-forward
(SPDY/3.1, client-go), critest's Streaming specs, WebSocket clients, and bad input."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cri.conftest import CRI

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"


def _write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _pod(cri: CRI, tmp_path: Path, name: str, *, host_network: bool = False) -> str:
    linux: dict[str, Any] = {}
    if host_network:
        linux = {"security_context": {"namespace_options": {"network": 2}}}
    pod = _write(tmp_path / f"{name}-pod.json", {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "attempt": 0},
        "log_directory": str(tmp_path / "logs"), "linux": linux,
    })
    (tmp_path / "logs").mkdir(exist_ok=True)
    return cri.crictl("runp", pod).stdout.strip()


def _container(cri: CRI, tmp_path: Path, pod_id: str, name: str, command: list[str], **extra: Any) -> str:
    pod_config = json.loads((tmp_path / f"{pod_id_name(cri, pod_id)}-pod.json").read_text())
    ctr = _write(tmp_path / f"{name}-ctr.json", {
        "metadata": {"name": name}, "image": {"image": BUSYBOX}, "command": command,
        "log_path": f"{name}.log", "linux": {}, **extra,
    })
    pod_file = tmp_path / f"{name}-podcfg.json"
    pod_file.write_text(json.dumps(pod_config))
    ctr_id = cri.crictl("create", pod_id, ctr, str(pod_file)).stdout.strip()
    cri.crictl("start", ctr_id)
    return ctr_id


def pod_id_name(cri: CRI, pod_id: str) -> str:
    return json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]["metadata"]["name"]


@pytest.fixture
def running(cri: CRI, tmp_path: Path) -> tuple[CRI, str, str]:
    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "stream")
    ctr_id = _container(cri, tmp_path, pod_id, "sleeper", ["sleep", "3600"])
    return cri, pod_id, ctr_id


def test_crictl_exec_output_and_exit_code(running: tuple[CRI, str, str]) -> None:
    cri, _pod_id, ctr = running
    out = cri.crictl("exec", ctr, "sh", "-c", "echo to-out; echo to-err >&2")
    assert out.stdout == "to-out\n"
    assert "to-err\n" in out.stderr
    failed = cri.crictl("exec", ctr, "sh", "-c", "echo partial; exit 7", check=False)
    assert failed.stdout == "partial\n"
    # crictl 1.26 (client-go 0.26) turns the status's exit code into its error message and
    # exits 1 itself: the code came back through the error stream
    assert failed.returncode == 1
    assert "command terminated with exit code 7" in failed.stderr, failed.stderr
