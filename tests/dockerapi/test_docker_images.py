"""Image archives through the Docker API: docker save / load / import with the real docker
CLI and docker-py, compared with what the engine's own RPC reports."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import DOCKER_CLIENTS, Engine, EngineFactory, docker_clients


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


@pytest.mark.parametrize("binary", docker_clients())
def test_save_load_round_trip(engine: Engine, binary: str, tmp_path: Path) -> None:
    image_id = engine.daemon.call("image.inspect", id="busybox:latest")["Id"]
    engine.docker("tag", "busybox", "mine/box:v2", binary=binary)
    engine.docker("save", "-o", str(tmp_path / "saved.tar"), "busybox", "mine/box:v2", binary=binary)
    with tarfile.open(tmp_path / "saved.tar") as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.load(manifest_file)
    assert sorted(manifest[0]["RepoTags"]) == ["busybox:latest", "mine/box:v2"]
    engine.docker("rmi", "busybox", "mine/box:v2", binary=binary)
    assert engine.daemon.call("image.list") == []
    loaded = engine.docker("load", "-i", str(tmp_path / "saved.tar"), binary=binary).stdout
    assert "Loaded image: busybox:latest" in loaded and "Loaded image: mine/box:v2" in loaded
    assert engine.daemon.call("image.inspect", id="mine/box:v2")["Id"] == image_id
    # through pipes: save to stdout, load from stdin (what `docker save x | docker load` does)
    saver = subprocess.run([binary, "save", "mine/box:v2"], capture_output=True, env=engine.env(),
                           timeout=60, check=True)
    engine.docker("rmi", "mine/box:v2", binary=binary)
    loader = subprocess.run([binary, "load"], input=saver.stdout, capture_output=True, env=engine.env(),
                            timeout=60)
    assert loader.returncode == 0 and b"Loaded image: mine/box:v2" in loader.stdout
    missing = engine.docker("save", "nosuch:latest", "-o", str(tmp_path / "x.tar"), binary=binary, check=False)
    assert missing.returncode == 1 and "nosuch" in missing.stderr
    garbage = engine.docker("load", binary=binary, input="not a tar", check=False)
    assert garbage.returncode == 1
    assert engine.docker("run", "--rm", "busybox", "echo", "still fine", binary=binary).stdout == "still fine\n"


def test_import_an_exported_container(engine: Engine, tmp_path: Path) -> None:
    binary = DOCKER_CLIENTS[0]
    engine.docker("run", "--name", "src", "busybox", "sh", "-c", "echo made > /made.txt")
    exported = subprocess.run([binary, "export", "src"], capture_output=True, env=engine.env(), timeout=60,
                              check=True).stdout
    imported = subprocess.run([binary, "import", "--change", 'CMD ["cat", "/made.txt"]', "-m", "from export",
                               "-", "imp:v1"], input=exported, capture_output=True, env=engine.env(), timeout=60)
    assert imported.returncode == 0, imported.stderr
    new_id = imported.stdout.decode().strip()
    rpc = engine.daemon.call("image.inspect", id="imp:v1")
    assert new_id == rpc["Id"] and rpc["Config"]["Cmd"] == ["cat", "/made.txt"]
    assert engine.docker("run", "--rm", "imp:v1").stdout == "made\n"
    history = engine.docker("history", "--format", "{{.Comment}}", "imp:v1").stdout
    assert "from export" in history
    (tmp_path / "bad.tar").write_bytes(b"\0" * 10)
    bad = engine.docker("import", str(tmp_path / "bad.tar"), "bad:v1", check=False)
    assert bad.returncode == 1
    engine.docker("rm", "src")


def test_docker_py_save_load_import(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        image = client.images.get("busybox")
        data = b"".join(image.save(named=True))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert "manifest.json" in tar.getnames()
        client.images.remove("busybox")
        loaded = client.images.load(data)
        assert [i.id for i in loaded] == [image.id]
        assert "busybox:latest" in client.images.get(image.id).tags
        root = io.BytesIO()
        with tarfile.open(fileobj=root, mode="w") as tar:
            info = tarfile.TarInfo("hello.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"hi\n"))
        out = client.api.import_image_from_data(root.getvalue(), repository="pyimp", tag="v3")
        new_id = json.loads(out.splitlines()[-1] if isinstance(out, str) else out)["status"]
        assert client.images.get("pyimp:v3").id == new_id
        assert engine.daemon.call("image.inspect", id="pyimp:v3")["Id"] == new_id
    finally:
        client.close()
