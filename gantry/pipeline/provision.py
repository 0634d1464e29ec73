"""Provisioning: put a queued job's inputs in place, write its invocation, submit it.

Inputs are copied S3 to S3 (never through this process's memory) to
``io/<job>/<attempt>/input/<relative_path>``, next to ``inputs.json``: the job's input socket
values exactly as the API shows them in the job's ``inputs`` (grand-challenge writes the same
file, and algorithms built for it look their inputs up there by ``socket.slug`` or
``interface.slug``). The invocation (sagemaker-shim's task shape)
goes to ``io/<job>/<attempt>/invocation.json`` and the compute backend runs the runner on it.
Capacity and throttling errors put the job back in the queue with a growing delay instead of
failing it; the sweeper submits it again when the delay has passed.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from gantry import contract, resources, shapes, timeutil
from gantry.algorithms import Algorithm
from gantry.aws import copy_object
from gantry.context import Context, JobCatalog
from gantry.interfaces import Interface
from gantry.job_states import JobStatus, can_transition
from gantry.jobs import Job
from gantry.kinds import spec
from gantry.pipeline.lifecycle import fail
from gantry.services import catalog as catalog_service
from gantry.urls import Urls

logger = logging.getLogger(__name__)
BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 900
STARTABLE = (JobStatus.PENDING, JobStatus.RETRY)
# grand-challenge's name for the list of input socket values at the input root.
INPUTS_JSON = "inputs.json"


def build_invocation(
    ctx: Context, job: Job, sockets: dict[str, Interface], algorithm: Algorithm | None = None
) -> contract.Invocation:
    """``algorithm``: the job's, when the caller has read it already."""
    bucket = ctx.settings.bucket_name
    s3 = ctx.clients.s3
    base = resources.io_input_prefix(job.pk, job.attempt)
    inputs: list[contract.InvocationInput] = []
    for value in job.inputs:
        socket = sockets[value.socket]
        if value.image:
            image = ctx.store.images.get(value.image)
            source = next((f for f in image.files if f.image_type == "MHD"), image.files[0])
            relative_path = f"{socket.relative_path}/{source.filename}"
            key = base + relative_path
            copy_object(s3, bucket, source.key, key)
        elif value.file:
            relative_path = socket.relative_path
            key = base + relative_path
            copy_object(s3, bucket, value.file, key)
        else:
            relative_path = socket.relative_path
            key = base + relative_path
            body = json.dumps(value.value, allow_nan=False).encode()
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        inputs.append(
            contract.InvocationInput(
                relative_path=relative_path, bucket_name=bucket, bucket_key=key
            )
        )
    inputs.append(_put_inputs_json(ctx, job, sockets, base + INPUTS_JSON))
    algorithm = algorithm or ctx.store.algorithms.get(job.algorithm)
    outputs = [
        contract.ExpectedOutput(
            slug=slug,
            kind=sockets[slug].kind.value,
            relative_path=sockets[slug].relative_path,
            schemas=[
                schema
                for schema in (spec(sockets[slug].kind).schema, sockets[slug].extra_schema)
                if schema
            ],
        )
        for slug in algorithm.interfaces[job.socket_set].outputs
    ]
    return contract.Invocation(
        pk=job.pk,
        inputs=inputs,
        output_bucket_name=bucket,
        output_prefix=resources.io_output_prefix(job.pk, job.attempt),
        timeout=job.time_limit,
        outputs=outputs,
        model=_model_of(ctx, job),
    )


def _model_of(ctx: Context, job: Job) -> contract.InvocationModel | None:
    """The model the job was created with (never the algorithm's desired one of now), copied
    S3 to S3 beside the job's inputs: the runner's credentials reach only the job's own
    prefix. The runner extracts it to /opt/ml/model and refuses bytes with another sha256."""
    if job.algorithm_model is None:
        return None
    model = ctx.store.models.get(job.algorithm_model)
    if model.key is None:
        raise ValueError(f"algorithm model {model.pk} of job {job.pk} has no tarball")
    bucket = ctx.settings.bucket_name
    key = resources.io_model_key(job.pk, job.attempt)
    copy_object(ctx.clients.s3, bucket, model.key, key)
    return contract.InvocationModel(
        bucket_name=bucket, bucket_key=key, sha256=job.algorithm_model_sha256
    )


