"""The sweeper against moto's Batch and SageMaker: jobs whose events were lost are finished from
what the service and the result file say, and jobs waiting to be (re)provisioned are started.

The sweeper acts on jobs untouched for a while; the tests move the clock on instead of waiting.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from gantry import resources, timeutil
from gantry.compute import sagemaker_name
from gantry.compute.base import ComputeState
from gantry.compute.batch import BatchBackend
from gantry.compute.events import batch_state
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.pipeline.provision import start_job
from gantry.pipeline.sweeper import STALE_PROVISIONING_SECONDS, sweep
from tests.integration import pipeline_support
from tests.integration.pipeline_support import (
    REPORT,
    World,
    kept_values,
    queued_job,
    run_attempt,
)

# The pipeline fixtures: moto with Batch (no Docker), the backend (tests parametrise it), its
# settings, the world. Bound here because pytest looks for fixtures among the module's names.
aws = pipeline_support.aws
backend = pipeline_support.backend
settings = pipeline_support.settings
world = pipeline_support.world


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The platform's clock, moved on by the test (every timestamp goes through timeutil)."""
    moved = Clock()
    real_now = timeutil.now
    monkeypatch.setattr(timeutil, "now", lambda: real_now() + moved.offset)
    return moved


def past_the_deadline(world: World, job: Job) -> float:
    return job.time_limit + world.ctx.settings.sweeper_margin_seconds + 1


def invocation_exists(world: World, job_pk: str, attempt: int) -> bool:
    listing = world.ctx.clients.s3.list_objects_v2(
        Bucket=world.ctx.settings.bucket_name, Prefix=resources.invocation_key(job_pk, attempt)
    )
    return listing.get("KeyCount", 0) == 1


# --- Lost events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["batch", "sagemaker"])
def test_a_lost_completion_event_is_recovered_with_the_outputs(world, clock):
    job = world.job()
    assert world.deliver("running", job) == "Executing"
    run_attempt(world.ctx, job)
    # The service finished the job (moto's jobs end at once); its event never came.

    assert sweep(world.ctx).reconciled == []  # still within its time limit: left alone
    assert world.get(job).status is JobStatus.EXECUTING

    clock.advance(past_the_deadline(world, job))
    assert sweep(world.ctx).reconciled == [job.pk]
    done = world.get(job)
    assert done.status is JobStatus.SUCCESS, done.error_message
    outputs = {v.socket: v.value if v.value is not None else v.file for v in done.outputs}
    assert outputs["score"] == 0.75
    assert kept_values(world.ctx, job) == [outputs["report"]]
    assert done.started_at is not None  # from the service's description
    assert world.published() == [resources.DETAIL_TYPE_JOB_SUCCEEDED]

    clock.advance(past_the_deadline(world, job))
    assert sweep(world.ctx).reconciled == []
    assert world.published() == []


def test_a_job_whose_events_were_all_lost_is_recovered(world, clock):
    job = world.job()
    assert job.status is JobStatus.PROVISIONED
    run_attempt(world.ctx, job)
    clock.advance(past_the_deadline(world, job))
    assert sweep(world.ctx).reconciled == [job.pk]
    assert world.get(job).status is JobStatus.SUCCESS


def _forget_compute_job(world: World, job: Job) -> Job:
    """Point the job at a compute job the service does not know, as after Batch has dropped a
    finished job from DescribeJobs."""
    unknown = (
        str(uuid.uuid4())
        if world.backend == "batch"
        else sagemaker_name(str(uuid.uuid4()), job.attempt)
    )
    changed = world.ctx.store.jobs.update(
        job.pk, lambda j: j.model_copy(update={"compute_job_id": unknown})
    )
    assert changed is not None and world.ctx.compute.describe(unknown) is None
    return changed


@pytest.mark.parametrize("backend", ["batch", "sagemaker"])
def test_a_compute_job_the_service_no_longer_knows_fails_the_job(world, clock):
    job = world.job()
    world.deliver("running", job)
    job = _forget_compute_job(world, job)

    clock.advance(past_the_deadline(world, job))
    assert sweep(world.ctx).reconciled == [job.pk]
    failed = world.get(job)
    assert failed.status is JobStatus.FAILURE
    assert failed.error_message == (
        "The job did not finish: the compute service no longer knows it"
    )
    assert world.published() == [resources.DETAIL_TYPE_JOB_FAILED]


def test_a_forgotten_compute_job_that_left_a_result_is_finished_from_it(world, clock):
    # A day-long job's lost event: by the time the sweeper asks, Batch has dropped the job
    # (it keeps finished jobs for about a day), but the signed result is still there.
    job = world.job()
    world.deliver("running", job)
    run_attempt(world.ctx, job)
    job = _forget_compute_job(world, job)

    clock.advance(past_the_deadline(world, job))
    assert sweep(world.ctx).reconciled == [job.pk]
    done = world.get(job)
    assert done.status is JobStatus.SUCCESS, done.error_message
    assert (
        world.ctx.clients.s3.get_object(
            Bucket=world.ctx.settings.bucket_name,
            Key=next(v.file for v in done.outputs if v.socket == "report"),
        )["Body"].read()
        == REPORT
    )


# --- Jobs waiting to be provisioned --------------------------------------------------------------


def test_a_delayed_job_is_started_once_its_delay_has_passed(world, clock):
    job = queued_job(world.ctx, world.algorithm)
    # As provisioning leaves a job after the service had no capacity: re-queued with a delay.
    not_before = timeutil.iso(timeutil.now() + timedelta(seconds=60))
    world.ctx.store.jobs.requeue(
        job.pk, attempt=1, changes={"not_before": not_before, "capacity_retries": 1}
    )

    assert sweep(world.ctx).started == []
    waiting = world.get(job)
    assert (waiting.status, waiting.attempt) == (JobStatus.RETRY, 2)

    clock.advance(61)
    assert sweep(world.ctx).started == [job.pk]
    started = world.get(job)
    assert (started.status, started.attempt) == (JobStatus.PROVISIONED, 2)
    state = world.ctx.compute.describe(started.compute_job_id)
    assert (state.job_pk, state.attempt) == (job.pk, 2)
    assert invocation_exists(world, job.pk, 2)


