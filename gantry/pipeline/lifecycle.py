"""The end of a job: its final state written once, and announced on the event bus.

Provisioning, input validation, the compute callback, the sweeper and cancelling all end jobs
through here, so a job ends one way whoever ends it: a conditional write that only the job's
current attempt can make, then one "Gantry Job Succeeded/Failed" event for downstream
consumers (the drop folder, users' own rules).
"""

from __future__ import annotations

import logging
from typing import Any

from gantry import resources
from gantry.algorithms import Algorithm
from gantry.context import Context
from gantry.interfaces import Interface
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.messages import EndedOutput, JobEnded
from gantry.services import catalog

logger = logging.getLogger(__name__)


def finish(
    ctx: Context,
    job: Job,
    status: JobStatus,
    changes: dict[str, Any],
    loaded: tuple[Algorithm, dict[str, Interface]] | None = None,
) -> Job | None:
    """End the job (if this attempt is still current) and announce it. ``loaded``: the job's
    algorithm and its sockets, when the caller has read them already."""
    done = ctx.store.jobs.transition(job.pk, attempt=job.attempt, status=status, changes=changes)
    if done is not None:
        publish(ctx, done, loaded)
    return done


def publish(
    ctx: Context, job: Job, loaded: tuple[Algorithm, dict[str, Interface]] | None = None
) -> None:
    """Tell downstream consumers (drop folder, users' rules) that a job ended."""
    detail = job_event_detail(ctx, job, loaded)
    detail_type = (
        resources.DETAIL_TYPE_JOB_SUCCEEDED
        if job.status is JobStatus.SUCCESS
        else resources.DETAIL_TYPE_JOB_FAILED
    )
    try:
        ctx.clients.events.put_events(
            Entries=[
                {
                    "Source": resources.EVENT_SOURCE,
                    "DetailType": detail_type,
                    "Detail": detail.model_dump_json(),
                    "EventBusName": ctx.settings.event_bus_name,
                }
            ]
        )
    except Exception:  # the job is final either way; a lost announcement must not undo it
        logger.exception("could not publish the end of job %s", job.pk)


def job_event_detail(
    ctx: Context, job: Job, loaded: tuple[Algorithm, dict[str, Interface]] | None = None
) -> JobEnded:
    """The detail of the "Gantry Job …" event that announces the end of ``job``."""
    if loaded is None:
        algorithm = ctx.store.algorithms.get(job.algorithm)
        loaded = algorithm, catalog.sockets_of(ctx, [algorithm])
    algorithm, sockets = loaded
    outputs = []
    for value in job.outputs:
        socket = sockets.get(value.socket)
        image_keys = [f.key for f in ctx.store.images.get(value.image).files] if value.image else []
        outputs.append(
            EndedOutput(
                socket=value.socket,
                relative_path=socket.relative_path if socket else None,
                value=value.value,
                key=value.file,
                image=value.image,
                image_keys=image_keys,
            )
        )
    return JobEnded(
        job=job.pk,
        algorithm=job.algorithm,
        algorithm_slug=algorithm.slug,
        status=job.status.label,
        error_message=job.error_message,
        source=job.source,
        source_ref=job.source_ref,
        exec_duration=job.exec_duration,
        invoke_duration=job.invoke_duration,
        outputs=outputs,
    )


def fail(ctx: Context, job_pk: str, attempt: int, message: str) -> Job | None:
    """Fail the job with ``message`` if ``attempt`` is still its current one."""
    job = ctx.store.jobs.find(job_pk)
    if job is None or job.attempt != attempt:
        return None
    return finish(ctx, job, JobStatus.FAILURE, {"error_message": message})
