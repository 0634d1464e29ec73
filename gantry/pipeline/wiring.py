"""Connect job creation to the pipeline: validate pending inputs, or provision.

Provisioning copies every input (a study may be gigabytes) and submits to the compute
service: the API Lambda must answer within API Gateway's 29 s, so there it only queues a
``start-job`` message on the uploads queue, whose handler (on_upload) provisions. Other
functions, already off a request's path, provision at once.
"""

from __future__ import annotations

from gantry.context import Context, JobCatalog
from gantry.job_states import JobStatus
from gantry.jobs import Job

# Each message is built from its model in gantry.messages (which holds the kinds' names), imported
# when a message is sent: the API's cold start does not build the models.


def validate_inputs_message(job_pk: str) -> str:
    from gantry.messages import ValidateInputs

    return ValidateInputs(job=job_pk).model_dump_json()


def start_job_message(job_pk: str) -> str:
    from gantry.messages import StartJob

    return StartJob(job=job_pk).model_dump_json()


def import_image_message(image_pk: str) -> str:
    from gantry.messages import ImportImage

    return ImportImage(image=image_pk).model_dump_json()


def import_item_values_message(item_pk: str) -> str:
    from gantry.messages import ImportItemValues

    return ImportItemValues(item=item_pk).model_dump_json()


def import_upload_session_message(session_pk: str) -> str:
    from gantry.messages import ImportUploadSession

    return ImportUploadSession(session=session_pk).model_dump_json()


def import_model_message(model_pk: str) -> str:
    from gantry.messages import ImportModel

    return ImportModel(model=model_pk).model_dump_json()


def import_bioimageio_message(algorithm_pk: str) -> str:
    from gantry.messages import ImportBioimageio

    return ImportBioimageio(algorithm=algorithm_pk).model_dump_json()


def on_job_created(ctx: Context, job: Job, catalog: JobCatalog | None = None) -> None:
    if job.status is JobStatus.VALIDATING_INPUTS:
        # Uploads are checked (and images imported) by the upload handler, off the API path.
        ctx.clients.sqs.send_message(
            QueueUrl=ctx.settings.uploads_queue_url, MessageBody=validate_inputs_message(job.pk)
        )
    elif job.status is JobStatus.PENDING:
        from gantry.pipeline.provision import start_job

        start_job(ctx, job.pk, created=job, catalog=catalog)


def on_job_created_queued(ctx: Context, job: Job, catalog: JobCatalog | None = None) -> None:
    """As ``on_job_created``, but a ready job is provisioned by the queue's handler."""
    if job.status is JobStatus.PENDING:
        ctx.clients.sqs.send_message(
            QueueUrl=ctx.settings.uploads_queue_url, MessageBody=start_job_message(job.pk)
        )
    else:
        on_job_created(ctx, job, catalog)


def install(ctx: Context, *, provision_on_queue: bool = False) -> Context:
    """Wire job creation; ``provision_on_queue``: for a request's path (the API)."""
    listener = on_job_created_queued if provision_on_queue else on_job_created
    if listener not in ctx.job_listeners:
        ctx.job_listeners.append(listener)
    return ctx
