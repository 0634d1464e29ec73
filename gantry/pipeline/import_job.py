"""Image imports too large or too long for the import function, run as a Batch job on the CPU
queue (docs/deploy.md "Importing an algorithm image").

The import function has 15 minutes. It hands an import over when the archive is larger than
``settings.import_job_threshold_bytes``, or when it runs out of time while it reads or pushes
the archive: it submits a job of ``settings.import_job_definition`` on the CPU queue, whose
container runs ``python -m gantry.pipeline.import_job IMAGE_PK``, the same import code with no
deadline. The image is Queued again meanwhile, its status text naming the Batch job; layers the
function already pushed are not sent again (the push skips blobs the repository holds).

A job that ends without finishing the import (killed, out of its own time limit, its image not
found) is reported by Batch's state-change event: ``on_job_event`` calls ``job_ended``, which
fails the import with Batch's reason, so an image is never left Queued or Started for good.
Without an import job definition every import runs in the function, and one that runs out of
time fails with a message saying so.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gantry.algorithms import AlgorithmImage, ImportStatus
from gantry.context import Context
from gantry.errors import NotFound
from gantry.settings import Settings

if TYPE_CHECKING:
    from gantry.compute.events import ComputeState

log = logging.getLogger(__name__)

# The job definition the stack deploys when it has an importer image (infra/image_import.py).
DEFINITION_NAME = "gantry-importer"
COMMAND = ("python", "-m", "gantry.pipeline.import_job", "Ref::image")
# Batch job names: not a compute job's (gantry-<job pk>-<attempt>), so the job callback
# leaves them alone.
JOB_NAME_PREFIX = "gantry-import-"
HANDED_OVER_PREFIX = "Importing as a job on the CPU queue"
HANDED_OVER = HANDED_OVER_PREFIX + " (Batch job {job_id}): {why}"
TOO_LARGE = "the archive ({size:.1f} GB) is larger than the import function takes ({limit:.1f} GB)"
OUT_OF_TIME = "the import function ran out of time"
JOB_ENDED = "The import job on the CPU queue (Batch job {job_id}) ended without importing the image"


class HandOver(Exception):
    """The import continues as a Batch job; the message says why."""


def enabled(settings: Settings) -> bool:
    return bool(settings.import_job_definition)


def too_large(settings: Settings, size: int) -> bool:
    """Whether an archive of ``size`` bytes is imported by a job rather than the function."""
    return enabled(settings) and size > settings.import_job_threshold_bytes


def too_large_reason(settings: Settings, size: int) -> str:
    return TOO_LARGE.format(
        size=size / 1024**3, limit=settings.import_job_threshold_bytes / 1024**3
    )


def job_name(image_pk: str) -> str:
    return f"{JOB_NAME_PREFIX}{image_pk}"


def handed_over(image: AlgorithmImage) -> bool:
    """Whether a job has the import (the function has nothing to do with it any more)."""
    return image.import_status is ImportStatus.QUEUED and image.status_message.startswith(
        HANDED_OVER_PREFIX
    )


def hand_over(ctx: Context, image_pk: str, why: str) -> AlgorithmImage:
    """Submit the import of ``image_pk`` as a job on the CPU queue; the image is Queued, its
    status naming the job (unless it ended meanwhile: a cancel wins)."""
    settings = ctx.settings
    answer = ctx.clients.batch.submit_job(
        jobName=job_name(image_pk),
        jobQueue=settings.batch_job_queue_cpu,
        jobDefinition=settings.import_job_definition,
        # The definition's command: python -m gantry.pipeline.import_job Ref::image
        parameters={"image": image_pk},
    )
    job_id = str(answer["jobId"])
    log.info("image %s: import handed over to Batch job %s (%s)", image_pk, job_id, why)
    message = HANDED_OVER.format(job_id=job_id, why=why)

    def queued(current: AlgorithmImage) -> AlgorithmImage:
        if current.import_status.is_finished:
            return current
        return current.model_copy(
            update={"import_status": ImportStatus.QUEUED, "status_message": message}
        )

    return ctx.store.algorithms.update_image(image_pk, queued)


def job_ended(ctx: Context, state: ComputeState) -> AlgorithmImage | None:
    """Apply a Batch state change of an import job: a job that ended while its image's import
    had not, fails the import with Batch's reason. None for any other job or state."""
    if not state.name.startswith(JOB_NAME_PREFIX) or state.status not in ("failed", "succeeded"):
        return None
    image_pk = state.name.removeprefix(JOB_NAME_PREFIX)
    message = JOB_ENDED.format(job_id=state.compute_job_id)
    if state.reason:
        message += f": {state.reason}"

    def failed(current: AlgorithmImage) -> AlgorithmImage:
        # Only an import this job had: a retried import by the function is not this job's.
        if current.import_status not in (
            ImportStatus.QUEUED,
            ImportStatus.STARTED,
            ImportStatus.RE_QUEUED,
        ) or (current.import_status is ImportStatus.QUEUED and not handed_over(current)):
            return current
        return current.model_copy(
            update={"import_status": ImportStatus.FAILED, "status_message": message}
        )

    try:
        image = ctx.store.algorithms.update_image(image_pk, failed)
    except NotFound:
        return None
    if image.import_status is ImportStatus.FAILED and image.status_message == message:
        if image.sha256:
            ctx.store.algorithms.release_image_sha256(image, image.sha256)
        log.warning("image %s: %s", image_pk, message)
    return image


def run(ctx: Context, image_pk: str) -> AlgorithmImage | None:
    """The job's work: the import, with no deadline."""
    from gantry.pipeline.image_import import import_image
    from gantry.pipeline.registry_publisher import ensure_publisher

    publisher = ensure_publisher(ctx)
    if publisher is not None:
        publisher.deadline = None
    return import_image(ctx, image_pk, in_job=True)


def main(argv: Sequence[str] | None = None, ctx: Context | None = None) -> int:
    """``python -m gantry.pipeline.import_job IMAGE_PK``: 0 when the import ended (Completed,
    or Failed with its reason in the image's status). An infrastructure error raises: the job
    fails, and its state-change event fails the import (``job_ended``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0]:
        print("usage: python -m gantry.pipeline.import_job IMAGE_PK", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO)
    if ctx is None:
        from gantry.pipeline.wiring import install
        from gantry.settings import get_settings

        ctx = install(Context.create(get_settings()))
    image = run(ctx, args[0])
    if image is None:
        log.info("image %s: nothing to import", args[0])
        return 0
    log.info("image %s: %s %s", image.pk, image.import_status.value, image.status_message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
