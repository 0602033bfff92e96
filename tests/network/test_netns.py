"""Network namespaces bind-mounted as files under a directory of ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import InvalidArgument
from engine.network import netns

from .conftest import NetEnv, in_netns


async def test_create_list_delete(env: NetEnv) -> None:
    path = await netns.create(env.netns_dir, "n1")
    assert path == env.netns_dir / "n1"
    assert await netns.exists(env.netns_dir, "n1")
    assert os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino  # a namespace of its own
    links = (await in_netns(path, "ip", "-o", "link")).stdout.decode()
    assert links.count("\n") == 1 and "lo:" in links  # a fresh namespace: just loopback
    assert await netns.create(env.netns_dir, "n1") == path  # idempotent
    await netns.create(env.netns_dir, "n2")
    assert await netns.list_names(env.netns_dir) == ["n1", "n2"]
    await netns.delete(env.netns_dir, "n1")
    await netns.delete(env.netns_dir, "n1")  # idempotent
    assert not path.exists() and not await netns.exists(env.netns_dir, "n1")
    assert await netns.list_names(env.netns_dir) == ["n2"]
    with pytest.raises(InvalidArgument, match="still holds"):
        await netns.release_dir(env.netns_dir)
    await netns.delete(env.netns_dir, "n2")


@pytest.mark.parametrize("name", ["", "..", "a/b", ".hidden"])
def test_bad_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        netns.path_for(tmp_path, name)
