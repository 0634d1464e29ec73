"""Build real image archives in tests and benchmarks: ``docker save`` (before Docker 25 and
since) and OCI image layouts, per the OCI image spec (sha256 digests, diff_ids, config,
manifest, index), from directories and from hand-listed tar members.

Hand-listed members exist to build hostile layers (absolute names, ``..``, devices, links)
that no Dockerfile produces; directories make ordinary layers. ``debian_root`` unpacks
Debian packages (``apt-get download`` + ``dpkg-deb -x``) into a directory, so example images
carry a real userland and never the host's own interpreter. Downloads and built archives are
cached under ``GANTRY_TEST_CACHE`` (default ``~/.cache/gantry-tests``).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MTIME = 1_700_000_000
Layout = Literal["docker", "docker25", "oci"]
Compression = Literal["none", "gzip", "xz", "zstd"]
# The archive itself: what Python's tarfile writes (zstd only from 3.14).
ArchiveCompression = Literal["none", "gzip", "xz"]
_TAR_MODES: dict[ArchiveCompression, Literal["w", "w:gz", "w:xz"]] = {
    "none": "w",
    "gzip": "w:gz",
    "xz": "w:xz",
}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """One builder at a time for ``name`` across processes (pytest-xdist workers)."""
    with (cache_dir() / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cache_dir() -> Path:
    root = Path(os.environ.get("GANTRY_TEST_CACHE", Path.home() / ".cache" / "gantry-tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


# --- Layers -----------------------------------------------------------------------------------


@dataclass
class Entry:
    """One tar member. ``kind``: file, dir, symlink, hardlink, fifo, chardev."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    source: Path | None = None  # a file's content read from disk instead of ``data``
    mtime: int = MTIME


