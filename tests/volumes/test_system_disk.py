"""`system df` agrees with du, `system prune -a --volumes` spares what runs, `system check`
finds planted damage and `--repair` mends it, leaving the sound parts alone."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon
from engine.testing.images import multilayer_image, write_docker_archive

from .conftest import SEEDED, run, start_engine

MULTI = "localhost/test/multilayer:latest"


def du(*paths: Path) -> int:
    out = subprocess.run(["du", "-s", "-c", "--block-size=1", *map(str, paths)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def close(a: int, b: int) -> bool:
    return abs(a - b) <= max(a, b) * 0.01


def overlay(d: Daemon) -> Path:
    return d.root / "storage" / "overlay"


def layer_dir(d: Daemon, diff_id: str) -> Path:
    return overlay(d) / "layers" / diff_id.removeprefix("sha256:")


def test_system_df_matches_du_and_prune_spares_what_runs(engine: Daemon) -> None:
    d = engine
    d.call("container.create", image="busybox", name="runner", volumes=["data:/data"],
           cmd=["sh", "-c", "dd if=/dev/urandom of=/data/blob bs=1k count=1024 2>/dev/null; "
                            "dd if=/dev/urandom of=/rw bs=1k count=300 2>/dev/null; sleep 300"])
    d.call("container.start", id="runner")
    code, _, err, stopped = run(d, SEEDED, name="stopped", cmd=[
        "sh", "-c", "dd if=/dev/urandom of=/junk bs=1k count=512 2>/dev/null; echo x > /anon/more"])
    assert code == 0, err
    d.call("volume.create", name="idle")
    idle = Path(d.call("volume.inspect", name="idle")["Mountpoint"])
    (idle / "f").write_bytes(os.urandom(256 * 1024))
    deadline = time.monotonic() + 10
    runner_id = d.call("container.inspect", id="runner")["Id"]
    written = overlay(d) / "containers" / runner_id / "upper" / "rw"
    # until the runner's last dd is done (its 300 kB file whole), not merely 300 kB in its
    # layer: sizes measured while it still writes would differ from du's a moment later
    while not (written.exists() and written.stat().st_size == 300 * 1024):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    usage = d.call("system.df")
    images = {i["RepoTags"][0]: i for i in usage["Images"]}
    busybox, seeded = images["busybox:latest"], images["localhost/test/seeded:latest"]
    layers = {i: d.call("image.inspect", id=i)["RootFS"]["Layers"]
              for i in ("busybox", SEEDED)}
    all_layers = sorted(set(layers["busybox"]) | set(layers[SEEDED]))
    assert close(usage["LayersSize"], du(*(layer_dir(d, x) for x in all_layers)))
    assert close(busybox["Size"], du(layer_dir(d, layers["busybox"][0])))
    assert close(seeded["SharedSize"], busybox["Size"])  # the busybox layer is shared
    assert close(seeded["UniqueSize"], du(layer_dir(d, layers[SEEDED][1])))
    assert busybox["Containers"] == 1 and seeded["Containers"] == 1
    for c in usage["Containers"]:
        assert close(c["SizeRw"], du(overlay(d) / "containers" / c["Id"] / "upper")), c
    sizes = {c["Names"][0]: c["SizeRw"] for c in usage["Containers"]}
    assert sizes["runner"] >= 300 * 1024 and sizes["stopped"] >= 512 * 1024
    volumes = {v["Name"]: v for v in usage["Volumes"]}
    for name, v in volumes.items():
        assert close(v["UsageData"]["Size"], du(d.root / "volumes" / name / "_data")), name
    assert volumes["data"]["UsageData"]["RefCount"] == 1 and volumes["idle"]["UsageData"]["RefCount"] == 0
    summary = {s["Type"]: s for s in usage["Summary"]}
    assert summary["Containers"]["Reclaimable"] == sizes["stopped"]
    assert summary["Local Volumes"]["Reclaimable"] == volumes["idle"]["UsageData"]["Size"]
    assert summary["Images"]["Reclaimable"] == 0  # every image has a container

    runner_pid = d.call("container.inspect", id="runner")["State"]["Pid"]
    anon = {m["Name"] for m in d.call("container.inspect", id=stopped)["Mounts"] if m["Type"] == "volume"}
    result = d.call("system.prune", all=True, volumes=True)
    assert result["ContainersDeleted"] == [stopped]
    assert set(result["VolumesDeleted"]) == anon  # docker 23+: anonymous volumes only
    assert any(e.get("Deleted", "").startswith("sha256:") for e in result["ImagesDeleted"])
    assert result["SpaceReclaimed"] > 0
    # what runs, its image and its volume are untouched; a named volume stays too
    info = d.call("container.inspect", id="runner")
    assert info["State"]["Status"] == "running" and info["State"]["Pid"] == runner_pid
    assert {i["RepoTags"][0] for i in d.call("image.list")} == {"busybox:latest"}
    assert {v["Name"] for v in d.call("volume.list")["Volumes"]} == {"data", "idle"}
    with d.client() as c:
        out = b"".join(i["data"] for i in c.stream("container.exec", id="runner", cmd=["ls", "/data"]))
    assert out == b"blob\n"


def test_prune_filters(engine: Daemon) -> None:
    d = engine
    old = d.call("container.create", image="busybox", name="old", labels={"tier": "tmp"}, cmd=["true"])["Id"]
    d.call("container.create", image="busybox", name="kept", labels={"tier": "keep"}, cmd=["true"])
    assert d.call("container.prune", filters={"label": ["tier=tmp"]})["ContainersDeleted"] == [old]
    names = {c["Names"][0] for c in d.call("container.list", all=True)}
    assert names == {"kept"}
    # until: created before now-1h: nothing here is that old
    assert d.call("container.prune", filters={"until": ["1h"]})["ContainersDeleted"] == []
    assert len(d.call("container.prune", filters={"until": [str(time.time() + 5)]})["ContainersDeleted"]) == 1
    # images: the test images were built "2024-01-01": until=2025-01-01 takes them, 2023 does not
    assert d.call("image.prune", all=True, filters={"until": ["2023-01-01T00:00:00Z"]})["ImagesDeleted"] == []
    deleted = d.call("image.prune", all=True, filters={"until": ["2025-01-01T00:00:00Z"]})["ImagesDeleted"]
    assert deleted and d.call("image.list") == []
    with pytest.raises(Exception, match="unknown"):
        d.call("system.prune", filters={"colour": ["red"]})


def test_system_check_finds_and_repairs_planted_damage(images_archive: Path, tmp_path: Path) -> None:
    extra = tmp_path / "multi.tar"
    write_docker_archive(extra, [multilayer_image()])
    d = start_engine(images_archive)
    try:
        d.call("image.load", path=str(extra))
        d.call("container.create", image="busybox", name="sound", cmd=["sleep", "300"])
        d.call("container.start", id="sound")
        pid = d.call("container.inspect", id="sound")["State"]["Pid"]
        report = d.call("system.check")
        assert report["Clean"] and report["Problems"] == [], report
        assert report["Checked"]["blobs"] >= 6 and report["Checked"]["images"] == 3

        # plant: a damaged blob (the seeded image's own layer), a missing layer directory
        # (one of the multilayer image's own layers), a container root nobody owns
        seeded = d.call("image.inspect", id=SEEDED)
        manifest_layers = _layer_blobs(d, seeded["Id"])
        bad_blob = d.root / "content" / "blobs" / "sha256" / manifest_layers[-1].removeprefix("sha256:")
        bad_blob.write_bytes(b"not the layer it was")
        multi_layers = d.call("image.inspect", id=MULTI)["RootFS"]["Layers"]
        busybox_layers = set(d.call("image.inspect", id="busybox")["RootFS"]["Layers"])
        gone = next(x for x in multi_layers if x not in busybox_layers)
        subprocess.run(["rm", "-rf", str(layer_dir(d, gone))], check=True)
        dangling = d.root / "containers" / ("ab" * 32)
        dangling.mkdir()
        (dangling / "leftover").write_text("junk")

        report = d.call("system.check")
        assert not report["Clean"]
        kinds = {(p["Kind"], p["Object"].split(" ")[0]) for p in report["Problems"]}
        assert ("blob", manifest_layers[-1]) in kinds
        assert ("layer", gone) in kinds
        assert ("container", str(dangling)) in kinds
        assert ("image", "localhost/test/seeded:latest") in kinds
        assert all(not p["Repaired"] for p in report["Problems"])
        assert bad_blob.exists() and dangling.exists()  # a check alone changes nothing

        report = d.call("system.check", repair=True)
        assert report["Repaired"], report["Problems"]
        assert all(p["Repaired"] for p in report["Problems"])
        assert d.call("system.check")["Clean"]

        # what was sound is untouched; what was mended works
        assert not dangling.exists()
        assert {i["RepoTags"][0] for i in d.call("image.list")} == {"busybox:latest", "localhost/test/multilayer:latest"}
        assert d.call("container.inspect", id="sound")["State"]["Pid"] == pid
        code, out, err, _ = run(d, MULTI, cmd=["sh", "-c", "echo mended"])
        assert (code, out) == (0, b"mended\n"), err
    finally:
        d.cleanup()


def test_broken_volume_record_is_reported_and_removed(engine: Daemon) -> None:
    d = engine
    d.call("volume.create", name="fine")
    d.call("volume.create", name="damaged")
    (d.root / "volumes" / "damaged" / "volume.json").write_text("{not json")
    d.call("volume.create", name="dataless")
    subprocess.run(["rm", "-rf", str(d.root / "volumes" / "dataless" / "_data")], check=True)
    report = d.call("system.check")
    problems = {p["Object"]: p for p in report["Problems"] if p["Kind"] == "volume"}
    assert set(problems) == {"damaged", "dataless"}
    assert "unreadable" in problems["damaged"]["Problem"]
    report = d.call("system.check", repair=True)
    assert report["Repaired"]
    assert d.call("system.check")["Clean"]
    assert {v["Name"] for v in d.call("volume.list")["Volumes"]} == {"fine", "dataless"}
    assert not (d.root / "volumes" / "damaged").exists()


def _layer_blobs(d: Daemon, image_id: str) -> list[str]:
    import json

    doc = json.loads((d.root / "images" / "images.json").read_text())
    return list(doc["images"][image_id]["layer_digests"])
