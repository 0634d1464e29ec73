"""Build an image from files without a container engine: reproducible layers and an OCI archive.

``write_layer(sources, out)`` writes one gzip layer from tar members of several sources (a
directory, placed under a prefix, or an existing tar such as a debootstrapped root): members
sorted by name, every mtime set to one fixed time, owners numeric, no user or group names, no
device nodes or FIFOs (the runtime mounts ``/dev`` itself, and ``gantry.oci.layers`` refuses
them), hard links always after the file they name, gzip without a name or time in its header.
The same inputs give the same bytes, so a rebuild gives the same digests.

``write_archive(out, config, layers)`` writes an OCI image layout as one uncompressed tar (what
``gantry.oci.read_archive`` and the image import read), its manifest from
``gantry.oci.mutate.oci_manifest``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gzip
import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from gantry.oci.config import MEDIA_TYPE_LAYER_GZIP
from gantry.oci.errors import ImageError
from gantry.oci.mutate import MEDIA_TYPE_OCI_MANIFEST, oci_manifest, sha256_digest

# 2023-11-14: any fixed time works; a time after 1980 keeps zip-minded tools content.
FIXED_MTIME = 1_700_000_000
COPY_CHUNK = 1024 * 1024
_SKIPPED_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)


@dataclass(frozen=True)
class BuiltLayer:
    """A gzip layer blob on disk: ``digest`` of the blob, ``diff_id`` of its tar."""

    path: Path
    digest: str
    diff_id: str
    size: int
    media_type: str = MEDIA_TYPE_LAYER_GZIP


@dataclass(frozen=True)
class Member:
    """One tar member to write; ``open`` gives a regular file's bytes."""

    info: tarfile.TarInfo
    open: Callable[[], IO[bytes]] | None = None


class _Hashing:
    """A write-only file that hashes what passes on to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def _clean_name(name: str) -> str:
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"The layer member '{name}' contains '..'")
    return "/".join(parts)


def directory_members(root: Path, prefix: str = "", uid: int = 0, gid: int = 0) -> list[Member]:
    """The files of ``root`` as members under ``prefix`` (``usr/local/lib``), owned by
    ``uid``:``gid``; the prefix's own directories are included, owned by root."""
    members: list[Member] = []
    prefix = _clean_name(prefix)
    if prefix:
        parts = prefix.split("/")
        for depth in range(1, len(parts) + 1):
            info = tarfile.TarInfo("/".join(parts[:depth]))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            members.append(Member(info))
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        name = f"{prefix}/{relative}" if prefix else relative
        info = tarfile.TarInfo(name)
        status = path.lstat()
        info.mode = status.st_mode & 0o7777
        info.uid, info.gid = uid, gid
        opener: Callable[[], IO[bytes]] | None = None
        if path.is_symlink():
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif path.is_dir():
            info.type = tarfile.DIRTYPE
        elif path.is_file():
            info.size = status.st_size
            opener = functools.partial(_open_binary, path)
        else:
            continue  # sockets, devices: not image content
        members.append(Member(info, opener))
    return members


def _open_binary(path: Path) -> IO[bytes]:
    return path.open("rb")


@dataclass
class TarSource:
    """The members of an existing tar file (read with random access)."""

    path: Path

    def members(self, archive: tarfile.TarFile) -> list[Member]:
        found = []
        for info in archive.getmembers():
            if info.type in _SKIPPED_TYPES:
                continue
            info = copy.copy(info)
            info.name = _clean_name(info.name)
            if not info.name:
                continue
            if info.islnk():
                info.linkname = _clean_name(info.linkname)
            opener = None
            if info.isfile():
                original = info

                def opener(archive: tarfile.TarFile = archive, member: Any = original) -> IO[bytes]:
                    handle = archive.extractfile(member)
                    assert handle is not None
                    return handle

            found.append(Member(info, opener))
        return found


