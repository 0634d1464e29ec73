"""Import of an uploaded container image archive into an algorithm (the upload handler's work).

``import_image(ctx, pk)`` reads the uploaded object as a stream opened as often as the reader
needs (``gantry.oci.read_archive(opener)``: never the whole archive in memory or on disk),
checks it holds exactly one runnable linux/amd64 image that does not run as root, refuses an
image this algorithm already has (same config sha256: a conditional write claims it, so of two
imports of one image at once one completes), and hands the archive to the deployment's
publisher (``ctx.image_publisher``: ``registry_publisher`` pushes it with the runner layer to a
registry, the local stack's own or ECR). A completed import becomes the algorithm's desired
version. An editor may cancel an import that has not ended: each step leaves a cancelled image
as it is, and an image pushed meanwhile is deleted again (``ctx.image_remover``).
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
from gantry.uploads import too_large

log = logging.getLogger(__name__)

DUPLICATE = (
    "This container image has already been uploaded to this algorithm (sha256 {digest}): "
    "make the existing image the desired version, or upload a new version"
)
MAKE_IT_SMALLER = "make the image smaller (fewer or smaller layers, no build tools or caches)"
TOO_LONG_TO_READ = (
    "The import did not finish within the import function's time limit while it read the "
    f"archive: the image is too large to import here; {MAKE_IT_SMALLER}"
)
NO_PUBLISHER = (
    "This deployment has no image registry configured, so the image cannot be stored; "
    "ask its operator"
)
# (ctx, the image record, the archive) -> the image reference the compute backend runs.
Publisher = Callable[[Context, AlgorithmImage, Any], str]
# (ctx, the image record): its image is deleted from the registry the publisher pushed it to.
Remover = Callable[[Context, AlgorithmImage], None]


class ImportRefused(Exception):
    """The archive cannot become this algorithm's image; the message is the status text."""


def size_problem(size: int | None) -> str | None:
    return too_large("The image archive", size, MAX_IMAGE_ARCHIVE_BYTES, MAKE_IT_SMALLER)


def import_image(ctx: Context, pk: str, *, in_job: bool = False) -> AlgorithmImage | None:
    """Run the import of image ``pk``; None when there is nothing (left) to do. ``in_job``: in
    the Batch import job, which takes any size and has no deadline (the import function hands
    larger or longer imports over to it: ``gantry.pipeline.import_job``)."""
    from gantry.pipeline import import_job

    try:
        image = ctx.store.algorithms.get_image(pk)
    except NotFound:
        log.info("image %s is gone; nothing to import", pk)
        return None
    if image.import_status.is_finished or image.user_upload is None:
        return None
    if not in_job and import_job.handed_over(image):
        return None  # a message seen again after the hand-over: the job has it
    # A message seen again while Started: the handler before this one did not finish.
    status = (
        ImportStatus.RE_QUEUED
        if image.import_status is ImportStatus.STARTED
        else ImportStatus.STARTED
    )
    if _set(ctx, pk, import_status=status, status_message="").import_status.is_finished:
        return None  # cancelled meanwhile
    try:
        found = _validate_and_publish(ctx, image, in_job=in_job)
    except import_job.HandOver as why:
        return import_job.hand_over(ctx, pk, str(why))
    except ImportRefused as refusal:
        failed = _set(ctx, pk, import_status=ImportStatus.FAILED, status_message=str(refusal))
        if failed.sha256:
            ctx.store.algorithms.release_image_sha256(failed, failed.sha256)
        return failed
    # The newest completed image becomes the desired version (the others stop being it).
    done = _set(
        ctx,
        pk,
        **found,
        import_status=ImportStatus.COMPLETED,
        status_message="",
        is_desired_version=True,
    )
    if done.import_status is ImportStatus.CANCELLED:
        # Cancelled while it was being pushed: what was pushed goes again.
        remove_from_registry(ctx, done.model_copy(update={"image": found["image"]}))
        ctx.store.algorithms.release_image_sha256(done, found["sha256"])
    return done


def _validate_and_publish(ctx: Context, image: AlgorithmImage, *, in_job: bool) -> dict[str, Any]:
    from gantry.pipeline import import_job
    from gantry.pipeline.registry_publisher import ImportTimedOut, timed_stream

    upload = ctx.store.uploads.get(str(image.user_upload))
    bucket = ctx.settings.bucket_name
    s3 = ctx.clients.s3
    size = s3.head_object(Bucket=bucket, Key=upload.key)["ContentLength"]
    problem = size_problem(size)
    if problem:
        raise ImportRefused(problem)
    if not in_job and import_job.too_large(ctx.settings, size):
        raise import_job.HandOver(import_job.too_large_reason(ctx.settings, size))
    # The function's deadline (its handler sets it) covers reading the archive as well as
    # pushing it; the job has none.
    deadline = None if in_job else getattr(ctx.image_publisher, "deadline", None)

    def opener() -> IO[bytes]:
        body = s3.get_object(Bucket=bucket, Key=upload.key)["Body"]
        return body if deadline is None else timed_stream(body, deadline, TOO_LONG_TO_READ)

    try:
        return _publish(ctx, image, upload.filename, opener)
    except ImportTimedOut as error:
        if import_job.enabled(ctx.settings):
            raise import_job.HandOver(import_job.OUT_OF_TIME) from None
        raise ImportRefused(str(error)) from None


