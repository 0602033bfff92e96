"""Mount propagation without a runtime: the host-side check on a mount table (shared,
slave, private sources; the mount on top; escaped paths), the spec's rootfsPropagation, and
docker's ways of asking for it (``-v SRC:DST:OPTIONS``, ``--mount bind-propagation=``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.actors.model import BindMount as ConfigBind
from engine.errors import InvalidArgument
from engine.oci.propagation import check_source, mount_of, parse_mountinfo, rootfs_propagation
from engine.oci.spec import BindMount, SpecOptions, build_spec
from engine.supervisor.container_service import parse_volume
from engine.volumes.specs import format_bind, parse_mount_flag

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
60 27 0:50 / /data rw,relatime shared:7 - tmpfs tmpfs rw
61 60 0:51 / /data/kube rw,relatime master:7 - tmpfs tmpfs rw
62 60 0:52 / /data/priv rw,relatime - tmpfs tmpfs rw
63 27 0:53 / /srv/with\\040space rw,relatime shared:9 master:3 - tmpfs tmpfs rw
64 62 0:54 / /data/priv rw,relatime shared:11 - tmpfs tmpfs rw
"""


def test_the_mount_holding_a_path_is_the_longest_and_topmost() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of("/etc/passwd", mounts).mountpoint == "/"
    assert mount_of("/data", mounts).mountpoint == "/data"
    assert mount_of("/database", mounts).mountpoint == "/"  # a prefix of the name is not a parent
    assert mount_of("/data/kube/pods/x", mounts).slave
    assert mount_of("/srv/with space/x", mounts).shared
    assert mount_of("/data/priv/x", mounts).optional == ("shared:11",)  # mounted over the private one


def test_check_source_follows_containerd() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    for mode in ("rshared", "shared", "rslave", "slave"):
        check_source("/data/x", mode, mounts)  # shared: both kinds pass
    for mode in ("rslave", "slave"):
        check_source("/data/kube/x", mode, mounts)
    with pytest.raises(InvalidArgument, match="'/data/kube/x' is mounted on '/data/kube' but it is not a shared mount"):
        check_source("/data/kube/x", "rshared", mounts)
    with pytest.raises(InvalidArgument, match="is mounted on '/' but it is not a shared or slave mount"):
        check_source("/etc", "rslave", mounts)
    for mode in ("", "private", "rprivate"):
        check_source("/etc", mode, mounts)  # asks nothing of the host


def test_rootfs_propagation_from_the_binds(tmp_path: Path) -> None:
    assert rootfs_propagation([]) is None
    assert rootfs_propagation(["rprivate", "private"]) is None
    assert rootfs_propagation(["rprivate", "rslave"]) == "rslave"
    assert rootfs_propagation(["slave", "shared"]) == "rshared"

    def spec(*modes: str) -> dict:
        mounts = [BindMount(tmp_path, f"/m{i}", options=(m,)) for i, m in enumerate(modes)]
        return build_spec(SpecOptions(container_id="c" * 64, rootfs=tmp_path, args=["true"], mounts=mounts))

    assert "rootfsPropagation" not in spec("rprivate")["linux"]
    built = spec("rslave", "rshared")
    assert built["linux"]["rootfsPropagation"] == "rshared"
    assert [m["options"] for m in built["mounts"] if m["destination"] in ("/m0", "/m1")] == \
        [["rbind", "rw", "rslave"], ["rbind", "rw", "rshared"]]


def test_docker_volume_and_mount_flags_carry_propagation() -> None:
    assert parse_volume("/a:/b:rshared") == ConfigBind("/a", "/b", False, "rshared")
    assert parse_volume("/a:/b:ro,rslave") == ConfigBind("/a", "/b", True, "rslave")
    assert parse_volume("/a:/b") == ConfigBind("/a", "/b", False, "")
    for bad in ("/a:/b:rshared,rslave", "/a:/b:sharedd", "/a:/b:rw,exec"):
        with pytest.raises(InvalidArgument, match="invalid volume option"):
            parse_volume(bad)
    assert parse_mount_flag("type=bind,src=/a,dst=/b,bind-propagation=rslave") == ConfigBind("/a", "/b", False, "rslave")
    assert parse_mount_flag("type=bind,src=/a,dst=/b,readonly") == ConfigBind("/a", "/b", True, "")
    with pytest.raises(InvalidArgument, match="invalid propagation 'both'"):
        parse_mount_flag("type=bind,src=/a,dst=/b,bind-propagation=both")
    with pytest.raises(InvalidArgument, match="bind-propagation"):
        parse_mount_flag("type=volume,src=v,dst=/b,bind-propagation=rshared")
    assert [format_bind(b) for b in (ConfigBind("/a", "/b"), ConfigBind("/a", "/b", True, "rshared"),
                                     ConfigBind("/a", "/b", False, "rslave"))] == \
        ["/a:/b", "/a:/b:ro,rshared", "/a:/b:rslave"]