def _ordered(members: Iterable[Member]) -> list[Member]:
    """By name, the last of one name winning; each hard link after the file it names (the
    first name of a group of links becomes the file, the others link to it)."""
    by_name: dict[str, Member] = {}
    for member in members:
        by_name[member.info.name] = member
    ordered = [by_name[name] for name in sorted(by_name)]
    # Hard links: group the names that share one file; the first name holds the data.
    groups: dict[str, list[str]] = {}
    for member in ordered:
        if member.info.islnk():
            target = member.info.linkname
            while target in by_name and by_name[target].info.islnk():
                target = by_name[target].info.linkname
            if target not in by_name:
                raise ImageError(f"The hard link '{member.info.name}' names a missing '{target}'")
            groups.setdefault(target, [target]).append(member.info.name)
    replaced: dict[str, Member] = {}
    for target, names in groups.items():
        first = min(names)
        data = by_name[target]
        info = copy.copy(data.info)
        info.name = first
        replaced[first] = Member(info, data.open)
        for name in names:
            if name != first:
                link = copy.copy(by_name[name].info if name != target else data.info)
                link.name, link.type, link.linkname, link.size = name, tarfile.LNKTYPE, first, 0
                replaced[name] = Member(link)
    return [replaced.get(member.info.name, member) for member in ordered]


def _normalized(info: tarfile.TarInfo, mtime: int) -> tarfile.TarInfo:
    info = copy.copy(info)
    info.mtime = mtime
    info.uname = info.gname = ""
    info.pax_headers = {}  # extended attributes and sub-second times are not kept
    return info


def write_layer(
    out: Path,
    directories: Iterable[tuple[Path, str, int, int]] = (),
    tars: Iterable[Path] = (),
    *,
    mtime: int = FIXED_MTIME,
    compresslevel: int = 6,
) -> BuiltLayer:
    """One gzip layer at ``out`` from ``tars`` and ``directories`` ((folder, prefix, uid,
    gid) each); a later source's member replaces an earlier one of the same name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(out.name + ".tmp")
    with contextlib.ExitStack() as opened:
        members: list[Member] = []
        for path in tars:
            archive = opened.enter_context(tarfile.open(path, "r:*"))
            members.extend(TarSource(path).members(archive))
        for folder, prefix, uid, gid in directories:
            members.extend(directory_members(folder, prefix, uid, gid))
        with work.open("wb") as raw:
            blob = _Hashing(raw)
            # The writers only call write(): the hashing wrappers are files enough for them.
            with gzip.GzipFile(
                filename="",
                mode="wb",
                fileobj=cast(Any, blob),
                compresslevel=compresslevel,
                mtime=0,
            ) as compressed:
                tar_stream = _Hashing(cast(IO[bytes], compressed))
                with tarfile.open(
                    fileobj=cast(Any, tar_stream), mode="w|", format=tarfile.PAX_FORMAT
                ) as tar:
                    for member in _ordered(members):
                        info = _normalized(member.info, mtime)
                        if member.open is not None and info.isfile():
                            with member.open() as data:
                                tar.addfile(info, data)
                        else:
                            tar.addfile(info)
    work.replace(out)
    return BuiltLayer(
        out, "sha256:" + blob.hash.hexdigest(), "sha256:" + tar_stream.hash.hexdigest(), blob.size
    )


def image_config(
    layers: list[BuiltLayer], settings: dict[str, Any], history: list[str], created: str
) -> bytes:
    """An OCI image config (linux/amd64) for ``layers`` with ``settings`` (``User``,
    ``Env``, ``Entrypoint``, ``Cmd``, ``WorkingDir``, ``Labels``); one history entry a layer."""
    document = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": text} for text in history],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def write_archive(out: Path, config_blob: bytes, layers: list[BuiltLayer], tag: str) -> str:
    """An OCI image layout tar at ``out`` with one image tagged ``tag``; its manifest digest."""
    manifest = oci_manifest(
        config_blob, [(layer.media_type, layer.digest, layer.size) for layer in layers]
    )
    manifest_digest = sha256_digest(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    small = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(index, separators=(",", ":")).encode(),
        _blob_name(manifest_digest): manifest,
        _blob_name(sha256_digest(config_blob)): config_blob,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(out.name + ".tmp")
    with tarfile.open(work, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            tar.addfile(_entry(name, tarfile.DIRTYPE, 0o755))
        for name, data in small.items():
            info = _entry(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, _bytes(data))
        for layer in layers:
            info = _entry(_blob_name(layer.digest), tarfile.REGTYPE, 0o644)
            info.size = layer.size
            with layer.path.open("rb") as stream:
                tar.addfile(info, stream)
    work.replace(out)
    return manifest_digest


def _entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, FIXED_MTIME
    return info


def _bytes(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")
