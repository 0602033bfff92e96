"""Archives: hostile inputs refused cleanly, save/load round trips, import, skopeo interop."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import trio

from engine.errors import DigestMismatch, InvalidArgument, NotFound, UnsafeContent
from engine.images.archive import import_rootfs, load, save
from engine.images.content import ContentStore
from engine.images.store import ImageStore
from engine.testing import images as ti
from engine.testing.daemon import require_binary


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def _busybox_docker_files() -> dict[str, bytes]:
    return ti.docker_archive_files([ti.build(ti.busybox_image(), "gzip")])


def _nothing_left(store: ImageStore, content: ContentStore) -> None:
    assert store.list() == []
    assert list(content.digests()) == []
    assert not [p for p in store.layout.images_dir.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    ("mutate", "error", "why"),
    [
        (lambda f: f.update({"../evil": b"x"}), UnsafeContent, r"outside the archive \('..'\)"),
        (lambda f: f.update({"/etc/evil": b"x"}), UnsafeContent, "absolute path"),
        (lambda f: f.update({"a/../../evil": b"x"}), UnsafeContent, "outside the archive"),
        (lambda f: f.pop("manifest.json"), InvalidArgument, "neither a docker-archive"),
        (
            lambda f: f.pop(next(n for n in f if n.endswith("layer.tar"))),
            InvalidArgument,
            "has no file",
        ),
        (
            lambda f: f.update(
                {
                    next(
                        n
                        for n in f
                        if n.endswith(".json") and "/" not in n and n != "manifest.json"
                    ): b'{"rootfs":{}}'
                }
            ),
            DigestMismatch,
            "tampered",
        ),
        (lambda f: f.update({"manifest.json": b"[{]"}), InvalidArgument, "not valid JSON"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "nested-dotdot",
        "no-manifest",
        "missing-layer",
        "bad-config",
        "bad-json",
    ],
)
async def test_hostile_docker_archives(
    store: ImageStore,
    content: ContentStore,
    tmp_path: Path,
    mutate,
    error,
    why,  # type: ignore[no-untyped-def]
) -> None:
    files = _busybox_docker_files()
    mutate(files)
    archive = _tar(tmp_path / "bad.tar", files)
    with pytest.raises(error, match=why):
        await load(store, archive)
    _nothing_left(store, content)


async def test_uncompressed_layer_with_wrong_diff_id(
    store: ImageStore, content: ContentStore, tmp_path: Path
) -> None:
    built = ti.build(ti.busybox_image(), "none")
    files = ti.docker_archive_files([built])
    layer = next(n for n in files if n.endswith("layer.tar"))
    files[layer] = ti.numbered_layers(1)[0]  # a valid tar, but not the config's layer
    with pytest.raises(DigestMismatch, match="config says"):
        await load(store, _tar(tmp_path / "bad.tar", files))
    _nothing_left(store, content)


async def test_compressed_layer_with_wrong_diff_id_is_caught_by_the_driver(
    store: ImageStore, content: ContentStore, tmp_path: Path
) -> None:
    files = _busybox_docker_files()
    layer = next(n for n in files if n.endswith("layer.tar"))
    files[layer] = gzip.compress(ti.numbered_layers(1)[0], mtime=0)
    with pytest.raises(DigestMismatch):
        await load(store, _tar(tmp_path / "bad.tar", files))
    _nothing_left(store, content)
    assert await store.storage.list_layers() == []


async def test_link_escaping_the_archive(
    store: ImageStore, content: ContentStore, tmp_path: Path
) -> None:
    files = _busybox_docker_files()
    with pytest.raises(UnsafeContent, match="points outside"):
        await load(store, _tar(tmp_path / "bad.tar", files, {"x/layer.tar": "../../etc/passwd"}))
    _nothing_left(store, content)


async def test_hostile_oci_layouts(
    store: ImageStore, content: ContentStore, tmp_path: Path, archives: dict[str, Path]
) -> None:
    # A blob whose bytes do not match its name.
    bad = tmp_path / "bad-blob"
    shutil.copytree(archives["busybox-oci"], bad)
    built = ti.build(ti.busybox_image(), "gzip")
    blob = bad / "blobs" / "sha256" / built.layers[0].digest.removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DigestMismatch, match="does not match its digest"):
        await load(store, bad)
    _nothing_left(store, content)
    assert blob.exists()  # the user's layout is never modified
    # A missing blob.
    blob.unlink()
    with pytest.raises(InvalidArgument, match="incomplete"):
        await load(store, bad)
    _nothing_left(store, content)
    # A blob that is a symlink out of the layout.
    blob.symlink_to("/etc/passwd")
    with pytest.raises(UnsafeContent, match="outside the layout"):
        await load(store, bad)
    _nothing_left(store, content)
    # Not an archive at all.
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(InvalidArgument, match="not a tar"):
        await load(store, junk)
    with pytest.raises(NotFound):
        await load(store, tmp_path / "missing.tar")
    _nothing_left(store, content)


async def test_all_or_nothing_for_several_images(
    store: ImageStore, content: ContentStore, tmp_path: Path
) -> None:
    good = ti.build(ti.busybox_image(), "gzip")
    hostile = ti.LayerWriter()
    hostile.file("../../escape", b"x")
    bad = ti.build(ti.TestImage("localhost/bad:1", [hostile.bytes()]), "gzip")
    archive = _tar(tmp_path / "two.tar", ti.docker_archive_files([good, bad]))
    with pytest.raises(UnsafeContent):
        await load(store, archive)
    _nothing_left(store, content)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci", "oci-archive"])
async def test_save_load_round_trip(
    store: ImageStore,
    layout_factory_store: ImageStore,
    tmp_path: Path,
    archives: dict[str, Path],
    fmt: str,
) -> None:
    [busybox] = await load(store, archives["busybox-oci"])
    [multi] = await load(store, archives["multi-docker"])
    await store.tag("busybox", "localhost/extra:2")
    dest = tmp_path / f"saved-{fmt}"
    await save(store, ["busybox", "localhost/extra:2", multi.id], dest, fmt)
    other = layout_factory_store
    loaded = await load(other, dest)
    by_id = {i.id: i for i in loaded}
    assert set(by_id) == {busybox.id, multi.id}
    assert sorted(by_id[busybox.id].repo_tags) == [
        "docker.io/library/busybox:latest",
        "localhost/extra:2",
    ]
    assert by_id[multi.id].repo_tags == []  # saved by ID: no names, as docker does
    if fmt != "docker-archive":
        assert by_id[busybox.id].manifest_digest == busybox.manifest_digest
        assert by_id[multi.id].manifest_digest == multi.manifest_digest
    # Saving onto an existing non-empty directory is refused and changes nothing.
    if fmt == "oci":
        with pytest.raises(InvalidArgument, match="not empty"):
            await save(store, ["busybox"], dest, fmt)
    with pytest.raises(InvalidArgument, match="unknown archive format"):
        await save(store, ["busybox"], tmp_path / "x", "zip")


async def test_import_rootfs(store: ImageStore, driver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rootfs = tmp_path / "rootfs.tar.gz"
    rootfs.write_bytes(gzip.compress(ti.busybox_rootfs_layer(), mtime=0))
    image = await import_rootfs(
        store,
        rootfs,
        "localhost/imported:v1",
        changes=[
            'CMD ["/bin/sh", "-c", "echo hi"]',
            "ENV A=1 B=two",
            "WORKDIR /tmp",
            "EXPOSE 8080",
            "LABEL org.x=y",
            "USER nobody",
        ],
        message="from a tarball",
    )
    assert image.repo_tags == ["localhost/imported:v1"]
    assert image.diff_ids == [ti.sha256(ti.busybox_rootfs_layer())]
    cfg = image.config.config
    assert cfg.cmd == ["/bin/sh", "-c", "echo hi"] and cfg.env == ["A=1", "B=two"]
    assert cfg.working_dir == "/tmp" and cfg.exposed_ports == {"8080/tcp": {}}
    assert cfg.labels == {"org.x": "y"} and cfg.user == "nobody"
    assert image.config.history[0].comment == "from a tarball"
    root = await driver.mount("imp", image.diff_ids)
    try:
        assert (root / "bin" / "busybox").stat().st_size == ti.BUSYBOX.stat().st_size
    finally:
        await driver.unmount("imp")
        await driver.remove_container("imp")
    with pytest.raises(InvalidArgument, match="not supported"):
        await import_rootfs(store, rootfs, None, changes=["RUN rm -rf /"])
    junk = tmp_path / "junk"
    junk.write_bytes(b"plain text, not a tar")
    with pytest.raises(InvalidArgument, match="not a tar"):
        await import_rootfs(store, junk)
    assert [i.id for i in store.list()] == [image.id]


async def test_skopeo_reads_what_we_save_and_we_read_what_skopeo_writes(
    store: ImageStore, layout_factory_store: ImageStore, tmp_path: Path, archives: dict[str, Path]
) -> None:
    skopeo = require_binary("skopeo")
    [busybox] = await load(store, archives["busybox-oci"])
    saved = tmp_path / "saved.tar"
    await save(store, ["busybox"], saved, "docker-archive")
    converted = tmp_path / "skopeo-oci"
    await trio.run_process(
        [
            skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            f"docker-archive:{saved}",
            f"oci:{converted}:docker.io/library/busybox:latest",
        ],
        capture_stdout=True,
    )
    [again] = await load(layout_factory_store, converted)
    # skopeo rewrites the config when it converts to OCI (so the ID changes); the layers and
    # the run defaults must come through unchanged.
    assert again.diff_ids == busybox.diff_ids
    assert again.repo_tags == ["docker.io/library/busybox:latest"]
    assert again.config.config.cmd == ["sh"]
    raw = (
        await trio.run_process(
            [skopeo, "inspect", "--config", "--raw", f"docker-archive:{saved}"],
            capture_stdout=True,
        )
    ).stdout
    assert ti.sha256(raw) == busybox.id
    assert json.loads(raw)["config"]["Cmd"] == ["sh"]
    # And skopeo reads an OCI layout this store writes, manifest digest and all.
    layout_dir = tmp_path / "saved-oci"
    await save(store, ["busybox"], layout_dir, "oci")
    result = await trio.run_process(
        [skopeo, "inspect", "--raw", f"oci:{layout_dir}:latest"], capture_stdout=True
    )
    assert ti.sha256(result.stdout) == busybox.manifest_digest