def _publish(
    ctx: Context, image: AlgorithmImage, filename: str, opener: Callable[[], IO[bytes]]
) -> dict[str, Any]:
    """Check the archive's image and hand it to the publisher; the image's new fields."""
    from gantry.oci import ImageError, read_archive
    from gantry.pipeline.registry_publisher import ImportTimedOut

    try:
        archive = read_archive(opener)
    except ImportTimedOut:
        raise
    except ImageError as error:
        _set(ctx, image.pk, is_manifest_valid=False)
        raise ImportRefused(f"{filename}: {error}") from None
    config = archive.config
    problems = config.problems()
    if problems:
        _set(ctx, image.pk, is_manifest_valid=False)
        raise ImportRefused("; ".join(problems))
    _set(ctx, image.pk, is_manifest_valid=True, sha256=config.digest)
    # A conditional write: of two imports of the same image, one holds the claim.
    if ctx.store.algorithms.claim_image_sha256(image, config.digest) is not None:
        raise ImportRefused(DUPLICATE.format(digest=config.digest))
    publisher: Publisher | None = ctx.image_publisher
    if publisher is None:
        raise ImportRefused(NO_PUBLISHER)
    try:
        reference = publisher(ctx, image, archive)
    except ImportTimedOut:
        raise
    except ImageError as error:
        raise ImportRefused(f"{filename}: {error}") from None
    return {
        "image": reference,
        "entrypoint": config.entrypoint,
        "command": config.cmd,
        "sha256": config.digest,
        "is_in_registry": True,
    }


def _set(ctx: Context, pk: str, **fields: Any) -> AlgorithmImage:
    """Update the image unless its import has ended (a cancel won meanwhile)."""

    def change(current: AlgorithmImage) -> AlgorithmImage:
        if current.import_status.is_finished:
            return current
        return current.model_copy(update=fields)

    return ctx.store.algorithms.update_image(pk, change)


def remove_from_registry(ctx: Context, image: AlgorithmImage) -> None:
    """Delete the image from the registry it was pushed to: the local stack's at once, the
    deployment's ECR repository through the import function (the one principal that may
    delete there); an image elsewhere is left alone."""
    remover: Remover | None = ctx.image_remover
    if remover is not None:
        remover(ctx, image)
        return
    from gantry.pipeline.registry_publisher import queue_deletion

    queue_deletion(ctx, image)


def registry_publisher(registry: Any, runner: Any) -> Publisher:
    """Push the image with ``runner`` (a ``LayerFile``) appended to ``registry`` (a
    ``Registry``, or the one-machine ``OciLayout``), one repository per algorithm, tagged as
    on ECR (``image-<pk>``); the reference is by manifest digest
    (``host/repository@sha256:…``)."""

    def publish(ctx: Context, image: AlgorithmImage, archive: Any) -> str:
        from gantry.oci.push import push_with_runner
        from gantry.pipeline.registry_publisher import image_tag

        repository = repository_of(image)
        pushed = push_with_runner(archive, runner, registry, repository, image_tag(image.pk))
        return pushed.reference

    return publish


def registry_remover(registry: Any) -> Remover:
    """Delete a pushed image's manifest (by digest) from ``registry``: only from the image's
    own algorithm's repository, where its import pushed it (a reference registered by hand
    may name another algorithm's image, which is not the remover's to delete)."""

    def remove(ctx: Context, image: AlgorithmImage) -> None:
        from gantry.oci.registry import split_reference

        pushed = split_reference(image.image)
        if pushed is not None and pushed[1] == repository_of(image):
            registry.delete_manifest(pushed[1], pushed[2])

    return remove


def repository_of(image: AlgorithmImage) -> str:
    return repository_of_algorithm(image.algorithm)


def repository_of_algorithm(algorithm_pk: str) -> str:
    """The repository an algorithm's images are pushed to in a registry of the local stack."""
    return f"algorithms/{algorithm_pk}"


def store_publisher(root: Any) -> Publisher:
    """The local stack's publisher: layers unpacked into the image store at ``root``."""

    def publish(ctx: Context, image: AlgorithmImage, archive: Any) -> str:
        from gantry.oci import ImageStore

        prepared = ImageStore(root).add(archive)
        prepared.check_reachable()
        return prepared.ref

    return publish


def purge_ended_imports(ctx: Context, before: str) -> list[str]:
    """Remove the images whose import failed or was cancelled ``before`` (an ISO time: the
    sweeper's ``import_retention_cutoff``); their pks."""
    removed = []
    for image in ctx.store.algorithms.ended_imports_before(before):
        ctx.store.algorithms.delete_image(image)
        removed.append(image.pk)
    if removed:
        log.info("removed %s image imports that ended before %s", len(removed), before)
    return removed
