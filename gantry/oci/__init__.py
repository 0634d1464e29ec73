"""OCI and docker-save images on one machine without a container engine.

- ``read_archive(path or opener)``: the one runnable image of an archive (a file, or a
  stream opened twice, e.g. from S3), its typed ``ImageConfig``;
- ``ImageStore(root).prepare(archive or ref)``: layers unpacked once per digest, a root
  filesystem per image (``PreparedImage``);
- ``ImageError``: every refusal, with a message the image's author can act on.

Standard library and pydantic only, so the import pipeline can reuse it anywhere.
"""

from gantry.oci.archive import ArchiveImage, read_archive
from gantry.oci.config import ImageConfig, Layer
from gantry.oci.errors import ImageError
from gantry.oci.store import ImageStore, PreparedImage, image_ref, is_image_ref

__all__ = [
    "ArchiveImage",
    "ImageConfig",
    "ImageError",
    "ImageStore",
    "Layer",
    "PreparedImage",
    "image_ref",
    "is_image_ref",
    "read_archive",
]