def _put_inputs_json(
    ctx: Context, job: Job, sockets: dict[str, Interface], key: str
) -> contract.InvocationInput:
    # The same serializer as the API's job detail, so both show the same objects.
    urls = Urls(ctx.settings.api_base_url or "https://localhost/api/v1/")
    values = [shapes.socket_value(value, job.pk, sockets, urls) for value in job.inputs]
    bucket = ctx.settings.bucket_name
    body = json.dumps(values, allow_nan=False).encode()
    ctx.clients.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return contract.InvocationInput(relative_path=INPUTS_JSON, bucket_name=bucket, bucket_key=key)


def start_job(
    ctx: Context,
    job_pk: str,
    *,
    created: Job | None = None,
    catalog: JobCatalog | None = None,
) -> None:
    """Provision and submit a queued job; a no-op for a job that is not waiting to start.

    ``created`` and ``catalog``: the job as its creator has just stored it, and the
    algorithm, image and sockets it read for that, when provisioning follows in the same
    process; neither is read again (the claim's conditional write finds out if the job has
    changed since)."""
    from gantry.compute import CapacityError, SubmitError

    job = created if created is not None else ctx.store.jobs.find(job_pk)
    if job is None or job.status not in STARTABLE:
        return
    if job.not_before and timeutil.parse_iso(job.not_before) > timeutil.now():
        return
    attempt = job.attempt
    # Claim the job: of two concurrent provisioners only one gets past this write.
    claimed = ctx.store.jobs.transition(job_pk, attempt=attempt, status=JobStatus.PROVISIONING)
    if claimed is None:
        return
    try:
        if catalog is None:
            image = ctx.store.algorithms.get_image(job.algorithm_image)
            algorithm = ctx.store.algorithms.get(job.algorithm)
            sockets = catalog_service.sockets_of(ctx, [algorithm])
        else:
            image, algorithm, sockets = catalog.image, catalog.algorithm, catalog.sockets
        invocation = build_invocation(ctx, claimed, sockets, algorithm)
        key = resources.invocation_key(job_pk, attempt)
        ctx.clients.s3.put_object(
            Bucket=ctx.settings.bucket_name,
            Key=key,
            Body=invocation.model_dump_json().encode(),
            ContentType="application/json",
        )
        compute_id = ctx.compute.submit(claimed, image, f"s3://{ctx.settings.bucket_name}/{key}")
    except CapacityError as error:
        _back_off(ctx, claimed, str(error))
        return
    except SubmitError as error:
        fail(ctx, job_pk, attempt, str(error))
        return
    except Exception:
        logger.exception("provisioning job %s failed", job_pk)
        fail(ctx, job_pk, attempt, "The job could not be provisioned; please try again later")
        return
    _record_submission(ctx, job_pk, attempt, compute_id)


def _record_submission(ctx: Context, job_pk: str, attempt: int, compute_id: str) -> None:
    # The compute job may already have reported RUNNING: record the id in any case, and move
    # to Provisioned only if nothing later has happened.
    def change(job: Job) -> Job | None:
        if job.attempt != attempt:
            return None
        update: dict[str, object] = {"compute_job_id": compute_id}
        if can_transition(job.status, job.attempt, JobStatus.PROVISIONED, attempt):
            update["status"] = JobStatus.PROVISIONED
        return job.model_copy(update=update)

    recorded = ctx.store.jobs.update(job_pk, change)
    if recorded is not None and recorded.status is JobStatus.CANCELLED:
        # Cancelled while it was being submitted: stop what was just started.
        ctx.compute.cancel(compute_id)


def _back_off(ctx: Context, job: Job, reason: str) -> None:
    retries = job.capacity_retries + 1
    if retries > ctx.settings.max_capacity_retries:
        logger.warning("job %s: no capacity after %s tries: %s", job.pk, retries - 1, reason)
        fail(
            ctx,
            job.pk,
            job.attempt,
            f"No compute capacity was available after {retries - 1} tries; please try again later",
        )
        return
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (retries - 1))
    not_before = timeutil.iso(timeutil.now() + timedelta(seconds=delay))
    logger.warning("job %s re-queued for %s s: %s", job.pk, delay, reason)
    ctx.store.jobs.requeue(
        job.pk,
        attempt=job.attempt,
        changes={"not_before": not_before, "capacity_retries": retries},
    )
