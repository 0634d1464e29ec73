"""Building images from files: reproducible layers, and archives the import reads and unpacks."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from gantry.oci import ImageStore, read_archive
from gantry.oci.build import FIXED_MTIME, image_config, write_archive, write_layer


def _source_tar(path: Path, *, reverse: bool = False) -> Path:
    """A root-like tar: unsorted, real times and names, a device node, a hard link that comes
    before the file it names once sorted."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, **kw) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mtime, info.uname, info.gname = kind, 1_234_567_890, "root", "root"
        info.mode = kw.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
        for key, value in kw.items():
            setattr(info, key, value)
        if data is not None:
            info.size = len(data)
        members.append((info, data))

    add("./usr", tarfile.DIRTYPE)
    add("./usr/bin", tarfile.DIRTYPE)
    add("./usr/bin/zperl", data=b"#!perl\n", mode=0o755)
    add("./usr/bin/aperl", tarfile.LNKTYPE, linkname="./usr/bin/zperl")
    add("./usr/bin/python3", tarfile.SYMTYPE, linkname="python3.11")
    add("./dev", tarfile.DIRTYPE)
    add("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    add("./etc", tarfile.DIRTYPE)
    add("./etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", uid=0, gid=0)
    add("./home/user/file", data=b"mine", uid=1000, gid=1000)
    if reverse:
        members.reverse()  # hard link still after its file in the source
        perl = next(m for m in members if m[1] == b"#!perl\n")
        members.insert(0, members.pop(members.index(perl)))
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_a_layer_is_sorted_with_fixed_times_and_the_same_bytes_every_time(tmp_path: Path) -> None:
    first = write_layer(tmp_path / "one.tar.gz", tars=[_source_tar(tmp_path / "a.tar")])
    again = write_layer(
        tmp_path / "two.tar.gz", tars=[_source_tar(tmp_path / "b.tar", reverse=True)]
    )

    assert (first.digest, first.diff_id) == (again.digest, again.diff_id)
    assert first.path.read_bytes() == again.path.read_bytes()
    with tarfile.open(first.path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert "dev/null" not in names  # the runtime mounts /dev; devices are refused in layers
    assert {m.mtime for m in members} == {FIXED_MTIME}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    by_name = {m.name: m for m in members}
    # The first name of the linked pair holds the data; the other links to it.
    assert by_name["usr/bin/aperl"].isfile() and by_name["usr/bin/aperl"].size == 7
    assert by_name["usr/bin/zperl"].islnk()
    assert by_name["usr/bin/zperl"].linkname == "usr/bin/aperl"
    assert by_name["usr/bin/python3"].linkname == "python3.11"
    assert (by_name["home/user/file"].uid, by_name["home/user/file"].gid) == (1000, 1000)


def test_a_directory_goes_under_its_prefix_with_the_owner_given(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (folder / "pkg" / "link.py").symlink_to("__init__.py")
    os.utime(folder / "pkg" / "__init__.py", (1, 1))

    layer = write_layer(tmp_path / "site.tar.gz", directories=[(folder, "usr/local/lib", 0, 0)])

    with tarfile.open(layer.path, "r:gz") as tar:
        names = tar.getnames()
        assert tar.getmember("usr/local/lib/pkg/link.py").linkname == "__init__.py"
    assert names == [
        "usr",
        "usr/local",
        "usr/local/lib",
        "usr/local/lib/pkg",
        "usr/local/lib/pkg/__init__.py",
        "usr/local/lib/pkg/link.py",
    ]


def test_the_archive_is_an_image_the_import_reads_and_the_store_unpacks(tmp_path: Path) -> None:
    root = write_layer(tmp_path / "root.tar.gz", tars=[_source_tar(tmp_path / "a.tar")])
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "main.py").write_text("print('hi')\n")
    app = write_layer(tmp_path / "app.tar.gz", directories=[(folder, "app", 0, 0)])
    settings = {"User": "1000:1000", "Entrypoint": ["python3"], "Cmd": ["/app/main.py"]}
    config = image_config([root, app], settings, ["root", "app"], "2023-11-14T22:13:20Z")

    write_archive(tmp_path / "image.tar", config, [root, app], "example")

    archive = read_archive(tmp_path / "image.tar")
    assert archive.config.problems() == []
    assert archive.config.argv == ["python3", "/app/main.py"]
    assert [layer.diff_id for layer in archive.config.layers] == [root.diff_id, app.diff_id]
    prepared = ImageStore(tmp_path / "store").add(archive)
    rootfs = Path(prepared.rootfs)
    assert (rootfs / "app" / "main.py").read_text() == "print('hi')\n"
    assert (rootfs / "usr" / "bin" / "zperl").read_bytes() == b"#!perl\n"
    assert os.path.samefile(rootfs / "usr" / "bin" / "zperl", rootfs / "usr" / "bin" / "aperl")


def test_a_hard_link_to_a_missing_file_is_refused(tmp_path: Path) -> None:
    from gantry.oci import ImageError

    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        info = tarfile.TarInfo("a")
        info.type, info.linkname = tarfile.LNKTYPE, "missing"
        tar.addfile(info)

    with pytest.raises(ImageError, match="names a missing 'missing'"):
        write_layer(tmp_path / "bad.tar.gz", tars=[tmp_path / "bad.tar"])
