"""Cancelling a job: it ends Cancelled, its compute job is stopped, the event bus is told.

The status changes first, with a conditional write: a job that ended meanwhile (a completion
racing with the cancel) keeps the state it reached, and every later event for the cancelled
job is ignored, since a terminal job never changes. A queued job is never claimed by the
provisioner once cancelled; a job being submitted at that moment has its new compute job
stopped by the provisioner (``_record_submission``). Repeating a cancel is harmless: the
backend's stop is asked again (it ignores finished and unknown jobs) and nothing is announced
twice.
"""

from __future__ import annotations

import logging

from gantry.context import Context
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.pipeline.lifecycle import publish

logger = logging.getLogger(__name__)
CANCELLED_MESSAGE = "The job was cancelled"


def cancel_job(ctx: Context, job_pk: str, *, by: str) -> Job:
    """Cancel the job if it is unfinished; return the job as it now is."""
    job, changed = ctx.store.jobs.cancel(job_pk, message=CANCELLED_MESSAGE)
    if job.status is not JobStatus.CANCELLED:
        return job  # it ended first: one final state, the one it reached
    if job.compute_job_id:
        ctx.compute.cancel(job.compute_job_id)
    if changed:
        logger.info("job %s cancelled by %s", job.pk, by)
        publish(ctx, job)
    return job
