"""Layers unpacked once into the cache, root filesystems built from them, hostile layers refused."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from gantry.oci import ImageError, ImageStore, image_ref
from gantry.oci.layers import remove_tree
from tests.image_builder import (
    Entry,
    ImageSpec,
    directory,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
    write_archive,
)


def _image(tmp_path: Path, layers, name: str = "image.tar", **kw) -> Path:
    spec = ImageSpec(layers=layers, cmd=["/app/run"], user="1000")
    return write_archive(tmp_path / name, spec, **kw)


BASE = [
    directory("etc"),
    file("etc/keep", "keep\n"),
    file("etc/drop", "drop\n"),
    directory("data"),
    file("data/old", "old\n"),
    directory("data/sub"),
    file("data/sub/deep", "deep\n"),
    directory("usr/bin"),
    file("usr/bin/tool", "#!/bin/sh\n", mode=0o4755),
    symlink("bin", "/usr/bin"),
    file("app/run", "#!/bin/sh\n", mode=0o750),
]


@pytest.mark.parametrize("layout", ["docker", "docker25", "oci"])
def test_layers_apply_in_order_with_whiteouts_and_opaque_dirs(tmp_path, layout):
    upper = [
        whiteout("etc/drop"),
        file("etc/keep", "changed\n"),
        directory("data"),
        opaque("data"),
        file("data/new", "new\n"),
    ]
    archive = _image(tmp_path, [BASE, upper], layout=layout)

    prepared = ImageStore(tmp_path / "store").prepare(archive)

    root = prepared.rootfs
    assert (root / "etc/keep").read_text() == "changed\n"
    assert not (root / "etc/drop").exists()
    assert sorted(os.listdir(root / "data")) == ["new"]
    assert not any(name.startswith(".wh.") for _, _, names in os.walk(root) for name in names)
    # An absolute link target is data: it resolves inside the root once that is /.
    assert os.readlink(root / "bin") == "/usr/bin"
    assert prepared.config.cmd == ["/app/run"]


def test_modes_and_mtimes_are_kept_without_setuid(tmp_path):
    prepared = ImageStore(tmp_path / "store").prepare(_image(tmp_path, [BASE]))

    tool = (prepared.rootfs / "usr/bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o755  # setuid dropped
    assert stat.S_IMODE((prepared.rootfs / "app/run").stat().st_mode) == 0o750
    assert int(tool.st_mtime) == 1_700_000_000
    assert int((prepared.rootfs / "etc").stat().st_mtime) == 1_700_000_000


def test_mount_points_exist_in_the_root(tmp_path):
    layers = [[*BASE, symlink("tmp", "/var/tmp")]]
    prepared = ImageStore(tmp_path / "store").prepare(_image(tmp_path, layers))

    for path in ("input", "output", "tmp", "proc", "dev", "sys", "opt/ml/model"):
        assert (prepared.rootfs / path).is_dir() and not (prepared.rootfs / path).is_symlink()
    assert stat.S_IMODE((prepared.rootfs / "tmp").stat().st_mode) == 0o1777


def test_each_layer_is_unpacked_once_and_shared(tmp_path):
    store = ImageStore(tmp_path / "store")
    first = store.prepare(_image(tmp_path, [BASE, [file("a", "1")]], "one.tar"))
    base_dir = store.layer_dir(first.config.layers[0].diff_id)
    inode = base_dir.stat().st_ino

    second = store.prepare(_image(tmp_path, [BASE, [file("a", "2")]], "two.tar"))

    assert second.config.layers[0].diff_id == first.config.layers[0].diff_id
    assert base_dir.stat().st_ino == inode
    assert len(os.listdir(store.root / "layers/sha256")) == 3
    assert (first.rootfs / "a").read_text() == "1" and (second.rootfs / "a").read_text() == "2"
    # An uncompressed and a gzip copy of one layer share one cache entry (keyed by diff_id).
    store.prepare(_image(tmp_path, [BASE, [file("a", "1")]], "gz.tar", layer_compression="gzip"))
    assert len(os.listdir(store.root / "layers/sha256")) == 3


def test_a_prepared_image_is_found_by_its_reference(tmp_path):
    store = ImageStore(tmp_path / "store")
    prepared = store.prepare(_image(tmp_path, [BASE]))

    again = ImageStore(tmp_path / "store").prepare(image_ref(prepared.config.digest))

    assert again == prepared and prepared.ref == "oci:" + prepared.config.digest
    with pytest.raises(ImageError, match="not in the image store"):
        store.prepare("oci:sha256:" + "0" * 64)


def test_concurrent_callers_share_one_unpack(tmp_path):
    archive = _image(tmp_path, [BASE, [file("a", "1")]])
    store_root = tmp_path / "store"
    results: list[object] = []

    def prepare() -> None:
        try:
            results.append(ImageStore(store_root).prepare(archive))
        except Exception as error:  # the assertion below shows it
            results.append(error)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({str(r.rootfs) for r in results}) == 1, results
    assert os.listdir(store_root / "tmp") == []
    assert len(os.listdir(store_root / "layers/sha256")) == 2


HOSTILE = {
    "absolute": ([file("/etc/evil", "x")], "has an absolute path"),
    "dotdot": ([file("app/../../evil", "x")], "contains '..'"),
    "device": ([Entry("dev/sda", "chardev")], "device node or FIFO"),
    "fifo": ([Entry("app/pipe", "fifo")], "device node or FIFO"),
    "hardlink-out": ([hardlink("app/link", "../../etc/passwd")], "contains '..'"),
    "hardlink-absolute": ([hardlink("app/link", "/etc/passwd")], "has an absolute path"),
    "hardlink-ahead": (
        [hardlink("app/link", "app/later"), file("app/later", "x")],
        "not in this layer before it",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused(tmp_path, case):
    members, message = HOSTILE[case]
    archive = _image(tmp_path, [BASE, [directory("app"), *members]])
    store = ImageStore(tmp_path / "store")

    with pytest.raises(ImageError, match=message):
        store.prepare(archive)

    assert os.listdir(store.root / "tmp") == []
    assert os.listdir(store.root / "images/sha256") == []


def test_nothing_is_written_through_a_link_in_the_same_layer(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = [symlink("a", str(outside)), file("a/passwd", "owned\n")]
    store = ImageStore(tmp_path / "store")

    with pytest.raises(ImageError, match="written through the symbolic link 'a'"):
        store.prepare(_image(tmp_path, [BASE, layer]))

    assert os.listdir(outside) == []


def test_a_link_from_a_lower_layer_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _image(tmp_path, [[*BASE, symlink("a", str(outside))], [file("a/passwd", "x\n")]])

    prepared = ImageStore(tmp_path / "store").prepare(archive)

    assert os.listdir(outside) == []
    assert (prepared.rootfs / "a").is_dir() and not (prepared.rootfs / "a").is_symlink()
    assert (prepared.rootfs / "a/passwd").read_text() == "x\n"


def test_a_whiteout_of_a_link_removes_the_link_only(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    archive = _image(tmp_path, [[*BASE, symlink("a", str(outside))], [whiteout("a")]])

    prepared = ImageStore(tmp_path / "store").prepare(archive)

    assert not os.path.lexists(prepared.rootfs / "a")
    assert (outside / "precious").read_text() == "keep"


def test_hardlinks_within_a_layer_work(tmp_path):
    layer = [directory("app"), file("app/one", "same"), hardlink("app/two", "app/one")]

    prepared = ImageStore(tmp_path / "store").prepare(_image(tmp_path, [BASE, layer]))

    assert (prepared.rootfs / "app/two").read_text() == "same"
    assert (prepared.rootfs / "app/two").stat().st_ino == (
        prepared.rootfs / "app/one"
    ).stat().st_ino


def test_a_damaged_layer_is_refused(tmp_path):
    archive = _image(tmp_path, [BASE], layout="docker")
    data = bytearray(archive.read_bytes())
    marker = data.find(b"keep\n")
    data[marker : marker + 4] = b"KEEP"
    archive.write_bytes(bytes(data))

    with pytest.raises(ImageError, match=r"not the diff_id .* the archive is damaged"):
        ImageStore(tmp_path / "store").prepare(archive)


def test_a_root_image_is_refused_before_unpacking(tmp_path):
    spec = ImageSpec(layers=[BASE], cmd=["/app/run"], user="root")
    store = ImageStore(tmp_path / "store")

    with pytest.raises(ImageError, match="runs as root"):
        store.prepare(write_archive(tmp_path / "root.tar", spec))

    assert os.listdir(store.root / "layers/sha256") == []


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command is not installed")
def test_zstd_layers_unpack_through_the_zstd_command(tmp_path):
    upper = [whiteout("etc/drop"), file("etc/keep", "changed\n")]
    archive = _image(tmp_path, [BASE, upper], layer_compression="zstd")

    prepared = ImageStore(tmp_path / "store").prepare(archive)

    assert {layer.compression for layer in prepared.config.layers} == {"zstd"}
    assert (prepared.rootfs / "etc/keep").read_text() == "changed\n"
    assert not (prepared.rootfs / "etc/drop").exists()


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command is not installed")
def test_a_hostile_zstd_layer_stops_its_decompressor(tmp_path):
    archive = _image(tmp_path, [BASE, [file("/etc/evil", "x")]], layer_compression="zstd")

    with pytest.raises(ImageError, match="has an absolute path"):
        ImageStore(tmp_path / "store").prepare(archive)


def test_leftovers_of_an_interrupted_unpack_are_removed_when_old(tmp_path):
    store = ImageStore(tmp_path / "store")
    old, fresh = store.root / "tmp/layer-old", store.root / "tmp/layer-fresh"
    for folder in (old, fresh):
        (folder / "usr").mkdir(parents=True)
        (folder / "usr").chmod(0o555)  # as an image may leave it
    os.utime(old, (0, 0))

    assert store.remove_leftovers() == [old]

    assert not old.exists() and fresh.exists()


@pytest.mark.parametrize("same_layer", [True, False], ids=["same-layer", "upper-layer"])
def test_a_folder_replaced_by_a_link_is_not_chmodded_through_it(tmp_path, same_layer):
    # Folder modes are set once every member is in place; a folder whose parent was replaced
    # by a link meanwhile must not have its mode, owner or times applied to the link's target.
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim").chmod(0o700)
    lower = [directory("a"), directory("a/victim", mode=0o777)]
    link = [symlink("a", str(outside))]
    layers = [[*BASE, *lower, *link]] if same_layer else [[*BASE, *lower], link]

    prepared = ImageStore(tmp_path / "store").prepare(_image(tmp_path, layers))

    assert stat.S_IMODE((outside / "victim").stat().st_mode) == 0o700
    assert os.readlink(prepared.rootfs / "a") == str(outside)


@pytest.mark.parametrize(
    "member",
    [file("app/" + "x" * 300, "x"), file("app/" + "/".join(["y" * 250] * 20), "x")],
    ids=["long-name", "long-path"],
)
def test_a_name_the_file_system_cannot_hold_is_refused_with_a_reason(tmp_path, member):
    # Not an OSError from the disk, which provisioning would report as "try again later".
    store = ImageStore(tmp_path / "store")

    with pytest.raises(ImageError, match="cannot be unpacked: File name too long"):
        store.prepare(_image(tmp_path, [BASE, [directory("app"), member]]))

    assert os.listdir(store.root / "tmp") == []


def test_a_layer_that_would_fill_the_disk_is_refused(tmp_path):
    # 512 MiB of zeros: half a megabyte of gzip. Refused after about 32 MiB are written, so
    # other work on the disk would have to free the rest meanwhile to hide it.
    zeros = tmp_path / "zeros"
    with zeros.open("wb") as handle:
        handle.truncate(512 * 1024 * 1024)
    archive = _image(tmp_path, [BASE, [Entry("app/zeros", source=zeros)]], layer_compression="gzip")
    zeros.unlink()
    assert archive.stat().st_size < 4 * 1024 * 1024
    disk = os.statvfs(tmp_path)
    free = disk.f_bavail * disk.f_frsize
    store = ImageStore(tmp_path / "store", min_free_bytes=free - 32 * 1024 * 1024)

    with pytest.raises(ImageError, match=r"would leave less than .* MiB free on the disk"):
        store.prepare(archive)

    assert os.listdir(store.root / "tmp") == []
    assert os.listdir(store.root / "images/sha256") == []
    assert len(os.listdir(store.root / "layers/sha256")) <= 1  # the base layer at most


def test_a_layer_of_too_many_files_is_refused(tmp_path):
    # Refused after about 1500 files: other work would have to free the rest meanwhile.
    empties = [directory("app")] + [file(f"app/{n}") for n in range(20_000)]
    disk = os.statvfs(tmp_path)
    if not disk.f_files:
        pytest.skip("this file system has no fixed number of inodes")
    archive = _image(tmp_path, [BASE, empties], layer_compression="gzip")
    store = ImageStore(tmp_path / "store", min_free_inodes=os.statvfs(tmp_path).f_favail - 1500)

    with pytest.raises(ImageError, match="free files"):
        store.prepare(archive)

    assert os.listdir(store.root / "tmp") == []


def test_unpacking_a_layer_of_many_files_holds_no_memory_per_file(tmp_path):
    # tarfile keeps every member it reads: a layer of millions of empty files (a few bytes of
    # gzip each) would hold gigabytes of them in the process unpacking it.
    import tracemalloc

    layer = [directory("app"), *(file(f"app/{n}") for n in range(10_000))]
    archive = _image(tmp_path, [BASE, layer])
    store = ImageStore(tmp_path / "store")
    store.prepare(_image(tmp_path, [BASE], "warm.tar"))  # imports and models built: not counted
    tracemalloc.start()
    try:
        store.prepare(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 3 * 1024 * 1024  # 10000 members kept would be about 6 MB


def test_removing_a_read_only_folder_never_chmods_through_its_links(tmp_path):
    # remove_tree makes read-only folders (as images have them) writable to empty them; a
    # link in such a folder must be removed, not its target chmodded. Permissions only stop
    # a user other than root, so the removal runs as nobody when the tests run as root.
    base = Path(tempfile.mkdtemp(prefix="gantry-remove-", dir="/tmp"))
    try:
        base.chmod(0o755)
        victim = base / "victim"
        victim.mkdir(mode=0o755)
        tree = base / "tree"
        (tree / "ro").mkdir(parents=True)
        (tree / "ro" / "link").symlink_to(victim)
        owner = (65534, 65534) if os.geteuid() == 0 else None
        if owner:
            for path in (base, victim, tree, tree / "ro"):
                os.chown(path, *owner)
            os.lchown(tree / "ro" / "link", *owner)
        (tree / "ro").chmod(0o555)

        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                if owner:
                    os.setgid(owner[1])
                    os.setuid(owner[0])
                remove_tree(tree)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)

        assert os.waitstatus_to_exitcode(status) == 0
        assert not tree.exists()
        assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mtime", [1e300, -1e300], ids=["huge", "negative"])
def test_a_time_no_file_system_holds_is_not_an_error(tmp_path, mtime):
    # A pax header may give any number as a member's mtime; utime refuses these.
    layer = [directory("app", mtime=mtime), file("app/x", "x", mtime=mtime), symlink("l", "x")]
    layer[-1].mtime = mtime

    prepared = ImageStore(tmp_path / "store").prepare(_image(tmp_path, [BASE, layer]))

    assert (prepared.rootfs / "app/x").stat().st_mtime == 0


@pytest.mark.parametrize("owner", [2**40, 2**32 - 1], ids=["too-large", "minus-one"])
def test_an_owner_id_out_of_range_is_refused_with_a_reason(tmp_path, owner):
    # A pax header may give any number; lchown (as root) refuses them with an OverflowError,
    # and -1 (2**32 - 1) would silently mean "leave the owner as it is".
    layer = [directory("app"), file("app/x", "x", uid=owner, gid=owner)]

    with pytest.raises(ImageError, match="'app/x' has an owner out of range"):
        ImageStore(tmp_path / "store").prepare(_image(tmp_path, [BASE, layer]))
