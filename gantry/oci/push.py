"""Push an image with Gantry's runner layer to a registry, and pull one into the image store.

``push_with_runner(image, runner, registry, repository, tag)``: the image's layers stream from
its archive (a file or an S3 body, ``read_archive``) to the registry, the runner layer from its
file, then the new config and manifest (``gantry.oci.mutate``) go up; the manifest is stored by
tag and by digest. Blobs the repository already holds are not read at all.

``pull(registry, repository, reference, store)``: manifest, config and layers from the registry
into an ``ImageStore``, each digest checked, as the algorithm's own image (the settings the
runner layer moved aside are read back), so the local backend runs it after its archive is gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Protocol

from gantry.oci.archive import ArchiveImage
from gantry.oci.config import MEDIA_TYPE_LAYER_TAR, ImageConfig, Layer, parse_config
from gantry.oci.errors import ImageError
from gantry.oci.mutate import (
    MEDIA_TYPE_OCI_MANIFEST,
    LayerFile,
    algorithm_config,
    oci_manifest,
    sha256_digest,
    with_runner_layer,
)
from gantry.oci.registry import MANIFEST_TYPES, RegistryError
from gantry.oci.store import ImageStore, PreparedImage


class Registry(Protocol):
    """What pushing and pulling use of a registry: ``gantry.oci.registry.Registry`` (the OCI
    distribution API: ECR, docker-registry) or ``gantry.oci.layout.OciLayout`` (folders)."""

    @property
    def host(self) -> str: ...

    def blob_size(self, repository: str, digest: str) -> int | None: ...

    def push_blob(self, repository: str, digest: str, stream: IO[bytes]) -> int: ...

    def push_bytes(self, repository: str, data: bytes) -> str: ...

    def open_blob(self, repository: str, digest: str) -> AbstractContextManager[IO[bytes]]: ...

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str
    ) -> str: ...

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]: ...


@dataclass(frozen=True)
class PushedImage:
    registry: str  # host[:port]
    repository: str
    tag: str
    manifest_digest: str
    config_digest: str

    @property
    def reference(self) -> str:
        """``host/repository@sha256:…``: what a job definition names as its image."""
        return f"{self.registry}/{self.repository}@{self.manifest_digest}"


def push_with_runner(
    image: ArchiveImage, runner: LayerFile, registry: Registry, repository: str, tag: str
) -> PushedImage:
    """Push ``image`` with ``runner`` appended as its top layer; what was stored."""
    layers = image.config.layers
    sizes: dict[str, int] = {}
    for layer in layers:
        if layer.digest not in sizes:
            size = registry.blob_size(repository, layer.digest)
            if size is not None:
                sizes[layer.digest] = size
    missing = {layer.digest for layer in layers} - set(sizes)
    for layer, stream in image.layer_streams(missing):
        sizes[layer.digest] = registry.push_blob(repository, layer.digest, stream)
    if runner.digest not in sizes and registry.blob_size(repository, runner.digest) is None:
        with runner.path.open("rb") as stream:
            registry.push_blob(repository, runner.digest, stream)
    config_blob = with_runner_layer(image.config_blob, runner.digest)
    config_digest = registry.push_bytes(repository, config_blob)
    descriptors = [(layer.media_type, layer.digest, sizes[layer.digest]) for layer in layers]
    descriptors.append((MEDIA_TYPE_LAYER_TAR, runner.digest, runner.size))
    manifest = oci_manifest(config_blob, descriptors)
    digest = registry.put_manifest(repository, tag, manifest, MEDIA_TYPE_OCI_MANIFEST)
    registry.put_manifest(repository, digest, manifest, MEDIA_TYPE_OCI_MANIFEST)
    return PushedImage(registry.host, repository, tag, digest, config_digest)


@dataclass(frozen=True)
class RegistryImage:
    """An image in a registry, as ``ImageStore.add`` reads an archive: config and layers."""

    registry: Registry
    repository: str
    config: ImageConfig

    def layer_streams(self, wanted: set[str]) -> Iterator[tuple[Layer, IO[bytes]]]:
        seen: set[str] = set()
        for layer in self.config.layers:
            if layer.digest in wanted and layer.digest not in seen:
                seen.add(layer.digest)
                # The store checks the blob's digest and diff_id while it unpacks.
                with self.registry.open_blob(self.repository, layer.digest) as stream:
                    yield layer, stream


def read_image(registry: Registry, repository: str, reference: str) -> ImageConfig:
    """The typed config of ``repository:reference`` (a tag or a manifest digest)."""
    raw, media_type = registry.get_manifest(repository, reference)
    if media_type not in MANIFEST_TYPES:
        raise ImageError(
            f"{repository}:{reference} is a {media_type or 'manifest of unknown type'}, "
            "not one image manifest"
        )
    manifest = json.loads(raw)
    config_digest = manifest.get("config", {}).get("digest", "")
    with registry.open_blob(repository, config_digest) as stream:
        config_blob = stream.read(4 * 1024 * 1024 + 1)
    if sha256_digest(config_blob) != config_digest:
        raise RegistryError(f"The config {config_digest} of {repository} read back damaged")
    layers = [
        (str(entry.get("digest")), str(entry.get("mediaType", "")), entry.get("size"))
        for entry in manifest.get("layers") or []
    ]
    return parse_config(config_blob, config_digest, layers, [f"{repository}:{reference}"])


def pull(registry: Registry, repository: str, reference: str, store: ImageStore) -> PreparedImage:
    """Unpack ``repository:reference`` into ``store``; its ``oci:sha256:<config digest>``
    reference then runs on the local backend like an imported archive."""
    config = algorithm_config(read_image(registry, repository, reference))
    return store.add(RegistryImage(registry, repository, config))
