"""The compute callback: apply a state-change event to its job, finish it on completion.

Events arrive at least once, in any order, possibly for an older attempt. A job moves only
forward within its attempt; a terminal job never changes. On completion the result file is
trusted only after its HMAC (under the job's own key) and pk check out; then every output is
checked per socket and the job ends Succeeded or Failed with grand-challenge's messages.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from gantry import contract, failures, resources, timeutil
from gantry.compute.base import ComputeState, public_reason
from gantry.context import Context
from gantry.errors import NotFound
from gantry.images import Image
from gantry.job_states import JobStatus
from gantry.jobs import STREAM_TAIL_LINES, Job
from gantry.pipeline.lifecycle import finish
from gantry.pipeline.provision import start_job
from gantry.services import catalog

logger = logging.getLogger(__name__)
MAX_TAIL_CHARS = 64 * 1024
# Service status words that mean the algorithm's container is running now.
RUNNING_WORDS = frozenset({"RUNNING", "InProgress"})
TIMEOUT_REASONS = ("attempt duration exceeded timeout", "maxruntimeexceeded", "max runtime")


def timed_out(state: ComputeState) -> bool:
    return any(marker in state.reason.lower() for marker in TIMEOUT_REASONS)


def handle_compute_event(ctx: Context, event: ComputeState) -> Job | None:
    """Apply a backend's state of one compute job (from an event or the sweeper's look)."""
    if event.job_pk is None or event.attempt is None:
        logger.info("ignoring state of %s: not a Gantry job", event.name)
        return None
    job_pk, attempt = event.job_pk, event.attempt
    if event.status == "running":
        if event.raw_status not in RUNNING_WORDS:
            return None  # queued or starting: the job stays Provisioned
        # The conditional transition itself leaves an unknown, stale or finished job alone.
        try:
            return ctx.store.jobs.transition(
                job_pk,
                attempt=attempt,
                status=JobStatus.EXECUTING,
                changes=lambda j: {
                    "started_at": started_at(event) or j.started_at or timeutil.iso()
                },
            )
        except NotFound:
            return None
    job = ctx.store.jobs.find(job_pk)
    if job is None or job.attempt != attempt or job.status.is_terminal:
        return None  # unknown, stale or finished: nothing to do
    return complete(ctx, job, event)


def started_at(event: ComputeState) -> str | None:
    """When the service started the compute job, as the job's ISO timestamp."""
    if event.started_at is None:
        return None
    return timeutil.iso(datetime.fromtimestamp(event.started_at / 1000, UTC))


def _read_result(ctx: Context, job: Job) -> tuple[bytes, str | None] | None:
    key = resources.result_key(resources.io_output_prefix(job.pk, job.attempt))
    try:
        response = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=key)
    except ctx.clients.s3.exceptions.NoSuchKey:
        return None
    body = response["Body"].read()
    return body, (response.get("Metadata") or {}).get(resources.SIGNATURE_METADATA_KEY)


def _tail(lines: list[str]) -> str:
    text = "\n".join(lines[-STREAM_TAIL_LINES:])
    return text[-MAX_TAIL_CHARS:]