def file(name: str, data: bytes | str = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, "file", data.encode() if isinstance(data, str) else data, mode=mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    return Entry(name, "dir", mode=mode, **kw)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", target=target)


def whiteout(path: str) -> Entry:
    """Delete ``path`` of the lower layers."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0o600)


def opaque(path: str) -> Entry:
    """Hide everything the lower layers had under the directory ``path``."""
    return file(f"{path.rstrip('/')}/.wh..wh..opq", mode=0o600)


def from_dir(root: Path, prefix: str = "", uid: int = 0, gid: int = 0) -> list[Entry]:
    """Entries for everything under ``root``, placed under ``prefix`` ("opt/app"), links kept."""
    entries: list[Entry] = []
    prefix = prefix.strip("/")
    if prefix:
        parts = prefix.split("/")
        entries += [
            directory("/".join(parts[: i + 1]), uid=uid, gid=gid) for i in range(len(parts))
        ]
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        relative = os.path.relpath(folder, root)
        for name in sorted(dirs) + sorted(files):
            path = Path(folder) / name
            member = "/".join(p for p in (prefix, relative, name) if p and p != ".")
            info = path.lstat()
            mode = info.st_mode & 0o7777
            if path.is_symlink():
                entries.append(symlink(member, os.readlink(path)))
            elif path.is_dir():
                entries.append(directory(member, mode=mode, uid=uid, gid=gid))
            else:
                entries.append(Entry(member, "file", mode=mode, source=path, uid=uid, gid=gid))
    return entries


def layer_tar(entries: Iterable[Entry], out: io.BufferedIOBase) -> None:
    """An uncompressed layer tar, written as Docker writes one (relative names, fixed mtime)."""
    kinds = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chardev": tarfile.CHRTYPE,
    }
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = kinds[entry.kind]
            info.mtime, info.uid, info.gid = entry.mtime, entry.uid, entry.gid
            default = 0o755 if entry.kind == "dir" else 0o644
            info.mode = default if entry.mode is None else entry.mode
            info.linkname = entry.target
            if entry.kind == "file":
                if entry.source is not None:
                    info.size = entry.source.stat().st_size
                    with entry.source.open("rb") as handle:
                        tar.addfile(info, handle)
                    continue
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)


# --- Images -----------------------------------------------------------------------------------


@dataclass
class ImageSpec:
    layers: Sequence[Sequence[Entry]]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str = ""
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    architecture: str = "amd64"
    os: str = "linux"
    tag: str = "example/algorithm:latest"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class _Built:
    config: bytes
    manifest: bytes
    layers: list[tuple[Path, str, str, str]]  # (blob file, digest, diff_id, media type)
    tag: str


def _build(spec: ImageSpec, work: Path, layer_compression: Compression) -> _Built:
    layers: list[tuple[Path, str, str, str]] = []
    for number, entries in enumerate(spec.layers):
        plain = work / f"layer-{id(spec)}-{number}.tar"
        with plain.open("wb") as out:
            layer_tar(entries, out)
        diff_id = _file_sha(plain)
        blob, media_type = plain, OCI_LAYER
        if layer_compression == "gzip":
            blob, media_type = plain.with_suffix(".tar.gz"), OCI_LAYER + "+gzip"
            with (
                plain.open("rb") as src,
                blob.open("wb") as raw,
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst,
            ):
                shutil.copyfileobj(src, dst)
        if layer_compression == "zstd":
            blob, media_type = plain.with_suffix(".tar.zst"), OCI_LAYER + "+zstd"
            subprocess.run(["zstd", "-q", "-o", str(blob), str(plain)], check=True)
        layers.append((blob, _file_sha(blob), diff_id, media_type))
    settings: dict[str, Any] = {"Env": spec.env, "Labels": spec.labels or None}
    if spec.entrypoint is not None:
        settings["Entrypoint"] = spec.entrypoint
    if spec.cmd is not None:
        settings["Cmd"] = spec.cmd
    if spec.user:
        settings["User"] = spec.user
    if spec.working_dir:
        settings["WorkingDir"] = spec.working_dir
    config = _json_bytes(
        {
            "architecture": spec.architecture,
            "os": spec.os,
            "created": "2024-01-01T00:00:00Z",
            "config": settings,
            "rootfs": {"type": "layers", "diff_ids": [diff for _, _, diff, _ in layers]},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        }
    )
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _sha(config), "size": len(config)},
            "layers": [
                {"mediaType": media, "digest": digest, "size": blob.stat().st_size}
                for blob, digest, _, media in layers
            ],
        }
    )
    return _Built(config, manifest, layers, spec.tag)


def write_archive(
    path: Path,
    specs: ImageSpec | Sequence[ImageSpec],
    *,
    layout: Layout = "oci",
    compression: ArchiveCompression = "none",
    layer_compression: Compression = "none",
    attestation: bool = False,
) -> Path:
    """Write ``specs`` (normally one image) as an archive at ``path``.

    ``docker``: ``docker save`` before Docker 25; ``docker25``: since (OCI layout plus
    manifest.json); ``oci``: an OCI image layout. ``attestation`` wraps the image in an index
    with a BuildKit attestation manifest beside it, as ``docker buildx`` does.
    """
    specs = [specs] if isinstance(specs, ImageSpec) else list(specs)
    if layout == "docker" and layer_compression != "none":
        raise ValueError("docker save before 25 writes uncompressed layers")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        work = Path(scratch)
        root = work / "archive"
        root.mkdir()
        built = [_build(spec, work, layer_compression) for spec in specs]
        if layout == "docker":
            _write_docker(root, built)
        else:
            _write_oci(root, built, docker_manifest=layout == "docker25", attestation=attestation)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        with tarfile.open(partial, _TAR_MODES[compression]) as tar:
            for member in sorted(root.rglob("*")):
                tar.add(member, member.relative_to(root).as_posix(), recursive=False)
        partial.rename(path)
    return path


def _write_docker(root: Path, built: list[_Built]) -> None:
    manifest = []
    for image in built:
        config_name = _sha(image.config).removeprefix("sha256:") + ".json"
        (root / config_name).write_bytes(image.config)
        names = []
        for blob, _, diff_id, _ in image.layers:
            folder = root / diff_id.removeprefix("sha256:")
            if not folder.exists():
                folder.mkdir()
                shutil.copyfile(blob, folder / "layer.tar")
                (folder / "VERSION").write_text("1.0")
            names.append(f"{folder.name}/layer.tar")
        manifest.append({"Config": config_name, "RepoTags": [image.tag], "Layers": names})
    (root / "manifest.json").write_bytes(_json_bytes(manifest))


def _write_oci(
    root: Path, built: list[_Built], *, docker_manifest: bool, attestation: bool
) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = _sha(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    descriptors = []
    docker_entries = []
    for image in built:
        config_digest = put(image.config)
        for blob, digest, _, _ in image.layers:
            target = blobs / digest.removeprefix("sha256:")
            if not target.exists():
                shutil.copyfile(blob, target)
        manifest_digest = put(image.manifest)
        descriptor: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": len(image.manifest),
            "annotations": {"io.containerd.image.name": image.tag},
        }
        if attestation:
            descriptor["platform"] = {"os": "linux", "architecture": "amd64"}
            descriptor = _with_attestation(put, descriptor, manifest_digest, image.tag)
        descriptors.append(descriptor)
        docker_entries.append(
            {
                "Config": "blobs/sha256/" + config_digest.removeprefix("sha256:"),
                "RepoTags": [image.tag],
                "Layers": [
                    "blobs/sha256/" + d.removeprefix("sha256:") for _, d, _, _ in image.layers
                ],
            }
        )
    (root / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    (root / "index.json").write_bytes(_json_bytes(index))
    if docker_manifest:
        (root / "manifest.json").write_bytes(_json_bytes(docker_entries))


def _with_attestation(
    put: Any, image: dict[str, Any], image_digest: str, tag: str
) -> dict[str, Any]:
    """An image index holding the image and a BuildKit-style attestation manifest."""
    statement = _json_bytes({"_type": "https://in-toto.io/Statement/v0.1", "subject": []})
    statement_digest = put(statement)
    attestation_config = _json_bytes(
        {
            "architecture": "unknown",
            "os": "unknown",
            "rootfs": {"type": "layers", "diff_ids": [statement_digest]},
        }
    )
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": put(attestation_config),
                "size": len(attestation_config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.in-toto+json",
                    "digest": statement_digest,
                    "size": len(statement),
                }
            ],
        }
    )
    attestation = {
        "mediaType": OCI_MANIFEST,
        "digest": put(manifest),
        "size": len(manifest),
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {
            "vnd.docker.reference.digest": image_digest,
            "vnd.docker.reference.type": "attestation-manifest",
        },
    }
    index = _json_bytes(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [image, attestation]}
    )
    return {
        "mediaType": OCI_INDEX,
        "digest": put(index),
        "size": len(index),
        "annotations": {"io.containerd.image.name": tag},
    }


# --- Debian userland --------------------------------------------------------------------------


def debian_root(packages: Sequence[str], target: Path) -> Path:
    """Unpack the named Debian packages (exact names, no dependency solving) into ``target``.

    Downloads with ``apt-get download`` into the cache; runs ``apt-get update`` once when the
    package lists are missing (CI runs as root with Debian's archive reachable).
    """
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    with cache_lock("debs"):  # test workers share the cache
        missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
        if missing and not _apt_download(missing, debs):
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            if not _apt_download(missing, debs):
                raise RuntimeError(f"apt-get download {' '.join(missing)} failed")
    target.mkdir(parents=True, exist_ok=True)
    for package in packages:
        (deb,) = sorted(debs.glob(f"{package}_*.deb"))[-1:]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return target


def _apt_download(packages: Sequence[str], into: Path) -> bool:
    done = subprocess.run(
        ["apt-get", "download", "-qq", *packages], cwd=into, capture_output=True, check=False
    )
    return done.returncode == 0


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def xz_bytes(data: bytes) -> bytes:
    return lzma.compress(data)
