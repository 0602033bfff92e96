"""The harness installs what it configures: podman with the netavark backend needs netavark
and aardvark-dns, which Debian's podman only recommends (scripts/bench.sh installs without
recommends). A podman without them is skipped with the reason, not run into a failed pull."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.engines import PODMAN_HELPERS, PODMAN_NETWORK_BACKEND, Podman

REPO = Path(__file__).resolve().parents[2]


def test_bench_sh_installs_every_podman_helper() -> None:
    script = (REPO / "scripts" / "bench.sh").read_text()
    found = re.search(r"^PEER_PACKAGES=\(([^)]*)\)", script, re.MULTILINE)
    assert found, "scripts/bench.sh no longer lists its peer packages in PEER_PACKAGES"
    packages = found.group(1).split()
    assert {"podman", "docker.io", *PODMAN_HELPERS} <= set(packages)
    assert PODMAN_NETWORK_BACKEND in PODMAN_HELPERS


@pytest.fixture
def podman_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    podman = bin_dir / "podman"
    podman.write_text("#!/bin/sh\nexit 0\n")
    podman.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return tmp_path


def test_podman_without_netavark_is_reported_missing(podman_on_path: Path) -> None:
    helpers = podman_on_path / "lib-podman"
    helpers.mkdir()
    why = Podman.missing((str(helpers),))
    assert why is not None and "netavark" in why and "apt-get install" in why
    (helpers / "netavark").write_text("")
    why = Podman.missing((str(helpers),))
    assert why is not None and "aardvark-dns" in why
    (helpers / "aardvark-dns").write_text("")
    assert Podman.missing((str(helpers),)) is None


def test_no_podman_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    why = Podman.missing()
    assert why is not None and "podman is not installed" in why and "netavark" in why
