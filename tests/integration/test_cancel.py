"""Cancelling jobs on moto's Batch and SageMaker: queued jobs never start, submitted ones are
stopped on the service, the bus hears of it once, and a completion racing with the cancel
leaves one final state. (The local backend: test_cancel_local.)"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from gantry import resources
from gantry.job_states import JobStatus
from gantry.pipeline.cancel import CANCELLED_MESSAGE, cancel_job
from gantry.pipeline.provision import start_job
from tests.integration import pipeline_support
from tests.integration.pipeline_support import World, published, queued_job, run_attempt

aws = pipeline_support.aws
backend = pipeline_support.backend
settings = pipeline_support.settings
world = pipeline_support.world

BACKENDS = pytest.mark.parametrize("backend", ["batch", "sagemaker"])
STOP = {"batch": "TerminateJob", "sagemaker": "StopTrainingJob"}


def stops(world: World) -> list[tuple[str, dict[str, Any]]]:
    """The stop requests the compute client sends from now on."""
    client = world.ctx.compute.client
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == STOP[world.backend]:
            calls.append((model.name, json.loads(json.dumps(params))))

    client.meta.events.register("provide-client-params.*.*", record)
    return calls


@pytest.fixture(autouse=True)
def sagemaker_stops(world: World) -> None:
    """moto 5.2.5 does not implement StopTrainingJob: the request (recorded by ``stops``) is
    answered as SageMaker answers it, HTTP 200 with an empty body."""
    if world.backend != "sagemaker":
        return

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://sagemaker", 200, {}, None), {}

    world.ctx.compute.client.meta.events.register("before-call.sagemaker.StopTrainingJob", answer)


def announced(world: World) -> list[dict[str, Any]]:
    return [detail for _, detail in published(world.ctx, world.queue_url)]


@BACKENDS
def test_a_queued_job_never_starts(world: World) -> None:
    job = queued_job(world.ctx, world.algorithm)
    calls = stops(world)
    cancelled = cancel_job(world.ctx, job.pk, by="alice")
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.error_message == CANCELLED_MESSAGE
    start_job(world.ctx, job.pk)  # a provisioner that still had the job's message
    stored = world.get(job)
    assert stored.status is JobStatus.CANCELLED
    assert stored.compute_job_id is None
    assert calls == []  # nothing was submitted, so nothing to stop
    [detail] = announced(world)
    assert (detail["job"], detail["status"]) == (job.pk, "Cancelled")


@BACKENDS
def test_a_submitted_job_is_stopped_on_the_service(world: World) -> None:
    job = world.job()
    assert job.compute_job_id
    calls = stops(world)
    assert cancel_job(world.ctx, job.pk, by="alice").status is JobStatus.CANCELLED
    assert len(calls) == 1
    assert job.compute_job_id in json.dumps(calls[0][1])
    # The service's own report of the stopped job changes nothing.
    world.deliver("failed", job)
    assert world.get(job).status is JobStatus.CANCELLED
    assert [d["status"] for d in announced(world)] == ["Cancelled"]


@BACKENDS
def test_cancelling_again_is_harmless(world: World) -> None:
    job = world.job()
    first = cancel_job(world.ctx, job.pk, by="alice")
    second = cancel_job(world.ctx, job.pk, by="root")
    assert second.status is JobStatus.CANCELLED
    assert second.completed_at == first.completed_at
    assert len(announced(world)) == 1


@BACKENDS
def test_a_finished_job_stays_as_it_ended(world: World) -> None:
    job = world.job()
    run_attempt(world.ctx, job)
    world.deliver("succeeded", job)
    announced(world)
    calls = stops(world)
    assert cancel_job(world.ctx, job.pk, by="alice").status is JobStatus.SUCCESS
    assert calls == []
    assert announced(world) == []


def test_a_job_cancelled_while_being_submitted_is_stopped(world: World) -> None:
    job = queued_job(world.ctx, world.algorithm)
    calls = stops(world)
    submit = world.ctx.compute.submit

    def submit_then_cancelled(*args: Any, **kwargs: Any) -> str:
        compute_id = submit(*args, **kwargs)
        # The user cancels after the service took the job, before the provisioner records it.
        cancel_job(world.ctx, job.pk, by="alice")
        return compute_id

    world.ctx.compute.submit = submit_then_cancelled
    start_job(world.ctx, job.pk)
    stored = world.get(job)
    assert stored.status is JobStatus.CANCELLED
    assert [json.dumps(params) for _, params in calls] == [
        json.dumps({"jobId": stored.compute_job_id, "reason": "Cancelled by Gantry"})
    ]


@BACKENDS
@pytest.mark.usefixtures("atomic_dynamodb")
def test_cancel_racing_with_completion_leaves_one_final_state(world: World) -> None:
    for _ in range(4):
        job = world.job()
        run_attempt(world.ctx, job)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def complete(job=job, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                world.deliver("succeeded", job)
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        def cancel(job=job, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                cancel_job(world.ctx, job.pk, by="alice")
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=complete), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        final = world.get(job)
        assert final.status in (JobStatus.SUCCESS, JobStatus.CANCELLED)
        details = announced(world)
        # Announced once, as it ended; a cancelled job keeps no outputs.
        assert [(d["job"], d["status"]) for d in details] == [(job.pk, final.status.label)]
        if final.status is JobStatus.CANCELLED:
            assert final.outputs == []
            assert pipeline_support.kept_values(world.ctx, job) == []
        else:
            assert final.outputs


def test_the_announcement_names_the_status(world: World) -> None:
    job = queued_job(world.ctx, world.algorithm)
    cancel_job(world.ctx, job.pk, by="alice")
    [(detail_type, detail)] = published(world.ctx, world.queue_url)
    assert detail_type == resources.DETAIL_TYPE_JOB_FAILED
    assert detail["status"] == "Cancelled"
    assert detail["error_message"] == CANCELLED_MESSAGE
