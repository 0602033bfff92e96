"""Where everything lives under ``--root`` and ``--run-root``. Nothing else builds paths.

``root`` (persistent, survives reboots):
    engine.lock                       flock held by the running daemon
    content/blobs/sha256/<hex>        verified content-addressed blobs (manifests, configs, layers)
    content/ingest/<hex>.partial      downloads in progress (resumable; never visible as blobs)
    images/                           image records and the names/tags index
    storage/<driver>/                 the storage driver's own tree (layers, container layers)
    containers/<id>/                  container config + state + log (ctr.log)
    networks/                         network definitions and IPAM state
    volumes/                          named volumes
``run_root`` (tmpfs-like, per boot):
    engine.sock                       default RPC socket
    engined.pid
    containers/<id>/                  bundle (config.json), monitor pidfile, exit file, oom marker
    runtimes/<name>/                  each OCI runtime's own ``--root`` state
    netns/                            network namespaces bind-mounted by the engine
"""

from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class Layout:
    root: Path
    run_root: Path

    # --- root ------------------------------------------------------------------------------
    @property
    def lock_file(self) -> Path:
        return self.root / "engine.lock"

    @property
    def content_dir(self) -> Path:
        return self.root / "content"

    @property
    def blobs_dir(self) -> Path:
        return self.content_dir / "blobs"

    @property
    def ingest_dir(self) -> Path:
        return self.content_dir / "ingest"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def storage_dir(self, driver: str) -> Path:
        return self.root / "storage" / driver

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    def container_dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    @property
    def networks_dir(self) -> Path:
        return self.root / "networks"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    # --- run_root --------------------------------------------------------------------------
    @property
    def default_socket(self) -> Path:
        return self.run_root / "engine.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_root / "engined.pid"

    @property
    def run_containers_dir(self) -> Path:
        return self.run_root / "containers"

    def run_container_dir(self, container_id: str) -> Path:
        return self.run_containers_dir / container_id

    def runtime_state_dir(self, runtime: str) -> Path:
        return self.run_root / "runtimes" / runtime

    @property
    def netns_dir(self) -> Path:
        return self.run_root / "netns"

    def ensure(self) -> None:
        """Create the top-level directories (sync; call from a thread in the daemon)."""
        for path in (
            self.root,
            self.blobs_dir,
            self.ingest_dir,
            self.images_dir,
            self.containers_dir,
            self.networks_dir,
            self.volumes_dir,
            self.run_root,
            self.run_containers_dir,
            self.netns_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
