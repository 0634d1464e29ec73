"""A content-addressed cache of unpacked layers and of root filesystems built from them.

Layout under the store's root (the local stack uses ``<state dir>/images``)::

    layers/sha256/<diff_id hex>/          one unpacked layer, shared by every image using it
    images/sha256/<config hex>/rootfs/    the image's root filesystem (hard links to layers)
    images/sha256/<config hex>/image.json its ImageConfig
    tmp/                                  work in progress, renamed into place when complete
    locks/                                one lock file per layer and image

Every entry appears by one rename of a complete temporary directory, so a reader never sees
half an entry, and a crash leaves only ``tmp/`` litter. A lock per digest (``flock``, held
across threads and processes) makes concurrent callers unpack each layer once: the second
waits and then finds the entry. Root filesystems share inodes with the layer cache and
must be mounted read-only.

``ImageStore(root).prepare(ref)`` takes an archive path or an image reference
(``oci:sha256:<hex>``, as the image record's ``image`` field stores it) and returns the
PreparedImage the local backend runs.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from gantry.oci.archive import read_archive
from gantry.oci.config import ImageConfig, Layer
from gantry.oci.errors import ImageError
from gantry.oci.layers import (
    MIN_FREE_BYTES,
    MIN_FREE_INODES,
    apply_layers,
    remove_tree,
    unpack_layer,
)
from gantry.resources import (
    ENV_ALGORITHM_ENV,
    ENV_ALGORITHM_USER,
    ENV_ALGORITHM_WORKDIR,
    ENV_API_METHOD,
    ENV_ROOTFS,
    OCI_IMAGE_PREFIX,
)


@dataclass(frozen=True)
class PreparedImage:
    """An image ready to run: its root filesystem becomes ``/`` in the sandbox."""

    rootfs: Path
    config: ImageConfig

    @property
    def ref(self) -> str:
        return image_ref(self.config.digest)

    def check_reachable(self) -> None:
        """A root runner drops to the image's USER before the sandbox starts: that user must
        pass through every folder above the root filesystem (``o+x``)."""
        if os.geteuid() != 0:
            return  # the runner stays this user, who owns the store
        for folder in [self.rootfs, *self.rootfs.absolute().parents]:
            if not os.stat(folder).st_mode & 0o001:
                raise ImageError(
                    f"The image's user cannot reach its root filesystem: {folder} is not "
                    "world-traversable; chmod o+x it or keep the image store elsewhere "
                    "(--state-dir)"
                )

    def runner_environment(self) -> dict[str, str]:
        """What the runner reads to run this image: its root, USER, ENV, WORKDIR, API method.

        ENTRYPOINT and CMD travel as for every image (``gantry.compute.base``).
        """
        env_list = base64.b64encode(json.dumps(self.config.env).encode()).decode()
        return {
            ENV_ROOTFS: str(self.rootfs),
            ENV_ALGORITHM_USER: self.config.user,
            ENV_ALGORITHM_ENV: env_list,
            ENV_ALGORITHM_WORKDIR: self.config.working_dir or "/",
            ENV_API_METHOD: self.config.api_method,
        }


class ImageSource(Protocol):
    """Where an image's layers come from: an archive (``ArchiveImage``) or a registry."""

    @property
    def config(self) -> ImageConfig: ...

    def layer_streams(self, wanted: set[str]) -> Iterator[tuple[Layer, IO[bytes]]]: ...


def image_ref(digest: str) -> str:
    """The image record's ``image`` value for an image in the local store."""
    return OCI_IMAGE_PREFIX + digest


def is_image_ref(value: str) -> bool:
    return value.startswith(OCI_IMAGE_PREFIX)


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise ImageError(f"'{digest}' is not a sha256 digest")
    return value


class ImageStore:
    def __init__(
        self,
        root: str | Path,
        *,
        min_free_bytes: int = MIN_FREE_BYTES,
        min_free_inodes: int = MIN_FREE_INODES,
    ) -> None:
        """``min_free_*``: what unpacking a layer leaves free on the store's disk."""
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.min_free_inodes = min_free_inodes
        for folder in ("layers/sha256", "images/sha256", "tmp", "locks"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def remove_leftovers(self, older_than_seconds: float = 24 * 3600) -> list[Path]:
        """Remove work folders that an interrupted unpack left in ``tmp/`` (a live one is
        younger: unpacking an image takes minutes, not a day)."""
        removed = []
        cutoff = time.time() - older_than_seconds
        for entry in (self.root / "tmp").iterdir():
            if entry.lstat().st_mtime < cutoff:
                remove_tree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry)
        return removed

    # --- Paths --------------------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        return self.root / "layers" / "sha256" / _hex(diff_id)

    def image_dir(self, digest: str) -> Path:
        return self.root / "images" / "sha256" / _hex(digest)

    # --- Use ----------------------------------------------------------------------------

    def prepare(self, ref: str | Path) -> PreparedImage:
        """The prepared image for an archive path or an ``oci:sha256:…`` reference."""
        if isinstance(ref, str) and is_image_ref(ref):
            return self.get(ref.removeprefix(OCI_IMAGE_PREFIX))
        return self.add(read_archive(ref))

    def get(self, digest: str) -> PreparedImage:
        """An image prepared before; ImageError if this store does not hold it."""
        folder = self.image_dir(digest)
        try:
            raw = (folder / "image.json").read_text()
        except FileNotFoundError:
            raise ImageError(
                f"The image {digest} is not in the image store at {self.root}: register its "
                "archive again"
            ) from None
        return PreparedImage(folder / "rootfs", ImageConfig.model_validate_json(raw))

    def add(self, image: ImageSource) -> PreparedImage:
        """Unpack the archive's missing layers and build its root filesystem, once."""
        config = image.config
        config.check_runnable()
        folder = self.image_dir(config.digest)
        if (folder / "image.json").exists():
            return self.get(config.digest)
        with self._lock("image-" + _hex(config.digest)):
            if (folder / "image.json").exists():
                return self.get(config.digest)
            self._unpack_missing(image)
            work = Path(tempfile.mkdtemp(prefix="image-", dir=self.root / "tmp"))
            # mkdtemp makes it private to us; the algorithm's (non-root) user must reach it.
            work.chmod(0o755)
            try:
                (work / "rootfs").mkdir()
                apply_layers(
                    (self.layer_dir(layer.diff_id) for layer in config.layers), work / "rootfs"
                )
                (work / "image.json").write_text(config.model_dump_json(indent=2))
                os.rename(work, folder)
            finally:
                if work.exists():
                    remove_tree(work)
        return self.get(config.digest)

    def _unpack_missing(self, image: ImageSource) -> None:
        missing = {
            layer.digest
            for layer in image.config.layers
            if not self.layer_dir(layer.diff_id).exists()
        }
        for layer, stream in image.layer_streams(missing):
            target = self.layer_dir(layer.diff_id)
            with self._lock("layer-" + _hex(layer.diff_id)):
                if target.exists():
                    continue  # another caller unpacked it meanwhile
                work = Path(tempfile.mkdtemp(prefix="layer-", dir=self.root / "tmp"))
                try:
                    unpack_layer(
                        stream,
                        layer,
                        work,
                        min_free_bytes=self.min_free_bytes,
                        min_free_inodes=self.min_free_inodes,
                    )
                    work.chmod(0o755)
                    os.rename(work, target)
                finally:
                    if work.exists():
                        remove_tree(work)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        descriptor = os.open(self.root / "locks" / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock
