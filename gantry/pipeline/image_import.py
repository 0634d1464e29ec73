"""Import of an uploaded container image archive into an algorithm (the upload handler's work).

``import_image(ctx, pk)`` reads the uploaded object as a stream opened as often as the reader
needs (``gantry.oci.read_archive(opener)``: never the whole archive in memory or on disk),
checks it holds exactly one runnable linux/amd64 image that does not run as root, refuses an
image this algorithm already has (same config sha256), and hands the archive to the
deployment's publisher (``ctx.image_publisher``: the local stack unpacks it into its image
store; on AWS the registry push). A completed import becomes the algorithm's desired version.
Every refusal ends the import as Failed with a status text its author can act on; only
infrastructure errors raise (the queue retries them, and the retry is "Re-Queued").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import IO, Any

from gantry.algorithms import MAX_IMAGE_ARCHIVE_BYTES, AlgorithmImage, ImportStatus
from gantry.context import Context
from gantry.errors import NotFound

log = logging.getLogger(__name__)

FINISHED = frozenset({ImportStatus.COMPLETED, ImportStatus.FAILED, ImportStatus.CANCELLED})
DUPLICATE = (
    "This container image has already been uploaded to this algorithm (sha256 {digest}): "
    "make the existing image the desired version, or upload a new version"
)
NO_PUBLISHER = (
    "This deployment has no image registry configured, so the image cannot be stored; "
    "ask its operator"
)
# (ctx, the image record, the archive) -> the image reference the compute backend runs.
Publisher = Callable[[Context, AlgorithmImage, Any], str]


class ImportRefused(Exception):
    """The archive cannot become this algorithm's image; the message is the status text."""


def size_problem(size: int | None) -> str | None:
    if size is not None and size > MAX_IMAGE_ARCHIVE_BYTES:
        return (
            f"The image archive is {size / 1024**3:.1f} GB; the limit is "
            f"{MAX_IMAGE_ARCHIVE_BYTES // 1024**3} GB: make the image smaller (fewer or "
            "smaller layers, no build tools or caches)"
        )
    return None


def import_image(ctx: Context, pk: str) -> AlgorithmImage | None:
    """Run the import of image ``pk``; None when there is nothing (left) to do."""
    try:
        image = ctx.store.algorithms.get_image(pk)
    except NotFound:
        log.info("image %s is gone; nothing to import", pk)
        return None
    if image.import_status in FINISHED or image.user_upload is None:
        return None
    # A message seen again while Started: the handler before this one did not finish.
    status = (
        ImportStatus.RE_QUEUED
        if image.import_status is ImportStatus.STARTED
        else ImportStatus.STARTED
    )
    _set(ctx, pk, import_status=status, status_message="")
    try:
        found = _validate_and_publish(ctx, image)
    except ImportRefused as refusal:
        return _set(ctx, pk, import_status=ImportStatus.FAILED, status_message=str(refusal))
    return ctx.store.algorithms.update_image(
        pk,
        lambda current: current.model_copy(
            update={
                **found,
                "import_status": ImportStatus.COMPLETED,
                "status_message": "",
                "is_desired_version": True,
            }
        ),
    )


def _validate_and_publish(ctx: Context, image: AlgorithmImage) -> dict[str, Any]:
    from gantry.oci import ImageError, read_archive

    upload = ctx.store.uploads.get(str(image.user_upload))
    bucket = ctx.settings.bucket_name
    s3 = ctx.clients.s3
    size = s3.head_object(Bucket=bucket, Key=upload.key)["ContentLength"]
    problem = size_problem(size)
    if problem:
        raise ImportRefused(problem)

    def opener() -> IO[bytes]:
        return s3.get_object(Bucket=bucket, Key=upload.key)["Body"]

    try:
        archive = read_archive(opener)
    except ImageError as error:
        _set(ctx, image.pk, is_manifest_valid=False)
        raise ImportRefused(f"{upload.filename}: {error}") from None
    config = archive.config
    problems = config.problems()
    if problems:
        _set(ctx, image.pk, is_manifest_valid=False)
        raise ImportRefused("; ".join(problems))
    _set(ctx, image.pk, is_manifest_valid=True, sha256=config.digest)
    for other in ctx.store.algorithms.images_of(image.algorithm):
        if (
            other.pk != image.pk
            and other.sha256 == config.digest
            and other.import_status is not ImportStatus.FAILED
        ):
            raise ImportRefused(DUPLICATE.format(digest=config.digest))
    publisher: Publisher | None = ctx.image_publisher
    if publisher is None:
        raise ImportRefused(NO_PUBLISHER)
    try:
        reference = publisher(ctx, image, archive)
    except ImageError as error:
        raise ImportRefused(f"{upload.filename}: {error}") from None
    return {
        "image": reference,
        "entrypoint": config.entrypoint,
        "command": config.cmd,
        "sha256": config.digest,
        "is_in_registry": True,
    }


def _set(ctx: Context, pk: str, **fields: Any) -> AlgorithmImage:
    return ctx.store.algorithms.update_image(pk, lambda current: current.model_copy(update=fields))


def store_publisher(root: Any) -> Publisher:
    """The local stack's publisher: layers unpacked into the image store at ``root``."""

    def publish(ctx: Context, image: AlgorithmImage, archive: Any) -> str:
        from gantry.oci import ImageStore

        prepared = ImageStore(root).add(archive)
        prepared.check_reachable()
        return prepared.ref

    return publish