def test_a_queued_job_whose_provisioning_never_ran_is_started(world):
    job = queued_job(world.ctx, world.algorithm)
    assert job.status is JobStatus.PENDING
    assert sweep(world.ctx).started == [job.pk]
    started = world.get(job)
    assert (started.status, started.attempt) == (JobStatus.PROVISIONED, 1)


def test_stale_provisioning_gets_a_new_attempt(world, clock):
    job = queued_job(world.ctx, world.algorithm)
    # A provisioner claimed the job and died before it submitted anything.
    claimed = world.ctx.store.jobs.transition(job.pk, attempt=1, status=JobStatus.PROVISIONING)
    assert claimed is not None

    assert sweep(world.ctx).started == []  # it may still be at work
    assert world.get(job).status is JobStatus.PROVISIONING

    clock.advance(STALE_PROVISIONING_SECONDS + 1)
    assert sweep(world.ctx).started == [job.pk]
    started = world.get(job)
    assert (started.status, started.attempt) == (JobStatus.PROVISIONED, 2)
    assert world.ctx.compute.describe(started.compute_job_id).name == f"gantry-{job.pk}-2"
    assert invocation_exists(world, job.pk, 2)
    assert not invocation_exists(world, job.pk, 1)

    # The new attempt runs and finishes as usual.
    world.deliver("running", started)
    run_attempt(world.ctx, started)
    assert world.deliver("succeeded", started) == "Succeeded"


def test_a_provisioned_job_is_not_started_twice(world, clock):
    job = world.job()
    clock.advance(STALE_PROVISIONING_SECONDS + 1)
    report = sweep(world.ctx)
    assert report.started == [] and report.reconciled == []
    assert world.get(job) == job
    start_job(world.ctx, job.pk)  # a repeated provisioning request changes nothing
    assert world.get(job) == job


# --- Reach and timing ----------------------------------------------------------------------------


def test_a_finishing_job_is_recovered_without_waiting_for_its_time_limit(world, clock):
    # The callback died after the compute job ended (Executed): the job's time limit says
    # nothing about how long that should take, so only the margin is waited for.
    job = world.job()
    run_attempt(world.ctx, job)
    world.ctx.store.jobs.transition(job.pk, attempt=job.attempt, status=JobStatus.EXECUTED)
    margin = world.ctx.settings.sweeper_margin_seconds
    assert margin + 1 < job.time_limit + margin  # the two deadlines differ

    clock.advance(margin + 1)
    assert sweep(world.ctx).reconciled == [job.pk]
    assert world.get(job).status is JobStatus.SUCCESS


def test_many_jobs_still_running_do_not_hide_one_that_is_due(world, clock):
    running = [world.job() for _ in range(105)]  # more than one page of the index
    clock.advance(1)
    due = queued_job(world.ctx, world.algorithm)  # the newest: last in the index
    report = sweep(world.ctx)
    assert report.started == [due.pk]
    assert report.reconciled == []
    assert all(world.get(job).status is JobStatus.PROVISIONED for job in running[:3])


# --- Jobs that never start -----------------------------------------------------------------------


class WaitingBatch(BatchBackend):
    """Moto's Batch, whose jobs run at once, reporting what Batch reports for a job that has
    no instance to run on (a GPU quota of 0): RUNNABLE, for as long as anyone asks."""

    def describe(self, compute_job_id: str) -> ComputeState | None:
        [job] = self.client.describe_jobs(jobs=[compute_job_id])["jobs"]
        job.update(status="RUNNABLE", statusReason="")
        for key in ("startedAt", "stoppedAt", "attempts", "container"):
            job.pop(key, None)
        return batch_state(job)


def test_a_job_that_never_gets_an_instance_fails_saying_what_to_check(world, clock):
    world.ctx.compute_backend = WaitingBatch(world.ctx.settings, world.ctx.clients.batch)
    job = world.job()
    assert job.status is JobStatus.PROVISIONED
    timeout = world.ctx.settings.compute_start_timeout_seconds
    assert timeout < job.time_limit + world.ctx.settings.sweeper_margin_seconds

    clock.advance(timeout - 60)
    assert sweep(world.ctx).failed == []
    clock.advance(120)
    assert sweep(world.ctx).failed == [job.pk]
    failed = world.get(job)
    assert failed.status is JobStatus.FAILURE
    assert failed.error_message.startswith(
        f"The job waited {timeout // 60} minutes for a CPU instance and was not started"
    )
    assert "service quota" in failed.error_message
    assert world.published() == [resources.DETAIL_TYPE_JOB_FAILED]
    # The compute job is cancelled, so it cannot start later for a job that has failed.
    [described] = world.ctx.clients.batch.describe_jobs(jobs=[job.compute_job_id])["jobs"]
    assert described["status"] in {"FAILED", "SUCCEEDED"}  # moto ran it already


def test_a_job_past_the_start_timeout_that_did_run_is_completed_not_failed(world, clock):
    """Its events were lost, but the service ran it (moto runs jobs at once): the sweeper
    applies what the service says instead of failing it as never started."""
    job = world.job()
    run_attempt(world.ctx, job)
    clock.advance(world.ctx.settings.compute_start_timeout_seconds + 60)
    assert sweep(world.ctx).reconciled == [job.pk]
    assert world.get(job).status is JobStatus.SUCCESS
