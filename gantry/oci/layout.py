"""An OCI image layout store that answers the registry calls Gantry makes: push and pull blobs
and manifests, delete a manifest. The one-machine stack uses it when the distribution registry
(Debian's ``docker-registry``) is not installed, so an import pushes with the same code
(``gantry.oci.push``) and the local backend pulls from it the same way.

Layout under the root: one OCI image layout per repository (``<repository>/oci-layout``,
``index.json``, ``blobs/sha256/<hex>``), readable by skopeo and umoci as
``oci:<root>/<repository>:<tag>``. Blobs appear by one rename of a complete, checked file;
``index.json`` changes under a lock per repository, by one rename too. Deleting a manifest
removes its index entries and every blob no remaining manifest refers to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gantry.oci.registry import DEFAULT_CHUNK_BYTES, MANIFEST_TYPES, RegistryError, check_repository

LAYOUT_HOST = "oci-layout"
REF_NAME = "org.opencontainers.image.ref.name"
_HEX = frozenset("0123456789abcdef")


class OciLayout:
    """``Registry``'s interface over folders: ``host`` is ``oci-layout``."""

    host = LAYOUT_HOST

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- Blobs ----------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        try:
            return self._blob(repository, digest).stat().st_size
        except FileNotFoundError:
            return None

    def push_blob(self, repository: str, digest: str, stream: IO[bytes]) -> int:
        """Copy ``stream`` in chunks; refused unless its bytes have ``digest``. Its size."""
        target = self._blob(repository, digest)
        hasher = hashlib.sha256()
        size = 0
        with self._temporary(repository) as (handle, path):
            while chunk := stream.read(DEFAULT_CHUNK_BYTES):
                hasher.update(chunk)
                handle.write(chunk)
                size += len(chunk)
            handle.flush()
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise RegistryError(f"The blob read for {digest} has the digest {actual}: damaged")
            os.replace(path, target)
        return size

    def push_bytes(self, repository: str, data: bytes) -> str:
        import io

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.blob_size(repository, digest) is None:
            self.push_blob(repository, digest, io.BytesIO(data))
        return digest

    @contextlib.contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[IO[bytes]]:
        try:
            handle = self._blob(repository, digest).open("rb")
        except FileNotFoundError:
            raise RegistryError(
                f"The image layout {self.root} has no blob {digest} in {repository}"
            ) from None
        with handle:
            yield handle

    # --- Manifests ------------------------------------------------------------------------

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        digest = self.push_bytes(repository, data)
        entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
        with self._index(repository) as index:
            manifests = index["manifests"]
            if reference.startswith("sha256:"):
                if reference != digest:
                    raise RegistryError(f"The manifest stored as {reference} has digest {digest}")
                if not any(m.get("digest") == digest for m in manifests):
                    manifests.append(entry)
            else:
                # A tag names one manifest: an earlier manifest of the same tag loses it.
                manifests[:] = [m for m in manifests if _tag(m) != reference]
                manifests.append({**entry, "annotations": {REF_NAME: reference}})
        return digest

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        index = self._read_index(repository)
        if reference.startswith("sha256:"):
            found = [m for m in index["manifests"] if m.get("digest") == reference]
        else:
            found = [m for m in index["manifests"] if _tag(m) == reference]
        if not found:
            raise RegistryError(
                f"The image layout {self.root} has no image {repository}:{reference}"
            )
        digest = str(found[-1]["digest"])
        with self.open_blob(repository, digest) as stream:
            data = stream.read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"The manifest {digest} read back damaged")
        return data, str(json.loads(data).get("mediaType") or found[-1].get("mediaType"))

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Forget the manifest (its tags too) and delete the blobs nothing else uses."""
        with self._index(repository) as index:
            index["manifests"] = [m for m in index["manifests"] if m.get("digest") != digest]
            kept: set[str] = set()
            for entry in index["manifests"]:
                kept.add(str(entry["digest"]))
                kept.update(self._referenced(repository, str(entry["digest"])))
            blobs = self.root / repository / "blobs" / "sha256"
            for blob in blobs.iterdir() if blobs.exists() else ():
                if "sha256:" + blob.name not in kept:
                    blob.unlink(missing_ok=True)

    def repositories(self) -> list[str]:
        return sorted(
            str(path.parent.relative_to(self.root)) for path in self.root.rglob("oci-layout")
        )

    # --- Files ----------------------------------------------------------------------------

    def _referenced(self, repository: str, digest: str) -> set[str]:
        try:
            with self.open_blob(repository, digest) as stream:
                manifest = json.loads(stream.read())
        except (RegistryError, ValueError):
            return set()
        if manifest.get("mediaType") not in MANIFEST_TYPES and "config" not in manifest:
            return set()
        return {
            str(d["digest"]) for d in [manifest.get("config") or {}, *manifest.get("layers", [])]
        }

    def _folder(self, repository: str) -> Path:
        check_repository(repository)
        folder = self.root / repository
        (folder / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = folder / "oci-layout"
        if not layout.exists():
            layout.write_text('{"imageLayoutVersion":"1.0.0"}')
        return folder

    def _blob(self, repository: str, digest: str) -> Path:
        algorithm, _, value = digest.partition(":")
        if algorithm != "sha256" or len(value) != 64 or not set(value) <= _HEX:
            raise RegistryError(f"'{digest}' is not a sha256 digest")
        return self._folder(repository) / "blobs" / "sha256" / value

    @contextlib.contextmanager
    def _temporary(self, repository: str) -> Iterator[tuple[IO[bytes], Path]]:
        descriptor, name = tempfile.mkstemp(prefix=".upload-", dir=self._folder(repository))
        path = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                yield handle, path
        finally:
            path.unlink(missing_ok=True)

    def _read_index(self, repository: str) -> dict[str, Any]:
        try:
            index = json.loads((self._folder(repository) / "index.json").read_text())
        except FileNotFoundError:
            index = {"schemaVersion": 2, "manifests": []}
        return dict(index)

    @contextlib.contextmanager
    def _index(self, repository: str) -> Iterator[dict[str, Any]]:
        folder = self._folder(repository)
        descriptor = os.open(folder / ".index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            index = self._read_index(repository)
            yield index
            work = folder / ".index.json.tmp"
            work.write_text(json.dumps(index, indent=1))
            os.replace(work, folder / "index.json")
        finally:
            os.close(descriptor)


def _tag(entry: dict[str, Any]) -> str | None:
    annotations = entry.get("annotations") or {}
    return annotations.get(REF_NAME)
