"""engctl pull / images / image inspect / history / image prune against a real daemon and a
real registry; bad references."""

from __future__ import annotations

import json

from engine.testing.daemon import Daemon
from engine.testing.registry import Registry

from .conftest import BUSYBOX_TAG, MULTI_TAG, Layouts
from .e2e_helpers import engctl, ok


def test_pull_prints_plain_lines_when_not_a_tty(daemon: Daemon, seeded: Registry,
                                                  layouts: Layouts) -> None:
    ref = f"{seeded.host}/{MULTI_TAG}"
    out = ok(daemon, "pull", ref)
    built = layouts.multilayer_built
    lines = out.splitlines()
    assert not any("\x1b[" in line for line in lines), "no escape codes on a pipe"
    for layer in built.layers:
        short = layer.digest.removeprefix("sha256:")[:12]
        mine = [line for line in lines if line.startswith(short + ":")]
        # one line per state change, never one per chunk
        assert len(mine) == len(set(mine)), mine
        assert f"{short}: Pull complete" in mine
    assert f"Digest: {built.manifest.digest}" in lines
    assert lines[-1] == f"Status: Downloaded newer image for {ref}"

    again = ok(daemon, "pull", ref).splitlines()
    assert again[-1] == f"Status: Image is up to date for {ref}"
    assert any(line.endswith("Already exists") for line in again)


def test_pull_quiet_prints_only_the_reference(daemon: Daemon, seeded: Registry) -> None:
    out = ok(daemon, "pull", "-q", f"{seeded.host}/test/busybox")
    assert out == f"{seeded.host}/{BUSYBOX_TAG}\n"


def test_images_flags_and_filters(daemon: Daemon, seeded: Registry, layouts: Layouts) -> None:
    bb, ml = f"{seeded.host}/{BUSYBOX_TAG}", f"{seeded.host}/{MULTI_TAG}"
    ok(daemon, "pull", "-q", bb)
    ok(daemon, "pull", "-q", ml)
    bb_id, ml_id = layouts.busybox_built.id, layouts.multilayer_built.id

    table = ok(daemon, "images").splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    rows = {tuple(line.split()[:3]) for line in table[1:]}
    assert (f"{seeded.host}/test/busybox", "latest", bb_id[7:19]) in rows
    assert (f"{seeded.host}/test/multilayer", "latest", ml_id[7:19]) in rows

    assert set(ok(daemon, "images", "-q").split()) == {bb_id[7:19], ml_id[7:19]}
    assert set(ok(daemon, "images", "-a", "-q", "--no-trunc").split()) == {bb_id, ml_id}

    digests = ok(daemon, "images", "--digests").splitlines()
    assert "DIGEST" in digests[0]
    assert any(layouts.busybox_built.manifest.digest in line for line in digests[1:])

    listed = json.loads(ok(daemon, "images", "--format", "json"))
    by_id = {image["Id"]: image for image in listed}
    assert by_id[ml_id]["RepoTags"] == [ml] and by_id[ml_id]["Layers"] == 3
    assert by_id[bb_id]["RepoDigests"] == [
        f"{seeded.host}/test/busybox@{layouts.busybox_built.manifest.digest}"
    ]

    only = ok(daemon, "images", "-q", "--filter", f"reference={seeded.host}/test/multi*")
    assert only.split() == [ml_id[7:19]]
    assert ok(daemon, "images", "-q", f"{seeded.host}/test/busybox").split() == [bb_id[7:19]]
    assert ok(daemon, "images", "-q", "--filter", "dangling=true") == ""

    # a tag moved to another image leaves the old one dangling (as a newer pull would)
    ok(daemon, "tag", ml, bb)
    dangling = ok(daemon, "images", "-q", "--filter", "dangling=true").split()
    assert dangling == [bb_id[7:19]]
    named = ok(daemon, "images", "-q", "--filter", "dangling=false").split()
    assert named == [ml_id[7:19]]

    bad = engctl(daemon, "images", "--filter", "color=blue")
    assert bad.code == 125 and "unknown image filter color" in bad.err


def test_inspect_history_and_prune(daemon: Daemon, seeded: Registry, layouts: Layouts) -> None:
    ml = f"{seeded.host}/{MULTI_TAG}"
    ok(daemon, "pull", "-q", ml)
    built = layouts.multilayer_built

    (info,) = json.loads(ok(daemon, "image", "inspect", ml))
    assert info["Id"] == built.id
    assert info["RootFS"]["Layers"] == built.diff_ids
    assert info["Manifest"]["Digest"] == built.manifest.digest
    assert info["Config"]["Cmd"] == ["sh"]
    assert ok(daemon, "image", "inspect", "-f", "{{.Id}}", ml).strip() == built.id
    missing = engctl(daemon, "image", "inspect", "no/such:image")
    assert missing.code != 0 and "no such image" in missing.err

    history = ok(daemon, "history", ml).splitlines()
    assert history[0].split()[:2] == ["IMAGE", "CREATED"]
    assert len(history) == 1 + len(built.layers)  # one row per history entry
    assert history[1].startswith(built.id[7:19])
    assert all(row.startswith("<missing>") for row in history[2:])
    assert "engine.testing.images layer 2" in history[1]
    assert ok(daemon, "history", "-q", ml).split()[0] == built.id

    # prune: nothing dangling yet; untag -> dangling -> pruned, blobs and layers freed
    out = ok(daemon, "image", "prune", "-f")
    assert "Total reclaimed space: 0B" in out
    ok(daemon, "tag", ml, "keep/me:1")
    ok(daemon, "rmi", ml)
    assert json.loads(ok(daemon, "images", "--format", "json"))[0]["RepoTags"] == ["keep/me:1"]
    ok(daemon, "image", "prune", "-f")  # still named: stays
    assert ok(daemon, "images", "-q") != ""
    ok(daemon, "rmi", "keep/me:1")
    assert ok(daemon, "images", "-q") == ""


def test_prune_all_removes_unused_named_images(daemon: Daemon, seeded: Registry) -> None:
    ok(daemon, "pull", "-q", f"{seeded.host}/{BUSYBOX_TAG}")
    dangling_only = ok(daemon, "image", "prune", "-f")
    assert "Deleted" not in dangling_only
    out = ok(daemon, "image", "prune", "-a", "-f")
    assert "Deleted: sha256:" in out
    assert ok(daemon, "images", "-q") == ""


def test_bad_references_exit_125_with_a_clear_message(daemon: Daemon) -> None:
    upper = engctl(daemon, "pull", "UPPER/Case")
    assert upper.code == 125
    assert "invalid reference format" in upper.err and "lowercase" in upper.err
    assert upper.out == ""

    short = engctl(daemon, "pull", "a@sha256:short")
    assert short.code == 125
    assert "invalid digest" in short.err and "64 hex digits" in short.err

    for bad in ("busybox:", "-bad", "a//b", "UPPER"):
        result = engctl(daemon, "pull", "--", bad) if bad.startswith("-") else engctl(
            daemon, "pull", bad
        )
        assert result.code == 125, (bad, result)
        assert result.err.startswith("Error: "), (bad, result.err)
    assert daemon.call("image.list") == []