def complete(ctx: Context, job: Job, event: ComputeState) -> Job | None:
    attempt = job.attempt
    # The RUNNING event may come late or never (unordered, or lost), or without a start time
    # (SageMaker's InProgress): the final state says when the service started the job.
    ctx.store.jobs.transition(
        job.pk,
        attempt=attempt,
        status=JobStatus.EXECUTED,
        changes=lambda j: {"started_at": started_at(event) or j.started_at},
    )
    raw = _read_result(ctx, job)
    if raw is None:
        if event.retryable:
            return _retry_or_fail(ctx, job, event)
        if timed_out(event):
            return finish(ctx, job, JobStatus.FAILURE, {"error_message": failures.TIME_LIMIT})
        if event.exit_code == 137:
            return finish(ctx, job, JobStatus.FAILURE, {"error_message": failures.OUT_OF_MEMORY})
        logger.warning(
            "job %s attempt %s ended without a result: %s", job.pk, attempt, event.reason
        )
        reason = public_reason(event.reason) if event.reason else "it ended without a result"
        return finish(
            ctx, job, JobStatus.FAILURE, {"error_message": f"The job did not finish: {reason}"}
        )
    body, signature = raw
    try:
        result = contract.verify_result(
            body=body, signature_hex=signature, key_hex=job.signing_key, expected_pk=job.pk
        )
    except contract.ResultVerificationError as error:
        logger.error("job %s: result rejected: %s", job.pk, error)
        return finish(
            ctx,
            job,
            JobStatus.FAILURE,
            {"error_message": "The result of this job could not be verified"},
        )
    changes: dict[str, Any] = {
        "stdout": _tail(result.user_process_last_stdout_lines),
        "stderr": _tail(result.user_process_last_stderr_lines),
        "exec_duration": result.exec_duration,
        "invoke_duration": result.invoke_duration,
        "runtime_metrics": {"sandboxed": result.sandboxed, "runner_version": result.runner_version},
    }
    if result.return_code != 0 or result.user_safe_error_message:
        message = result.user_safe_error_message or failures.exited_with(result.return_code)
        changes.update(error_message=message, detailed_error_message=result.output_errors)
        return finish(ctx, job, JobStatus.FAILURE, changes)

    ctx.store.jobs.transition(job.pk, attempt=attempt, status=JobStatus.PARSING)
    from gantry.pipeline.outputs import parse_outputs, to_socket_values

    algorithm = ctx.store.algorithms.get(job.algorithm)
    sockets = catalog.sockets_of(ctx, [algorithm])
    parsed = parse_outputs(ctx, job, sockets, algorithm.interfaces[job.socket_set].outputs)
    if parsed.errors:
        first = next(iter(parsed.errors.values()))
        changes.update(error_message=first, detailed_error_message=parsed.errors)
        failed = finish(ctx, job, JobStatus.FAILURE, changes, (algorithm, sockets))
        _drop_unkept_files(ctx, job.pk, parsed.values)
        _drop_image_files(ctx, parsed.images)
        return failed
    # Registered before the job says Succeeded, so its outputs never name a missing image;
    # their pks are fixed per job, attempt and socket, so a repeat registers nothing new.
    for image in parsed.images:
        ctx.store.images.put(image)
    changes["outputs"] = to_socket_values(ctx, parsed.values)
    done = finish(ctx, job, JobStatus.SUCCESS, changes, (algorithm, sockets))
    if done is None:
        # A duplicate of this event, handled at the same time, finished the job first.
        _drop_unkept_files(ctx, job.pk, parsed.values)
    elif parsed.images:
        ctx.store.jobs.add_output_images(done, [image.pk for image in parsed.images])
    return done


def _drop_image_files(ctx: Context, images: list[Image]) -> None:
    """Delete the copies of a failed job's output images: no image record refers to them."""
    for image in images:
        for file in image.files:
            ctx.clients.s3.delete_object(Bucket=ctx.settings.bucket_name, Key=file.key)


def _drop_unkept_files(ctx: Context, job_pk: str, drafts: list[dict[str, Any]]) -> None:
    """Delete the output files this call copied to values/ that the job does not keep."""
    current = ctx.store.jobs.find(job_pk)
    kept = {value.file for value in current.outputs} if current else set()
    for key in sorted({d["file"] for d in drafts if d.get("file")} - kept):
        ctx.clients.s3.delete_object(Bucket=ctx.settings.bucket_name, Key=key)


def _retry_or_fail(ctx: Context, job: Job, event: ComputeState) -> Job | None:
    host_attempts = job.attempt - job.capacity_retries
    if host_attempts >= ctx.settings.max_attempts:
        return finish(
            ctx,
            job,
            JobStatus.FAILURE,
            {
                "error_message": f"The job was started {host_attempts} times and did not "
                f"finish: {public_reason(event.reason)}"
            },
        )
    logger.warning(
        "job %s attempt %s lost its host (%s): retrying", job.pk, job.attempt, event.reason
    )
    requeued = ctx.store.jobs.requeue(job.pk, attempt=job.attempt)
    if requeued is not None:
        start_job(ctx, job.pk)
    return requeued
