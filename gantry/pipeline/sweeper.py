"""The sweeper: reconcile jobs whose events were lost, and start delayed ones.

Runs on a schedule. For each unfinished job that has not changed for a while it asks the
source of truth: the compute backend for running jobs (and applies what it says through the
same callback path as an event would), the queue for jobs waiting to be provisioned; a job
still validating its inputs long after its message was sent gets the message again. Then the
drop folder is reconciled with its jobs (``dropbox.reconcile_drops``): drops whose
notification was lost, or ended in a dead-letter queue, become their one job. Image imports
that failed or were cancelled longer ago than their retention period are removed, and
archive runs waiting for a free job slot go on (``archive_runs.resume_waiting``), and outputs
of archive-run jobs whose end event was lost are written back (``redo_write_backs``).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from gantry import timeutil
from gantry.compute.base import ComputeState
from gantry.context import Context
from gantry.job_states import IN_FLIGHT, JobStatus
from gantry.jobs import Job
from gantry.pipeline.callback import handle_compute_event
from gantry.pipeline.lifecycle import finish
from gantry.pipeline.provision import start_job
from gantry.pipeline.wiring import validate_inputs_message

logger = logging.getLogger(__name__)
STALE_PROVISIONING_SECONDS = 600
STALE_VALIDATION_SECONDS = 3600
LOST_REASON = "the compute service no longer knows its compute job"
# Batch's words for a job that was accepted but has no instance to run on yet.
WAITING_FOR_AN_INSTANCE = frozenset({"SUBMITTED", "PENDING", "RUNNABLE"})
NOT_STARTED_MESSAGE = (
    "The job waited {minutes} minutes for a {kind} instance and was not started. No instance "
    "could be launched for it: an operator should check the account's EC2 service quota for "
    "this instance family in this region (for GPUs 'Running On-Demand G and VT instances'; "
    "new accounts often have 0) and that the compute environment's instance types can hold "
    "a job of {memory} GB. Please try again once that is fixed."
)
# The compute job has ended; only the callback's own work remained.
FINISHING = frozenset({JobStatus.EXECUTED, JobStatus.PARSING})


@dataclass
class SweepReport:
    started: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    revalidated: list[str] = field(default_factory=list)
    drops_started: list[str] = field(default_factory=list)
    results_written: list[str] = field(default_factory=list)
    imports_removed: list[str] = field(default_factory=list)
    models_removed: list[str] = field(default_factory=list)
    runs_resumed: list[str] = field(default_factory=list)
    items_written_back: list[str] = field(default_factory=list)


def sweep(
    ctx: Context, *, limit: int | None = None, drop_settle_seconds: float | None = None
) -> SweepReport:
    """Look at every unfinished job (or the ``limit`` least recently changed ones), then at
    the drop folder's drops older than ``drop_settle_seconds`` (by default the sweeper's
    margin: younger ones are left to their notification)."""
    from gantry.pipeline.dropbox import reconcile_drops
    from gantry.pipeline.image_import import purge_ended_imports
    from gantry.pipeline.model_import import purge_failed_imports

    report = _sweep_jobs(ctx, limit)
    settle = (
        ctx.settings.sweeper_margin_seconds if drop_settle_seconds is None else drop_settle_seconds
    )
    drops = reconcile_drops(ctx, settle_seconds=settle)
    report.drops_started = drops.started
    report.results_written = drops.announced
    kept_since = import_retention_cutoff(ctx)
    report.imports_removed = purge_ended_imports(ctx, before=kept_since)
    report.models_removed = purge_failed_imports(ctx, before=kept_since)
    report.runs_resumed = _resume_runs(ctx)
    report.items_written_back = _redo_write_backs(ctx)
    return report


def _resume_runs(ctx: Context) -> list[str]:
    """Archive runs waiting for a slot go on (one may have freed by a job of any source), and
    runs whose page message was lost (unchanged for the sweeper's margin) get it again."""
    from gantry.pipeline.archive_runs import resume_waiting

    return resume_waiting(ctx, stale_before=stale_cutoff(ctx))


def _redo_write_backs(ctx: Context) -> list[str]:
    """Outputs of archive-run jobs whose end event was lost are written into their items."""
    from gantry.pipeline.archive_runs import redo_write_backs

    return redo_write_backs(ctx)


def _sweep_jobs(ctx: Context, limit: int | None) -> SweepReport:
    report = SweepReport()
    now = timeutil.now()
    jobs = ctx.store.jobs.iter_active_modified_before(timeutil.iso(now))
    for listed in itertools.islice(jobs, limit):
        if _due(ctx, listed, now) is None:
            continue
        # The index's copy looked due; decide on the stored job itself.
        job = ctx.store.jobs.find(listed.pk)
        action = _due(ctx, job, now) if job is not None else None
        if job is None or action is None:
            continue
        if action == "start":
            start_job(ctx, job.pk)
            report.started.append(job.pk)
        elif action == "requeue":
            # A provisioner died between claiming and submitting: give the job a new attempt.
            if ctx.store.jobs.requeue(job.pk, attempt=job.attempt) is not None:
                start_job(ctx, job.pk)
                report.started.append(job.pk)
        elif action == "revalidate":
            # The validation message was lost (or its handler died): send it again; validation
            # is idempotent.
            ctx.clients.sqs.send_message(
                QueueUrl=ctx.settings.uploads_queue_url, MessageBody=validate_inputs_message(job.pk)
            )
            report.revalidated.append(job.pk)
        elif action == "start-timeout":
            if _fail_unstarted(ctx, job):
                report.failed.append(job.pk)
            elif _reconcile(ctx, job.pk):
                report.reconciled.append(job.pk)
        elif action == "expire":
            finish(
                ctx,
                job,
                JobStatus.FAILURE,
                {"error_message": "The inputs could not be validated in time"},
            )
            report.failed.append(job.pk)
        elif _reconcile(ctx, job.pk):
            report.reconciled.append(job.pk)
    return report


def _due(ctx: Context, job: Job, now: datetime) -> str | None:
    """What the sweeper should do with ``job`` now, if anything."""
    age = (now - timeutil.parse_iso(job.modified)).total_seconds()
    if job.status in (JobStatus.PENDING, JobStatus.RETRY):
        waiting = job.not_before and timeutil.parse_iso(job.not_before) > now
        return None if waiting else "start"
    if job.status is JobStatus.PROVISIONING:
        return "requeue" if age > STALE_PROVISIONING_SECONDS else None
    if job.status is JobStatus.VALIDATING_INPUTS:
        if age > STALE_VALIDATION_SECONDS:
            return "expire"
        return "revalidate" if age > ctx.settings.sweeper_margin_seconds else None
    if job.status in FINISHING:
        # The compute job has ended and a callback was handling it: no time limit to wait.
        return "reconcile" if age > ctx.settings.sweeper_margin_seconds else None
    if job.status in IN_FLIGHT:
        if age > _deadline(ctx, job.time_limit):
            return "reconcile"
        # Submitted and never reported running: maybe stuck waiting for an instance.
        if job.status is JobStatus.PROVISIONED and age > ctx.settings.compute_start_timeout_seconds:
            return "start-timeout"
    return None


def _fail_unstarted(ctx: Context, job: Job) -> bool:
    """Fail a job the compute service still holds waiting for an instance (a GPU quota of 0
    would hold it for ever), saying why and what to check; False if it is not waiting."""
    state = ctx.compute.describe(job.compute_job_id) if job.compute_job_id else None
    if state is None or state.raw_status not in WAITING_FOR_AN_INSTANCE:
        return False
    logger.warning(
        "job %s waited for an instance past the start timeout: %s %s",
        job.pk,
        state.raw_status,
        state.reason,
    )
    ctx.compute.cancel(job.compute_job_id)
    message = NOT_STARTED_MESSAGE.format(
        minutes=ctx.settings.compute_start_timeout_seconds // 60,
        kind=f"{job.requires_gpu_type} GPU" if job.requires_gpu_type else "CPU",
        memory=job.requires_memory_gb,
    )
    return finish(ctx, job, JobStatus.FAILURE, {"error_message": message}) is not None


def _deadline(ctx: Context, time_limit: int) -> float:
    return time_limit + ctx.settings.sweeper_margin_seconds


def _reconcile(ctx: Context, job_pk: str) -> bool:
    job = ctx.store.jobs.find(job_pk)
    if job is None or job.status.is_terminal:
        return False
    state = ctx.compute.describe(job.compute_job_id) if job.compute_job_id else None
    if state is None:
        # Services forget finished jobs (Batch's DescribeJobs after about a day, sooner than
        # a day-long job's deadline here; the local backend when it restarts). The runner's
        # signed result, if there is one, still says how the job ended.
        state = ComputeState(
            compute_job_id=job.compute_job_id or "",
            name="",
            status="failed",
            raw_status="",
            reason=LOST_REASON,
        )
    if state.status == "running":
        return False
    logger.info("sweeper applies %s to job %s", state.status, job_pk)
    # The described state names the attempt it ran; older attempts are ignored as stale.
    handle_compute_event(
        ctx, replace(state, job_pk=state.job_pk or job.pk, attempt=state.attempt or job.attempt)
    )
    return True


def stale_cutoff(ctx: Context) -> str:
    """What has not changed since this (an ISO time) looks stuck: its message may be lost."""
    return _ago(ctx.settings.sweeper_margin_seconds)


def import_retention_cutoff(ctx: Context) -> str:
    """Image and model imports that ended without completing before this (an ISO time) are
    removed: ``settings.failed_import_retention_seconds`` ago."""
    return _ago(ctx.settings.failed_import_retention_seconds)


def _ago(seconds: int) -> str:
    return timeutil.iso(timeutil.now() - timedelta(seconds=seconds))
