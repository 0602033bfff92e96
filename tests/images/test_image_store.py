"""The image store on the real overlay driver: loading, names, rmi, freeing, reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import Conflict, InvalidArgument, NotFound
from engine.images.archive import load
from engine.images.content import ContentStore
from engine.images.store import ImageStore
from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.reference import parse_reference
from engine.store.layout import Layout
from engine.testing import images as ti

BUSYBOX = "docker.io/library/busybox:latest"


@pytest.mark.parametrize(
    "archive",
    [
        "busybox-docker",
        "busybox-oci",
        "busybox-oci-tar",
        "busybox-zstd-oci",
        "busybox-plain-docker",
    ],
)
async def test_load_busybox(
    store: ImageStore, archives: dict[str, Path], busybox_id: str, archive: str
) -> None:
    [image] = await load(store, archives[archive])
    assert image.id == busybox_id
    assert image.repo_tags == [BUSYBOX]
    assert image.familiar_tags() == ["busybox:latest"]
    assert image.config.config.cmd == ["sh"]
    assert image.config.config.env == [ti.DEFAULT_PATH]
    assert len(image.diff_ids) == 1 and image.size > 1_000_000
    assert await store.storage.has_layer(image.diff_ids[0])
    assert [i.id for i in store.list()] == [busybox_id]
    for digest in image.blobs():
        assert store.content.has(digest)
    info = store.inspect("busybox")
    assert info["Id"] == busybox_id and info["RepoTags"] == ["busybox:latest"]
    assert info["RootFS"] == {"Type": "layers", "Layers": image.diff_ids}
    assert info["Config"]["Cmd"] == ["sh"] and info["Os"] == "linux"
    history = store.history("busybox")
    assert history[0]["Id"] == busybox_id and history[0]["Tags"] == ["busybox:latest"]


async def test_multilayer_whiteouts_seen_through_a_mount(
    store: ImageStore, driver: OverlayDriver, archives: dict[str, Path]
) -> None:
    [docker] = await load(store, archives["multi-docker"])
    [oci] = await load(store, archives["multi-oci"])
    assert docker.id == oci.id and len(oci.diff_ids) == 3
    root = await driver.mount("c1", oci.diff_ids)
    try:
        assert (root / "data" / "keep").read_text() == "kept\n"
        assert not (root / "data" / "gone").exists()
        assert sorted(p.name for p in (root / "opq").iterdir()) == ["c"]
        assert (root / "bin" / "sh").resolve().name == "busybox"
    finally:
        await driver.unmount("c1")
        await driver.remove_container("c1")


async def test_many_layers(store: ImageStore, archives: dict[str, Path]) -> None:
    [image] = await load(store, archives["many-oci"])
    assert len(image.diff_ids) == 120
    assert len(set(await store.storage.list_layers())) == 120


async def test_lookups(store: ImageStore, archives: dict[str, Path], busybox_id: str) -> None:
    await load(store, archives["busybox-oci"])
    hexid = busybox_id.removeprefix("sha256:")
    for name in (
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox",
        busybox_id,
        hexid,
        hexid[:12],
        hexid[:3],
        "sha256:" + hexid[:5],
    ):
        assert store.get(name).id == busybox_id, name
    for missing in ("busybox:other", "alpine", "ffffff", "localhost/busybox"):
        with pytest.raises(NotFound, match="no such image"):
            store.get(missing)
    with pytest.raises(InvalidArgument, match="lowercase"):
        store.get("BusyBox")


async def test_tag_untag_and_names_move(
    store: ImageStore, archives: dict[str, Path], busybox_id: str
) -> None:
    [busybox] = await load(store, archives["busybox-oci"])
    [multi] = await load(store, archives["multi-oci"])
    image = await store.tag("busybox", "localhost:5000/mine:v1")
    assert image.repo_tags == [BUSYBOX, "localhost:5000/mine:v1"]
    # The name moves: multi takes busybox:latest, busybox keeps only the other tag.
    await store.tag(multi.id, "busybox")
    assert store.get("busybox").id == multi.id
    assert store.get(busybox_id).repo_tags == ["localhost:5000/mine:v1"]
    await store.untag("localhost:5000/mine:v1")
    assert store.get(busybox_id).dangling
    with pytest.raises(InvalidArgument, match="image ID"):
        await store.untag(busybox_id[:12])
    with pytest.raises(InvalidArgument, match="digest"):
        await store.tag("busybox", f"x@{busybox_id}")
    # Loading again re-tags the image; the other one loses the name and becomes dangling.
    await load(store, archives["busybox-oci"])
    assert store.get("busybox").id == busybox_id
    assert store.get(multi.id).repo_tags == ["localhost/test/multilayer:latest"]


async def test_rmi_semantics_and_freeing(
    store: ImageStore, archives: dict[str, Path], content: ContentStore
) -> None:
    [busybox] = await load(store, archives["busybox-oci"])
    [multi] = await load(store, archives["multi-oci"])
    shared = busybox.diff_ids[0]
    assert multi.diff_ids[0] == shared and busybox.layer_digests[0] == multi.layer_digests[0]
    await store.tag("busybox", "localhost/a:1")
    await store.tag("busybox", "localhost/b:1")

    # By ID with names in several repositories: refused without force.
    with pytest.raises(Conflict, match="several repositories"):
        await store.remove(busybox.id)
    # By name with other names left: untag only.
    assert await store.remove("localhost/a:1") == [{"Untagged": "localhost/a:1"}]
    assert await store.remove("localhost/b:1") == [{"Untagged": "localhost/b:1"}]

    # In use: refused; forced, the names go and the image stays (dangling).
    def in_use(image_id: str) -> bool:
        return image_id == busybox.id

    with pytest.raises(Conflict, match="container uses"):
        await store.remove("busybox", in_use=in_use)
    assert await store.remove("busybox", force=True, in_use=in_use) == [
        {"Untagged": "busybox:latest"}
    ]
    assert store.get(busybox.id).dangling
    assert content.has(busybox.id)
    # Prune skips the image while in use, then removes it; the shared layer stays.
    assert (await store.prune(in_use=in_use))["ImagesDeleted"] == []
    pruned = await store.prune()
    assert pruned["ImagesDeleted"] == [{"Deleted": busybox.id}]
    assert not content.has(busybox.id) and not content.has(busybox.manifest_digest)
    assert content.has(busybox.layer_digests[0])  # multi still uses it
    assert await store.storage.has_layer(shared)

    # The last name removes the image and frees everything nothing else uses.
    report = await store.remove("localhost/test/multilayer")
    assert report == [
        {"Untagged": "localhost/test/multilayer:latest"},
        {"Deleted": multi.id},
    ]
    assert store.list() == []
    assert list(content.digests()) == []
    assert await store.storage.list_layers() == []
    with pytest.raises(NotFound):
        await store.remove("busybox")


async def test_records_survive_restart_and_reconcile(
    layout: Layout,
    store: ImageStore,
    archives: dict[str, Path],
    driver: OverlayDriver,
    content: ContentStore,
) -> None:
    [busybox] = await load(store, archives["busybox-oci"])
    [multi] = await load(store, archives["multi-oci"])
    # Debris a crash could leave: a stray write in ingest, a half-written record file.
    (layout.ingest_dir / "stray.123.write").write_bytes(b"x")
    (layout.ingest_dir / ("0" * 64 + ".partial")).write_bytes(b"resumable")
    (layout.images_dir / ".images.json.tmp-1-2").write_bytes(b"{")
    # Lose a blob of one image and a layer of the other.
    content.delete(multi.layer_digests[2])
    await driver.remove_layer(busybox.diff_ids[0])

    reopened = ImageStore(layout, content, driver)
    assert {i.id for i in reopened.list()} == {busybox.id, multi.id}
    dropped = await reopened.reconcile()
    assert dropped == [multi.id]
    assert [i.id for i in reopened.list()] == [busybox.id]
    assert await driver.has_layer(busybox.diff_ids[0])  # unpacked again from its blob
    assert sorted(p.name for p in layout.ingest_dir.iterdir()) == ["0" * 64 + ".partial"]
    assert [p.name for p in layout.images_dir.iterdir()] == ["images.json"]
    state = json.loads((layout.images_dir / "images.json").read_text())
    assert list(state["images"]) == [busybox.id]


async def test_add_image_checks(store: ImageStore, content: ContentStore) -> None:
    built = ti.build(ti.busybox_image(), "gzip")
    # Layer blob missing from the content store.
    with pytest.raises(NotFound, match="not in the content store"):
        await store.add_image(built.manifest.data, built.manifest.media_type, built.config.data, [])
    content.write(built.layers[0].data)
    with pytest.raises(InvalidArgument, match="not the manifest's config"):
        await store.add_image(built.manifest.data, built.manifest.media_type, b"{}", [])
    assert store.list() == []
    ref = parse_reference("localhost:5000/bb:1")
    image = await store.add_image(
        built.manifest.data, built.manifest.media_type, built.config.data, [ref]
    )
    assert image.id == built.id and image.manifest_digest == built.manifest.digest
    # A pull records name@digest as well, and the digest reference finds the image.
    assert image.repo_digests == [f"localhost:5000/bb@{built.manifest.digest}"]
    assert store.get(f"localhost:5000/bb@{built.manifest.digest}").id == built.id
    assert store.inspect(built.id)["RepoDigests"] == [f"localhost:5000/bb@{built.manifest.digest}"]
    # Removing the repository's last tag drops its digest names too, then the image.
    report = await store.remove("localhost:5000/bb:1")
    assert report == [
        {"Untagged": "localhost:5000/bb:1"},
        {"Untagged": f"localhost:5000/bb@{built.manifest.digest}"},
        {"Deleted": built.id},
    ]
