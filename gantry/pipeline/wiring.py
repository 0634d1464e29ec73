"""Connect job creation to the pipeline: validate pending inputs, or provision at once."""

from __future__ import annotations

import json

from gantry.context import Context
from gantry.job_states import JobStatus
from gantry.jobs import Job

VALIDATE_INPUTS = "validate-inputs"


def validate_inputs_message(job_pk: str) -> str:
    return json.dumps({"gantry": VALIDATE_INPUTS, "job": job_pk})


def on_job_created(ctx: Context, job: Job) -> None:
    if job.status is JobStatus.VALIDATING_INPUTS:
        # Uploads are checked (and images imported) by the upload handler, off the API path.
        ctx.clients.sqs.send_message(
            QueueUrl=ctx.settings.uploads_queue_url, MessageBody=validate_inputs_message(job.pk)
        )
    elif job.status is JobStatus.PENDING:
        from gantry.pipeline.provision import start_job

        start_job(ctx, job.pk)


def install(ctx: Context) -> Context:
    if on_job_created not in ctx.job_listeners:
        ctx.job_listeners.append(on_job_created)
    return ctx
