"""Batch and SageMaker events (and describe responses) normalised to one ComputeState."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gantry.compute import state_from_event
from gantry.compute.events import batch_exit_code, batch_state, sagemaker_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
PK = "3f2a1c9e-7b4d-4e8a-9c1f-2d5e6a7b8c90"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("name", "status", "raw", "exit_code", "retryable"),
    [
        ("batch_running.json", "running", "RUNNING", None, False),
        ("batch_succeeded.json", "succeeded", "SUCCEEDED", 0, False),
        ("batch_failed_exit1.json", "failed", "FAILED", 1, False),
        ("batch_failed_host_terminated.json", "failed", "FAILED", None, True),
        ("batch_succeeded_ecs_properties.json", "succeeded", "SUCCEEDED", 0, False),
        ("sagemaker_inprogress.json", "running", "InProgress", None, False),
        ("sagemaker_completed.json", "succeeded", "Completed", 0, False),
        ("sagemaker_failed.json", "failed", "Failed", 1, False),
        ("sagemaker_stopped.json", "failed", "Stopped", None, False),
    ],
)
def test_fixture_states(name, status, raw, exit_code, retryable):
    event = fixture(name)
    state = state_from_event(event)
    assert state is not None
    assert (state.status, state.raw_status, state.exit_code, state.retryable) == (
        status,
        raw,
        exit_code,
        retryable,
    )
    assert state.job_pk == PK
    assert state.attempt == 1
    assert state.is_final == (status != "running")


def test_batch_ids_and_reasons():
    state = state_from_event(fixture("batch_failed_host_terminated.json"))
    assert state is not None
    assert state.compute_job_id == "8b1e4f0a-52c3-4d7e-9a61-0c2f7d9e3b15"
    assert state.reason == "Host EC2 (instance i-0a1b2c3d4e5f67890) terminated."
    assert state.started_at == 1767348095456
    assert state.stopped_at == 1767348161789


def test_sagemaker_id_is_the_name():
    state = state_from_event(fixture("sagemaker_stopped.json"))
    assert state is not None
    assert state.compute_job_id == state.name == "gantry-3f2a1c9e7b4d4e8a9c1f2d5e6a7b8c90-1"
    assert state.reason == "The training job was stopped"


def test_every_fixture_is_an_eventbridge_envelope():
    keys = {"version", "id", "detail-type", "source", "account", "time", "region", "resources"}
    for path in sorted(FIXTURES.glob("*.json")):
        event = json.loads(path.read_text())
        assert keys | {"detail"} == set(event), path.name
        assert event["resources"], path.name


@pytest.mark.parametrize(
    ("detail", "code"),
    [
        ({"container": {"exitCode": 3}}, 3),
        ({"attempts": [{"container": {"exitCode": 0}}, {"container": {"exitCode": 2}}]}, 2),
        ({"attempts": [{"taskProperties": [{"containers": [{"exitCode": 0}]}]}]}, 0),
        (
            {
                "attempts": [
                    {"taskProperties": [{"containers": [{"exitCode": 0}, {"exitCode": 137}]}]}
                ]
            },
            137,
        ),
        ({"ecsProperties": {"taskProperties": [{"containers": [{"exitCode": 5}]}]}}, 5),
        ({"attempts": [], "container": {}}, None),
    ],
)
def test_exit_code_shapes(detail, code):
    assert batch_exit_code(detail) == code


@pytest.mark.parametrize(
    ("reason", "retryable"),
    [
        ("Host EC2 (instance i-0123456789abcdef0) terminated.", True),
        ("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity", True),
        ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement", False),
        ("Essential container in task exited", False),
        ("Job attempt duration exceeded timeout", False),
        ("Cancelled by Gantry", False),
    ],
)
def test_batch_retryable_reasons(reason, retryable):
    detail = {"jobId": "j", "jobName": "gantry-x-1", "status": "FAILED", "statusReason": reason}
    assert batch_state(detail).retryable is retryable
    # Only a failure is ever retried.
    assert batch_state({**detail, "status": "RUNNABLE"}).retryable is False


@pytest.mark.parametrize(
    ("detail", "status", "reason", "retryable"),
    [
        (
            {"TrainingJobStatus": "Failed", "FailureReason": "CapacityError: Unable to provision"},
            "failed",
            "CapacityError: Unable to provision",
            True,
        ),
        (
            {"TrainingJobStatus": "Failed", "FailureReason": "InternalServerError: oops"},
            "failed",
            "InternalServerError: oops",
            True,
        ),
        (
            {"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxRuntimeExceeded"},
            "failed",
            "MaxRuntimeExceeded: the job exceeded its time limit",
            False,
        ),
        ({"TrainingJobStatus": "Stopping"}, "running", "", False),
    ],
)
def test_sagemaker_reasons(detail, status, reason, retryable):
    state = sagemaker_state({"TrainingJobName": "gantry-abc-1", **detail})
    assert (state.status, state.reason, state.retryable) == (status, reason, retryable)


def test_other_events_are_not_compute_states():
    other = {"source": "aws.s3", "detail-type": "Object Created", "detail": {}}
    assert state_from_event(other) is None
    assert (
        state_from_event({"source": "aws.batch", "detail-type": "Batch Job State Change"}) is None
    )
