"""The compute callback fed AWS's own event shapes (tests/fixtures/events) about jobs that were
really submitted to moto's Batch or SageMaker: duplicates, reordering, stale attempts, terminal
jobs, forged results, host failures. Every event goes through the Lambda's ``process``."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from gantry import resources, timeutil
from gantry.contract import new_signing_key
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.services.jobs import JobInput
from lambdas.on_job_event import process
from tests.integration import pipeline_support
from tests.integration.pipeline_support import (
    REPORT,
    World,
    compute_event,
    kept_values,
    replace_result,
    run_attempt,
    stored_result,
)

SUCCEEDED = resources.DETAIL_TYPE_JOB_SUCCEEDED
FAILED = resources.DETAIL_TYPE_JOB_FAILED
UNVERIFIED = "The result of this job could not be verified"
HOST_REASON = "Host EC2 (instance i-0a1b2c3d4e5f67890) terminated."


# The pipeline fixtures: moto with Batch (no Docker), the backend (tests parametrise it), its
# settings, the world. Bound here because pytest looks for fixtures among the module's names.
aws = pipeline_support.aws
backend = pipeline_support.backend
settings = pipeline_support.settings
world = pipeline_support.world


def outputs_of(job: Job) -> dict[str, Any]:
    return {v.socket: v.value if v.value is not None else v.file for v in job.outputs}


def assert_succeeded_with_outputs(world: World, job: Job) -> Job:
    done = world.get(job)
    assert done.status is JobStatus.SUCCESS, done.error_message
    outputs = outputs_of(done)
    assert outputs["score"] == 0.75
    assert outputs["report"].startswith(f"{resources.PREFIX_VALUES}{job.pk}/")
    body = world.ctx.clients.s3.get_object(
        Bucket=world.ctx.settings.bucket_name, Key=outputs["report"]
    )["Body"].read()
    assert body == REPORT
    assert kept_values(world.ctx, job) == [outputs["report"]]
    return done


def ms_iso(ms: int) -> str:
    return timeutil.iso(datetime.fromtimestamp(ms / 1000, UTC))


# --- Duplicates ----------------------------------------------------------------------------------


def test_duplicate_succeeded_event_finishes_the_job_once(world):
    job = world.job()
    assert job.status is JobStatus.PROVISIONED and job.compute_job_id
    assert world.deliver("running", job) == "Executing"
    run_attempt(world.ctx, job)
    succeeded = world.event("succeeded", job)

    assert process(world.ctx, succeeded) == "Succeeded"
    done = assert_succeeded_with_outputs(world, job)
    assert process(world.ctx, succeeded) is None

    assert world.get(job) == done
    assert world.published() == [SUCCEEDED]


def test_concurrent_duplicate_succeeded_events_publish_once(world, atomic_dynamodb):
    job = world.job()
    run_attempt(world.ctx, job)
    succeeded = world.event("succeeded", job)
    barrier = threading.Barrier(4)
    outcomes: list[str | None] = []

    def deliver() -> None:
        barrier.wait()
        outcomes.append(process(world.ctx, succeeded))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("Succeeded") == 1 and outcomes.count(None) == 3
    assert_succeeded_with_outputs(world, job)
    assert world.published() == [SUCCEEDED]


# --- Reordering ----------------------------------------------------------------------------------


def test_succeeded_before_running_stays_succeeded(world):
    job = world.job()
    run_attempt(world.ctx, job)
    succeeded = world.event("succeeded", job)

    assert process(world.ctx, succeeded) == "Succeeded"
    done = assert_succeeded_with_outputs(world, job)
    assert world.deliver("running", job) is None

    assert world.get(job) == done
    # The start time comes from the service's own record, not from the late RUNNING event.
    assert done.started_at == ms_iso(succeeded["detail"]["startedAt"])
    assert world.published() == [SUCCEEDED]


def test_running_records_when_the_service_started_the_job(world):
    job = world.job()
    running = world.event("running", job)
    assert process(world.ctx, running) == "Executing"
    assert world.get(job).started_at == ms_iso(running["detail"]["startedAt"])


# --- Stale attempts ------------------------------------------------------------------------------


def test_events_of_an_older_attempt_are_ignored(world):
    first = world.job()
    assert world.deliver("running", first) == "Executing"
    world.deliver("host", first)
    second = world.get(first)
    assert (second.status, second.attempt) == (JobStatus.PROVISIONED, 2)
    assert second.compute_job_id and second.compute_job_id != first.compute_job_id

    # Attempt 1's runner got as far as writing a result before its host went away.
    run_attempt(world.ctx, first)
    for what in ("running", "succeeded", "failed", "host"):
        assert world.deliver(what, first) is None, what
    assert world.get(first) == second
    assert world.published() == []
    # No third attempt was started by the repeated host failure.
    with pytest.raises(world.ctx.clients.s3.exceptions.NoSuchKey):
        world.ctx.clients.s3.get_object(
            Bucket=world.ctx.settings.bucket_name, Key=resources.invocation_key(first.pk, 3)
        )

    assert world.deliver("running", second) == "Executing"
    run_attempt(world.ctx, second)
    assert world.deliver("succeeded", second) == "Succeeded"
    done = assert_succeeded_with_outputs(world, second)
    assert done.attempt == 2
    assert world.published() == [SUCCEEDED]


# --- Terminal jobs -------------------------------------------------------------------------------


def test_a_failed_job_never_changes(world):
    job = world.job()
    assert world.deliver("running", job) == "Executing"
    # The runner could not write a result (its exit code 1).
    assert world.deliver("failed", job) == "Failed"
    failed = world.get(job)
    assert failed.error_message == "The job did not finish: its container exited early"

    run_attempt(world.ctx, job)
    for what in ("succeeded", "running", "failed"):
        assert world.deliver(what, job) is None, what
    assert world.get(job) == failed
    assert failed.outputs == []
    assert world.published() == [FAILED]


# --- Results that are not this attempt's ---------------------------------------------------------


def _tampered(world: World, job: Job) -> None:
    # The algorithm failed; the result is edited to claim success, the signature kept.
    run_attempt(world.ctx, job, return_code=1)
    body, metadata = stored_result(world.ctx, job)
    assert b'"return_code":1' in body
    replace_result(world.ctx, job, body.replace(b'"return_code":1', b'"return_code":0'), metadata)


def _unsigned(world: World, job: Job) -> None:
    run_attempt(world.ctx, job)
    body, _ = stored_result(world.ctx, job)
    replace_result(world.ctx, job, body, {})


def _other_key(world: World, job: Job) -> None:
    run_attempt(world.ctx, job, key=new_signing_key())


def _other_job(world: World, job: Job) -> None:
    # Signed with this job's key, but it is the result of another job.
    other = world.job()
    run_attempt(world.ctx, job, pk=other.pk)


@pytest.mark.parametrize("forge", [_tampered, _unsigned, _other_key, _other_job])
def test_an_unverifiable_result_fails_the_job_without_outputs(world, forge):
    job = world.job()
    world.deliver("running", job)
    forge(world, job)

    assert world.deliver("succeeded", job) == "Failed"
    failed = world.get(job)
    assert failed.error_message == UNVERIFIED
    assert failed.outputs == []
    assert failed.stdout == ""  # nothing of an unverified result is shown
    assert kept_values(world.ctx, job) == []
    assert world.published() == [FAILED]


def test_a_result_naming_another_job_leaves_that_job_alone(world):
    job, other = world.job(), world.job()
    run_attempt(world.ctx, job, pk=other.pk)
    assert world.deliver("succeeded", job) == "Failed"
    assert world.get(other).status is JobStatus.PROVISIONED


# --- Every service's shape, and what the result says ---------------------------------------------


@pytest.mark.parametrize(
    ("backend", "running", "finished"),
    [
        ("batch", "batch_running.json", "batch_succeeded.json"),
        ("batch", "batch_running.json", "batch_succeeded_ecs_properties.json"),
        ("sagemaker", "sagemaker_inprogress.json", "sagemaker_completed.json"),
    ],
)
def test_every_success_shape_succeeds_the_same_way(world, running, finished):
    job = world.job()
    bucket = world.ctx.settings.bucket_name
    start = compute_event(running, job.pk, job.attempt, job.compute_job_id, bucket=bucket)
    end = compute_event(finished, job.pk, job.attempt, job.compute_job_id, bucket=bucket)

    assert process(world.ctx, start) == "Executing"
    run_attempt(world.ctx, job)
    assert process(world.ctx, end) == "Succeeded"

    done = assert_succeeded_with_outputs(world, job)
    assert (done.exec_duration, done.invoke_duration) == (1.5, 2.0)
    assert done.stdout == "scoring\ndone"
    assert done.runtime_metrics == {"sandboxed": True, "runner_version": "test"}
    assert done.started_at == ms_iso(1767348095456)
    assert world.published() == [SUCCEEDED]


@pytest.mark.parametrize(
    ("backend", "finished", "reason"),
    [
        ("batch", "batch_failed_exit1.json", "its container exited early"),
        ("sagemaker", "sagemaker_failed.json", "its container exited with an error"),
        ("sagemaker", "sagemaker_stopped.json", "it was stopped"),
    ],
)
def test_every_failure_shape_fails_with_the_services_reason_in_plain_words(world, finished, reason):
    job = world.job()
    event = compute_event(
        finished, job.pk, job.attempt, job.compute_job_id, bucket=world.ctx.settings.bucket_name
    )
    assert process(world.ctx, event) == "Failed"
    failed = world.get(job)
    assert failed.error_message == f"The job did not finish: {reason}"
    assert failed.attempt == 1  # the algorithm's failure, not the host's: no new attempt
    assert world.published() == [FAILED]


@pytest.mark.parametrize("backend", ["batch", "sagemaker"])
def test_a_failed_algorithm_fails_with_its_exit_code(world):
    # The runner wrote a result, so the service reports success; the result says otherwise.
    job = world.job()
    run_attempt(world.ctx, job, return_code=3, outputs={})
    assert world.deliver("succeeded", job) == "Failed"
    failed = world.get(job)
    assert failed.error_message == "The algorithm exited with code 3"
    assert failed.outputs == [] and kept_values(world.ctx, job) == []


def test_an_invalid_output_fails_the_job_and_keeps_no_files(world):
    job = world.job()
    run_attempt(world.ctx, job, outputs={"score.json": b"not json", "report.pdf": REPORT})
    assert world.deliver("succeeded", job) == "Failed"
    failed = world.get(job)
    assert failed.error_message == "The output file 'score.json' is not valid json"
    assert failed.outputs == []
    # The valid report was checked and copied before the score failed: not left behind.
    assert kept_values(world.ctx, job) == []


# --- Host and capacity failures ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["batch", "sagemaker"])
def test_host_failures_start_new_attempts_up_to_the_limit(world):
    assert world.ctx.settings.max_attempts == 3
    job = world.job()
    compute_ids = [job.compute_job_id]
    for attempt in (1, 2):
        assert world.deliver("running", job) == "Executing"
        world.deliver("host", job)
        job = world.get(job)
        assert (job.status, job.attempt) == (JobStatus.PROVISIONED, attempt + 1)
        compute_ids.append(job.compute_job_id)
    assert len(set(compute_ids)) == 3
    assert world.published() == []  # retries are not announced

    assert world.deliver("running", job) == "Executing"
    assert world.deliver("host", job) == "Failed"
    failed = world.get(job)
    reason = (
        "its compute host went away"
        if world.backend == "batch"
        else "no compute instance could be had for it; an operator should check the account's "
        "EC2 service quota for the instance family and the compute environment's instance types"
    )
    # The service's own words (instance ids, AWS texts) stay in the operators' log.
    assert failed.error_message == f"The job was started 3 times and did not finish: {reason}"
    assert failed.attempt == 3
    assert world.published() == [FAILED]


def test_max_attempts_is_the_settings(world):
    world.ctx.settings = world.ctx.settings.model_copy(update={"max_attempts": 1})
    job = world.job()
    assert world.deliver("host", job) == "Failed"
    message = world.get(job).error_message
    assert message == "The job was started 1 times and did not finish: its compute host went away"
    assert "i-0a1b2c3d4e5f67890" not in message


def test_capacity_back_offs_do_not_use_up_host_attempts(world):
    from gantry.pipeline.provision import start_job

    world.ctx.settings = world.ctx.settings.model_copy(update={"max_attempts": 2})
    job = world.job()
    # Provisioning met no capacity twice before (as its back-off records it).
    world.ctx.store.jobs.requeue(job.pk, attempt=1, changes={"capacity_retries": 1})
    start_job(world.ctx, job.pk)
    world.ctx.store.jobs.requeue(job.pk, attempt=2, changes={"capacity_retries": 2})
    start_job(world.ctx, job.pk)
    job = world.get(job)
    assert (job.status, job.attempt) == (JobStatus.PROVISIONED, 3)

    world.deliver("host", job)
    job = world.get(job)
    assert (job.status, job.attempt) == (JobStatus.PROVISIONED, 4)
    assert world.deliver("host", job) == "Failed"
    assert world.get(job).error_message.startswith("The job was started 2 times")


def test_a_completion_repeated_after_a_crash_keeps_one_copy_of_each_output(world):
    """A callback that copied the outputs and died before it finished the job is retried; the
    retry copies to the same keys, so nothing is left behind that no job refers to."""
    from gantry.pipeline.outputs import parse_outputs
    from gantry.services import catalog

    job = world.job()
    run_attempt(world.ctx, job)
    algorithm = world.ctx.store.algorithms.get(job.algorithm)
    sockets = catalog.sockets_of(world.ctx, [algorithm])
    parse_outputs(world.ctx, job, sockets, algorithm.interfaces[job.socket_set].outputs)

    assert world.deliver("succeeded", job) == "Succeeded"
    done = world.get(job)
    assert sorted(kept_values(world.ctx, job)) == sorted(v.file for v in done.outputs if v.file)


# --- Image outputs -------------------------------------------------------------------------------


def _mha_bytes(tmp_path) -> bytes:
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / "heat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), dtype=np.float32)), str(path))
    return path.read_bytes()


def _image_job(world: World) -> Job:
    from gantry.pipeline.provision import start_job
    from tests.integration.test_inputs_support import make_algorithm, make_socket, new_job

    make_socket(world.ctx, "Heat Map", "HMAP", "images/heat-map")
    algorithm = make_algorithm(world.ctx, "Mapper", ["threshold"], ["heat-map", "score"])
    job = new_job(world.ctx, algorithm, [JobInput(interface="threshold", value=1.0)])
    start_job(world.ctx, job.pk)
    return world.get(job)


def _owned_images(world: World, job: Job) -> tuple[int, list[str]]:
    _, count = world.ctx.store.images.page_for(job.creator, offset=0, limit=10)
    listing = world.ctx.clients.s3.list_objects_v2(
        Bucket=world.ctx.settings.bucket_name, Prefix=f"{resources.PREFIX_VALUES}images/"
    )
    return count, [item["Key"] for item in listing.get("Contents", [])]


def test_an_image_output_is_registered_when_the_job_succeeds(world, tmp_path):
    job = _image_job(world)
    run_attempt(
        world.ctx,
        job,
        outputs={"images/heat-map/heat.mha": _mha_bytes(tmp_path), "score.json": b"0.5"},
    )
    assert world.deliver("succeeded", job) == "Succeeded"
    done = world.get(job)
    [value] = [v for v in done.outputs if v.socket == "heat-map"]
    image = world.ctx.store.images.get(value.image)
    assert image.shape == [3, 4, 5] and image.owner == job.creator
    assert _owned_images(world, job) == (1, [image.files[0].key])


def test_a_job_failing_on_another_output_keeps_no_image(world, tmp_path):
    job = _image_job(world)
    run_attempt(
        world.ctx,
        job,
        outputs={"images/heat-map/heat.mha": _mha_bytes(tmp_path), "score.json": b"no json"},
    )
    assert world.deliver("succeeded", job) == "Failed"
    assert world.get(job).error_message == "The output file 'score.json' is not valid json"
    assert _owned_images(world, job) == (0, [])


def test_a_tiff_output_is_registered_from_its_tags(world, tmp_path):
    """A TIFF output's size comes from its tags, read by ranged GETs: not downloaded."""
    import numpy as np
    import tifffile

    from tests.integration.test_inputs_images import bytes_asked, record_gets

    path = tmp_path / "heat.tif"
    pixels = np.random.default_rng(2).random((1024, 1024), dtype=np.float32)
    tifffile.imwrite(path, pixels, tile=(256, 256))
    job = _image_job(world)
    run_attempt(
        world.ctx, job, outputs={"images/heat-map/heat.tif": path.read_bytes(), "score.json": b"1"}
    )
    calls = record_gets(world.ctx)
    assert world.deliver("succeeded", job) == "Succeeded"
    [value] = [v for v in world.get(job).outputs if v.socket == "heat-map"]
    image = world.ctx.store.images.get(value.image)
    assert image.shape == [1024, 1024] and image.files[0].filename == "heat.tif"
    key = resources.io_output_prefix(job.pk, job.attempt) + "images/heat-map/heat.tif"
    sizes = bytes_asked(calls, key)
    assert sizes and None not in sizes and sum(sizes) < path.stat().st_size // 10
