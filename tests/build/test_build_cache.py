"""The build cache through engctl (the RPC's image.build, system df and system prune) and
its index file: a real daemon running each RUN in a container (root)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.build.cache import INDEX_FILE, Entry, _read, step_key
from engine.testing.daemon import Daemon

from .test_engctl_build import daemon, engctl

__all__ = ["daemon"]

DOCKERFILE = "FROM busybox\nARG WHO=nobody\nCOPY one.txt /one.txt\nRUN head -c 100000 /dev/zero > /big && echo hi-$WHO\n" \
             "CMD [\"cat\", \"/one.txt\"]\n"


@pytest.fixture
def context(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ctx"
    path.mkdir()
    (path / "one.txt").write_text("one\n")
    (path / "Dockerfile").write_text(DOCKERFILE)
    yield path


def cache_lines(output: str) -> int:
    return output.count(" ---> Using cache\n")


def test_engctl_rebuild_uses_the_cache_and_prune_empties_it(daemon: Daemon, context: Path) -> None:
    first = engctl(daemon, "build", "-t", "c:1", str(context))
    assert first.returncode == 0, first.stderr + daemon.log()[-3000:]
    assert cache_lines(first.stdout) == 0 and "hi-nobody" in first.stdout
    second = engctl(daemon, "build", "-t", "c:1", str(context))
    assert cache_lines(second.stdout) == 4 and "Running in" not in second.stdout, second.stdout
    assert "hi-nobody" not in second.stdout  # the RUN did not run
    nocache = engctl(daemon, "build", "--no-cache", "-t", "c:1", str(context))
    assert cache_lines(nocache.stdout) == 0 and "hi-nobody" in nocache.stdout
    arg = engctl(daemon, "build", "--build-arg", "WHO=you", "-t", "c:2", str(context))
    assert cache_lines(arg.stdout) == 2 and "hi-you" in arg.stdout, arg.stdout  # ARG and COPY hit

    # engctl images lists the tagged images, busybox and the result c:1 was before the
    # --no-cache build (untagged: <none>, as dockerd shows it), not the steps; df counts them
    listed = sorted(tuple(i["RepoTags"]) for i in daemon.call("image.list"))
    assert listed == [(), ("busybox:latest",), ("c:1",), ("c:2",)], listed
    summary = {row["Type"]: row for row in daemon.call("system.df")["Summary"]}
    assert summary["Build Cache"]["TotalCount"] >= 6

    # the index is on disk, in step with the store
    index = json.loads((daemon.root / "images" / INDEX_FILE).read_bytes())
    assert index["version"] == 1 and len(index["entries"]) >= 8
    for entry in index["entries"]:
        assert daemon.call("image.inspect", id=entry["id"])["Id"] == entry["id"]

    # a restarted daemon that has not built yet hides and keeps them too: image prune takes
    # the dangling result (<none>) alone
    daemon.stop()
    daemon.start()
    assert sorted(tuple(i["RepoTags"]) for i in daemon.call("image.list")) == listed
    daemon.call("image.prune", all=False, filters={})
    assert sorted(tuple(i["RepoTags"]) for i in daemon.call("image.list")) == listed[1:]
    summary = {row["Type"]: row for row in daemon.call("system.df")["Summary"]}
    assert summary["Build Cache"]["TotalCount"] >= 6

    assert engctl(daemon, "rmi", "c:1", "c:2").returncode == 0
    pruned = daemon.call("system.prune", all=False, volumes=False, filters={})  # busybox stays
    assert len(pruned["CachesDeleted"]) >= 6 and pruned["SpaceReclaimed"] > 100000, pruned
    summary = {row["Type"]: row for row in daemon.call("system.df")["Summary"]}
    assert summary["Build Cache"]["TotalCount"] == 0
    again = engctl(daemon, "build", str(context))
    assert cache_lines(again.stdout) == 0 and "hi-nobody" in again.stdout


def test_an_unreadable_index_is_an_empty_cache(tmp_path: Path) -> None:
    path = tmp_path / INDEX_FILE
    assert _read(path) == {}
    path.write_text("{not json")
    assert _read(path) == {}
    path.write_text(json.dumps({"version": 99, "entries": []}))
    assert _read(path) == {}
    good = {"id": "sha256:" + "a" * 64, "parent": "", "key": "sha256:" + "b" * 64, "created": 1.0}
    path.write_text(json.dumps({"version": 1, "entries": [good, {"id": "half"}]}))
    assert _read(path) == {good["id"]: Entry(**good)}  # type: ignore[arg-type]


def test_step_keys_depend_on_every_part() -> None:
    base = {"created_by": "/bin/sh -c echo", "config": {"Env": ["A=1"]}}
    assert step_key(base) == step_key(dict(reversed(list(base.items()))))
    assert step_key(base) != step_key({**base, "config": {"Env": ["A=2"]}})
    assert step_key(base) != step_key({**base, "content": "sha256:0"})
