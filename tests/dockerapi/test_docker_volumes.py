"""Volumes through the Docker API: the docker CLI's ``volume`` verbs, ``run -v NAME:/path``
and ``--mount`` with data kept across containers, inspect's Mounts, prune; docker-py's
``client.volumes`` and ``system df``. Each test has its own engined; what the Docker API shows
is compared with the engine's own RPC."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import Engine, EngineFactory, docker_clients

IMAGE = "busybox"


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


def volume_names(engine: Engine) -> set[str]:
    return {v["Name"] for v in engine.daemon.call("volume.list")["Volumes"]}


def test_cli_volume_verbs_and_data_shared_between_containers(engine: Engine) -> None:
    assert engine.docker("volume", "create", "--label", "team=a", "data").stdout.strip() == "data"
    assert engine.docker("volume", "create", "other").stdout.strip() == "other"
    listed = engine.docker("volume", "ls", "--format", "{{.Driver}} {{.Name}}").stdout.splitlines()
    assert sorted(listed) == ["local data", "local other"]
    assert engine.docker("volume", "ls", "-q", "--filter", "label=team=a").stdout.split() == ["data"]
    assert engine.docker("volume", "ls", "-q", "--filter", "name=oth").stdout.split() == ["other"]
    bad = engine.docker("volume", "ls", "--filter", "colour=red", check=False)
    assert bad.returncode == 1 and "colour" in bad.stderr
    inspected = json.loads(engine.docker("volume", "inspect", "data").stdout)[0]
    rpc = engine.daemon.call("volume.inspect", name="data")
    assert inspected["Name"] == "data" and inspected["Driver"] == "local" and inspected["Scope"] == "local"
    assert inspected["Labels"] == {"team": "a"}
    assert inspected["Mountpoint"] == rpc["Mountpoint"] and inspected["Mountpoint"].endswith("/_data")
    missing = engine.docker("volume", "inspect", "nope", check=False)
    assert missing.returncode == 1 and "get nope: no such volume" in missing.stderr  # dockerd's words

    # one container writes into the named volume, the next reads it (HostConfig.Binds)
    engine.docker("run", "--name", "writer", "-v", "data:/data", IMAGE, "sh", "-c", "echo kept > /data/f")
    read = engine.docker("run", "--rm", "-v", "data:/data:ro", IMAGE, "cat", "/data/f")
    assert read.stdout == "kept\n"
    assert (Path(rpc["Mountpoint"]) / "f").read_text() == "kept\n"
    writer = json.loads(engine.docker("inspect", "writer").stdout)[0]
    mounts = writer["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"], m["RW"]) for m in mounts] == [("volume", "data", "/data", True)]
    assert mounts[0]["Source"] == rpc["Mountpoint"]
    assert writer["HostConfig"]["Binds"] == ["data:/data"]
    assert writer["Config"]["Volumes"] == {"/data": {}}

    # HostConfig.Mounts of type volume (a new volume, made on create) and tmpfs
    engine.docker("run", "--rm", "--mount", "type=volume,src=made,dst=/m", "--mount", "type=tmpfs,dst=/t",
                  IMAGE, "sh", "-c", "echo m > /m/x && grep -q ' /t tmpfs ' /proc/mounts")
    read_only = engine.docker("run", "--rm", "--mount", "type=volume,src=made,dst=/m,readonly", IMAGE,
                              "sh", "-c", "cat /m/x; touch /m/y", check=False)
    assert read_only.stdout == "m\n" and read_only.returncode == 1 and "Read-only" in read_only.stderr
    assert "made" in volume_names(engine)

    busy = engine.docker("volume", "rm", "data", check=False)
    writer_id = engine.daemon.call("container.inspect", id="writer")["Id"]
    assert busy.returncode == 1 and f"remove data: volume is in use - [{writer_id}]" in busy.stderr
    assert "data" in volume_names(engine)  # refused, nothing lost
    engine.docker("rm", "writer")
    assert engine.docker("volume", "rm", "data").stdout.strip() == "data"
    gone = engine.docker("volume", "rm", "data", check=False)
    assert gone.returncode == 1 and "get data: no such volume" in gone.stderr
    engine.docker("volume", "rm", "-f", "data")  # force: a missing volume is no error

    # anonymous volumes (an image-less -v /path) go with prune; named ones only with -a
    engine.docker("run", "--name", "anon", "-v", "/scratch", IMAGE, "true")
    anonymous = json.loads(engine.docker("inspect", "anon").stdout)[0]["Mounts"][0]
    assert anonymous["Type"] == "volume" and anonymous["Destination"] == "/scratch"
    engine.docker("rm", "anon")
    assert anonymous["Name"] in volume_names(engine)
    pruned = engine.docker("volume", "prune", "-f").stdout
    assert anonymous["Name"] in pruned and "made" not in pruned
    assert volume_names(engine) == {"made", "other"}
    pruned = engine.docker("volume", "prune", "-a", "-f").stdout
    assert "made" in pruned and "other" in pruned
    assert engine.docker("volume", "ls", "-q").stdout.strip() == ""
    assert volume_names(engine) == set()
    # the volume events, by name (docker's volume= filter)
    seen = engine.docker("events", "--since", "0", "--until", f"{time.time():.3f}", "--filter", "volume=data",
                         "--format", "{{.Type}} {{.Action}} {{.Actor.ID}}", timeout=20).stdout.splitlines()
    assert seen[0] == "volume create data" and seen[-1] == "volume destroy data", seen
    assert "volume mount data" in seen and {line.split()[2] for line in seen} == {"data"}


def test_docker_py_volumes_and_disk_usage(engine: Engine) -> None:
    import docker

    client = engine.docker_py()
    try:
        volume = client.volumes.create(name="pyvol", labels={"k": "v"})
        assert volume.name == "pyvol" and volume.attrs["Labels"] == {"k": "v"}
        assert client.volumes.create(name="pyvol").id == "pyvol"  # create is idempotent
        assert [v.name for v in client.volumes.list()] == ["pyvol"]
        assert [v.name for v in client.volumes.list(filters={"label": "k=other"})] == []
        assert client.volumes.get("pyvol").attrs["Mountpoint"] == engine.daemon.call(
            "volume.inspect", name="pyvol")["Mountpoint"]
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get("missing")
        for bad, status, words in [({"name": "../escape"}, 400, "invalid volume name"),
                                   ({"name": "x", "driver": "nope"}, 404, "not installed"),
                                   ({"name": "y", "labels": {"k": 1}}, 400, "Labels")]:
            with pytest.raises(docker.errors.APIError) as refused:
                client.volumes.create(**bad)
            assert refused.value.status_code == status and words in str(refused.value), refused.value
        assert [v.name for v in client.volumes.list()] == ["pyvol"]  # nothing made by a refusal

        out = client.containers.run(IMAGE, ["sh", "-c", "echo py > /v/f; cat /v/f"],
                                    volumes={"pyvol": {"bind": "/v", "mode": "rw"}}, name="py-writer")
        assert out == b"py\n"
        out = client.containers.run(IMAGE, ["cat", "/v/f"], volumes=["pyvol:/v:ro"], remove=True)
        assert out == b"py\n"

        # Config.Volumes: an anonymous volume for the path (docker-py's create_container)
        created = client.api.create_container(IMAGE, ["true"], volumes=["/anon"], name="py-anon")
        mounts = client.api.inspect_container(created["Id"])["Mounts"]
        assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/anon")]
        anonymous = mounts[0]["Name"]

        df = client.df()
        usage = {v["Name"]: v["UsageData"] for v in df["Volumes"]}
        assert set(usage) == {"pyvol", anonymous}
        assert usage["pyvol"]["RefCount"] == 1 and usage["pyvol"]["Size"] > 0

        with pytest.raises(docker.errors.APIError) as refused:
            client.volumes.get("pyvol").remove()
        assert refused.value.status_code == 409
        client.containers.get("py-writer").remove()
        client.api.remove_container("py-anon", v=True)  # rm -v: its anonymous volume too
        client.volumes.get("pyvol").remove()
        assert client.volumes.list() == []
        assert client.df()["Volumes"] == []
    finally:
        client.close()


@pytest.mark.parametrize("binary", docker_clients())
def test_volume_verbs_with_each_cli_and_prune_by_api_version(engine: Engine, binary: str) -> None:
    """docker 28 talks API 1.47, where prune takes anonymous volumes only; Debian's 20.10
    talks 1.41, where it takes every unused volume (the daemon answers each as dockerd did)."""
    api = json.loads(engine.docker("version", "--format", "{{json .Client}}", binary=binary).stdout)["ApiVersion"]
    assert api in ("1.41", "1.47")
    engine.docker("volume", "create", "kept", binary=binary)
    engine.docker("run", "--rm", "-v", "kept:/k", IMAGE, "sh", "-c", "echo v > /k/v", binary=binary)
    out = engine.docker("run", "--rm", "--mount", "source=kept,target=/k", IMAGE, "cat", "/k/v", binary=binary)
    assert out.stdout == "v\n"
    assert json.loads(engine.docker("volume", "inspect", "kept", binary=binary).stdout)[0]["Name"] == "kept"
    engine.docker("create", "--name", "holder", "-v", "kept:/k", IMAGE, binary=binary)
    engine.docker("volume", "prune", "-f", binary=binary)
    assert volume_names(engine) == {"kept"}  # in use: never pruned
    engine.docker("rm", "holder", binary=binary)
    engine.docker("volume", "prune", "-f", binary=binary)
    assert volume_names(engine) == (set() if api == "1.41" else {"kept"})
    engine.docker("volume", "rm", "-f", "kept", binary=binary)
    assert engine.docker("volume", "ls", "-q", binary=binary).stdout.strip() == ""
