"""What the CRI keeps beside the engine's containers, under ``<root>/cri``.

A pod sandbox is an engine container (its infra process) plus what a pod has that a
container has not: metadata, labels, annotations, its network namespace and CNI result, its
/etc files, its log directory. A CRI container is an engine container plus its metadata,
labels, annotations, image as asked for, and log path. Each record is one JSON file,
written atomically; the engine container of the same id holds the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from engine.convert import disk
from engine.store.atomic import write_json_atomic


@attrs.define
class SandboxRecord:
    id: str
    name: str
    uid: str
    namespace: str
    attempt: int
    created_at: int  # ns since the epoch
    labels: dict[str, str] = attrs.field(factory=dict)
    annotations: dict[str, str] = attrs.field(factory=dict)
    ready: bool = True
    runtime_handler: str = ""
    hostname: str = ""
    log_directory: str = ""
    cgroup_parent: str = ""
    network_mode: int = 0  # NamespaceMode of network, ipc and pid
    ipc_mode: int = 0
    pid_mode: int = 1
    netns: str = ""  # the namespace file; "" for the host's
    ips: list[str] = attrs.field(factory=list)
    port_mappings: list[dict[str, Any]] = attrs.field(factory=list)
    cni_conflist: dict[str, Any] = attrs.field(factory=dict)
    cni_result: dict[str, Any] = attrs.field(factory=dict)
    etc_dir: str = ""


@attrs.define
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str
    attempt: int
    created_at: int
    image: str  # as the client named it
    image_ref: str  # the image id
    labels: dict[str, str] = attrs.field(factory=dict)
    annotations: dict[str, str] = attrs.field(factory=dict)
    log_path: str = ""
    mounts: list[dict[str, Any]] = attrs.field(factory=list)


class RecordStore:
    """Records of one kind, one file each, kept in memory too. Blocking methods."""

    def __init__(self, directory: Path, kind: type) -> None:
        self.dir = directory
        self.kind = kind
        self.items: dict[str, Any] = {}

    def load(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.dir.glob("*.json")):
            try:
                record: Any = disk.structure(json.loads(path.read_text()), self.kind)
            except (OSError, ValueError, Exception):  # a damaged record is skipped, not fatal
                continue
            self.items[record.id] = record

    def save(self, record: Any) -> None:
        write_json_atomic(self.dir / f"{record.id}.json", disk.unstructure(record))
        self.items[record.id] = record

    def delete(self, record_id: str) -> None:
        (self.dir / f"{record_id}.json").unlink(missing_ok=True)
        self.items.pop(record_id, None)
