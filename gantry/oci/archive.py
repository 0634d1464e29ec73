"""Read an image archive (``docker save`` before and since Docker 25, or an OCI image layout)
as .tar, .tar.gz or .tar.xz, in two streaming passes and never whole in memory.

1. ``read_archive``: one pass keeps the small JSON members (index, manifests, configs) and the
   names of the others, then picks the one runnable image: BuildKit attestation manifests and
   other platforms are skipped, several images are refused.
2. ``ArchiveImage.layer_streams``: a second pass yields each wanted layer blob as a stream,
   in archive order, for the caller to unpack (``gantry.oci.layers``).

Layouts:
- Docker < 25: ``manifest.json`` = ``[{Config: "<hex>.json", RepoTags, Layers:
  ["<id>/layer.tar", ...]}]``, uncompressed layers (a repeated layer may be a symlink to
  the first copy).
- Docker >= 25 and OCI: ``index.json`` (an image index, possibly nested) and
  ``blobs/sha256/<hex>``; Docker also writes ``manifest.json`` naming the same blobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gantry import jsonlimits
from gantry.oci.config import MEDIA_TYPE_DOCKER_LAYER, ImageConfig, Layer, parse_config
from gantry.oci.errors import ImageError
from gantry.oci.streams import Prefixed, forget_members

# A JSON member larger than this is not a manifest or config we accept.
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_KEPT_BYTES = 64 * 1024 * 1024
# An image archive holds a few members per layer (and Docker allows 127 layers); its names
# are short. Every name is kept during the first pass, so both are bounded.
MAX_MEMBERS = 10_000
MAX_NAME_BYTES = 4096
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
# BuildKit stores provenance/SBOM as extra manifests marked like this (platform unknown/unknown).
ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
RUNNABLE_PLATFORM = ("linux", "amd64")
Opener = Callable[[], IO[bytes]]
HOW_TO_SAVE = "create it with 'docker save IMAGE:TAG -o image.tar' (or an OCI image layout tar)"


@dataclass
class _Members:
    """What the first pass saw: every member's kind, the small JSON ones' bytes."""

    files: dict[str, int] = field(default_factory=dict)  # name -> size
    links: dict[str, str] = field(default_factory=dict)  # symlink name -> resolved name
    kept: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class ArchiveImage:
    """The one image of an archive: its config and, per layer, the member holding its blob."""

    path: Path | Opener  # a file, or how to open the archive again as a stream
    config: ImageConfig
    layer_members: tuple[str, ...]
    layout: str  # "docker" (before 25), "oci" (OCI layout, including Docker 25+ saves)
    # The exact bytes the digests name, for an importer that pushes the image on unchanged.
    config_blob: bytes = b""
    manifest_blob: bytes | None = None  # None for Docker < 25, which stores no manifest

    def layer_streams(self, wanted: set[str]) -> Iterator[tuple[Layer, IO[bytes]]]:
        """Stream the layers whose ``digest`` is in ``wanted``, each once, in archive order.

        The stream is valid until the next item is requested.
        """
        by_member: dict[str, Layer] = {}
        for layer, member in zip(self.config.layers, self.layer_members, strict=True):
            if layer.digest in wanted:
                by_member.setdefault(member, layer)
        if not by_member:
            return
        with _open(self.path) as archive:
            for info in archive:
                forget_members(archive)
                name = _clean(info.name)
                found = by_member.pop(name, None)
                if found is None or not info.isfile():
                    continue
                handle = archive.extractfile(info)
                assert handle is not None
                yield found, handle
                if not by_member:
                    return
        if by_member:
            missing = ", ".join(sorted(by_member))
            raise ImageError(f"The archive changed while it was read: {missing} disappeared")


def read_archive(path: str | Path | Opener) -> ArchiveImage:
    """The archive's one runnable image, or an ImageError saying what to change.

    ``path`` is a file, or a function that opens the archive as a fresh stream each time it
    is called (an S3 object's body, say): it is read from the start twice, never seeked.
    """
    path = path if callable(path) else Path(path)
    members = _scan(path)
    names = set(members.files) | set(members.links)
    if "index.json" in names:
        return _read_oci(path, members)
    if "manifest.json" in names:
        return _read_docker(path, members)
    raise ImageError(
        "The archive has neither manifest.json (docker save) nor index.json (OCI layout): "
        + HOW_TO_SAVE
    )


# --- The first pass ---------------------------------------------------------------------------


@contextlib.contextmanager
def _open(path: Path | Opener) -> Iterator[tarfile.TarFile]:
    """A plain tar file is read with seeks (headers only, data skipped); a compressed one,
    or any opened stream, as a stream that each pass reads once from the start."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(path() if callable(path) else path.open("rb"))
        magic = raw.read(6)
        if magic.startswith(b"\x28\xb5\x2f\xfd"):
            raise ImageError(
                "The archive is compressed with zstd; give it as .tar, .tar.gz or .tar.xz"
            )
        compressed = magic.startswith((b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh"))
        source: IO[bytes] | Prefixed
        if callable(path) or compressed:
            source, mode = Prefixed(magic, raw), "r|*"
        else:
            raw.seek(0)
            source, mode = raw, "r:"
        try:
            archive = stack.enter_context(tarfile.open(fileobj=source, mode=mode))  # type: ignore[call-overload]
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ImageError(f"The file is not a tar archive ({error}): {HOW_TO_SAVE}") from None
        yield archive


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _scan(path: Path | Opener) -> _Members:
    members = _Members()
    kept_total = 0
    symlinks: dict[str, str] = {}
    try:
        with _open(path) as archive:
            for count, info in enumerate(archive, 1):
                forget_members(archive)
                if count > MAX_MEMBERS:
                    raise ImageError(
                        f"The archive has more than {MAX_MEMBERS} members: it is not an image "
                        "archive; " + HOW_TO_SAVE
                    )
                if len(info.name) > MAX_NAME_BYTES or len(info.linkname) > MAX_NAME_BYTES:
                    raise ImageError(
                        f"The archive has a member name longer than {MAX_NAME_BYTES} "
                        "characters: it is not an image archive; " + HOW_TO_SAVE
                    )
                name = _clean(info.name)
                if info.issym():
                    symlinks[name] = info.linkname
                elif info.islnk():
                    symlinks[name] = "/" + _clean(info.linkname)
                elif info.isfile():
                    members.files[name] = info.size
                    if info.size <= MAX_JSON_BYTES and kept_total + info.size <= MAX_KEPT_BYTES:
                        handle = archive.extractfile(info)
                        assert handle is not None
                        head = handle.read(1)
                        # Manifests and configs are JSON objects or arrays; layers never
                        # start like that, so they are not kept.
                        if head in (b"{", b"["):
                            members.kept[name] = head + handle.read()
                            kept_total += info.size
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ImageError(f"The archive is damaged or truncated ({error})") from None
    for name, target in symlinks.items():
        # Links are relative to the link's folder; a hard link's target is a member name.
        resolved = (
            target[1:]
            if target.startswith("/")
            else posixpath.join(posixpath.dirname(name), target)
        )
        resolved = posixpath.normpath(resolved)
        if resolved in members.files:
            members.links[name] = resolved
    return members


def _member(members: _Members, name: str) -> str:
    name = _clean(name)
    resolved = members.links.get(name, name)
    if resolved not in members.files:
        raise ImageError(f"The archive lacks '{name}', which its manifest names")
    return resolved


def _json(members: _Members, name: str, what: str) -> Any:
    member = _member(members, name)
    raw = members.kept.get(member)
    if raw is None:
        raise ImageError(f"The {what} '{name}' is not JSON or larger than {MAX_JSON_BYTES} bytes")
    return _parsed(raw, f"{what} '{name}'")


def _parsed(raw: bytes, what: str) -> Any:
    """A JSON member, ImageError where it is not JSON (or nested too deeply)."""
    try:
        return jsonlimits.loads(raw)
    except ValueError as error:
        raise ImageError(f"The {what} is not valid JSON: {error}") from None


def _checked_digest(digest: Any, what: str) -> str:
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise ImageError(f"The {what} digest {digest!r} is not a sha256 digest")
    return digest


def _blob_name(digest: Any, what: str) -> str:
    return "blobs/sha256/" + _checked_digest(digest, what).removeprefix("sha256:")


def _verified_blob(members: _Members, digest: Any, what: str) -> bytes:
    name = _member(members, _blob_name(digest, what))
    raw = members.kept.get(name)
    if raw is None:
        raise ImageError(f"The {what} {digest} is not JSON or larger than {MAX_JSON_BYTES} bytes")
    if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
        raise ImageError(f"The {what} {digest} does not match its digest: the archive is damaged")
    return raw


# --- OCI layout (and Docker 25+) ---------------------------------------------------------------


def _platform(descriptor: dict[str, Any]) -> tuple[str, str] | None:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    return str(platform.get("os", "")), str(platform.get("architecture", ""))


def _is_attestation(descriptor: dict[str, Any]) -> bool:
    annotations = descriptor.get("annotations") or {}
    return isinstance(annotations, dict) and ATTESTATION_ANNOTATION in annotations


def _manifests(
    members: _Members, descriptors: Any, skipped: list[str], depth: int = 0
) -> list[dict[str, Any]]:
    """Runnable manifest descriptors under an index, nested indexes followed."""
    if not isinstance(descriptors, list):
        raise ImageError("The image index has no 'manifests' list")
    if depth > 4:
        raise ImageError("The image indexes are nested too deeply")
    found: list[dict[str, Any]] = []
    for descriptor in descriptors:
        if not isinstance(descriptor, dict) or _is_attestation(descriptor):
            continue
        platform = _platform(descriptor)
        if platform is not None and platform != RUNNABLE_PLATFORM:
            if platform != ("unknown", "unknown"):
                skipped.append("/".join(platform))
            continue
        media_type = descriptor.get("mediaType")
        if media_type in INDEX_TYPES:
            raw = _verified_blob(members, descriptor.get("digest"), "image index")
            nested_index = _parsed(raw, f"image index {descriptor.get('digest')}")
            if not isinstance(nested_index, dict):
                raise ImageError("An image index of the archive is not a JSON object")
            nested = nested_index.get("manifests")
            found += _manifests(members, nested, skipped, depth + 1)
        elif media_type in MANIFEST_TYPES or media_type is None:
            found.append(descriptor)
    return found


def _tags(descriptor: dict[str, Any]) -> list[str]:
    annotations = descriptor.get("annotations") or {}
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        if isinstance(annotations, dict) and annotations.get(key):
            return [str(annotations[key])]
    return []


def _read_oci(path: Path | Opener, members: _Members) -> ArchiveImage:
    index = _json(members, "index.json", "image index")
    if not isinstance(index, dict):
        raise ImageError("index.json is not a JSON object")
    skipped: list[str] = []
    candidates = _manifests(members, index.get("manifests"), skipped)
    unique = {d.get("digest"): d for d in candidates}
    if not unique:
        if skipped:
            raise ImageError(
                f"The archive holds images for {', '.join(sorted(set(skipped)))} only; Gantry "
                "runs linux/amd64 images: build with --platform linux/amd64"
            )
        raise ImageError("The archive's index.json lists no image manifest: " + HOW_TO_SAVE)
    if len(unique) > 1:
        raise ImageError(
            f"The archive holds {len(unique)} images; save exactly one image per archive "
            "('docker save IMAGE:TAG')"
        )
    descriptor = next(iter(unique.values()))
    raw_manifest = _verified_blob(members, descriptor["digest"], "image manifest")
    manifest = _parsed(raw_manifest, f"image manifest {descriptor['digest']}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ImageError("The image manifest names no config: the archive is not an image")
    config_digest = manifest["config"].get("digest")
    raw_config = _verified_blob(members, config_digest, "image config")
    layers_field = manifest.get("layers")
    if not isinstance(layers_field, list):
        raise ImageError("The image manifest has no 'layers' list")
    layers: list[tuple[str, str, int | None]] = []
    layer_members: list[str] = []
    for entry in layers_field:
        if not isinstance(entry, dict):
            raise ImageError("The image manifest's layers must be descriptors")
        digest = _checked_digest(entry.get("digest"), "layer")
        layer_members.append(_member(members, _blob_name(digest, "layer")))
        size = entry.get("size")
        layers.append(
            (digest, str(entry.get("mediaType", "")), size if isinstance(size, int) else None)
        )
    config = parse_config(raw_config, config_digest, layers, _tags(descriptor))
    return ArchiveImage(path, config, tuple(layer_members), "oci", raw_config, raw_manifest)


# --- Docker before 25 --------------------------------------------------------------------------


def _read_docker(path: Path | Opener, members: _Members) -> ArchiveImage:
    manifest = _json(members, "manifest.json", "manifest")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError("manifest.json lists no image: " + HOW_TO_SAVE)
    if len(manifest) > 1:
        tags = [
            t for entry in manifest if isinstance(entry, dict) for t in entry.get("RepoTags") or []
        ]
        raise ImageError(
            f"The archive holds {len(manifest)} images ({', '.join(tags) or 'untagged'}); "
            "save exactly one image per archive ('docker save IMAGE:TAG')"
        )
    entry = manifest[0]
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise ImageError("manifest.json names no Config: " + HOW_TO_SAVE)
    config_name = _member(members, entry["Config"])
    raw_config = members.kept.get(config_name)
    if raw_config is None:
        raise ImageError(f"The image config '{config_name}' is not JSON or too large")
    config_digest = "sha256:" + hashlib.sha256(raw_config).hexdigest()
    stem = posixpath.basename(config_name).removesuffix(".json")
    if re.fullmatch(r"[0-9a-f]{64}", stem) and "sha256:" + stem != config_digest:
        raise ImageError(f"The image config {config_name} does not match its digest: damaged")
    names = entry.get("Layers")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ImageError("manifest.json has no Layers list")
    try:
        diff_ids = jsonlimits.loads(raw_config).get("rootfs", {}).get("diff_ids") or []
    except (ValueError, AttributeError):
        diff_ids = []
    if len(diff_ids) != len(names):
        raise ImageError(
            f"manifest.json lists {len(names)} layers but the config {len(diff_ids)} diff_ids"
        )
    # Uncompressed tars: the blob's digest is its diff_id.
    layers: list[tuple[str, str, int | None]] = [
        (str(d), MEDIA_TYPE_DOCKER_LAYER, None) for d in diff_ids
    ]
    layer_members = [_member(members, n) for n in names]
    tags = [str(t) for t in entry.get("RepoTags") or []]
    config = parse_config(raw_config, config_digest, layers, tags)
    return ArchiveImage(path, config, tuple(layer_members), "docker", raw_config, None)
