"""Service errors as CapacityError (retry later) or SubmitError (give up), via Stubber."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from gantry.algorithms import AlgorithmImage
from gantry.compute import CapacityError, SubmitError
from gantry.compute.batch import BatchBackend
from gantry.compute.sagemaker import SageMakerBackend
from gantry.settings import Settings
from tests.unit.test_compute_base import make_image, make_job

URI = "s3://gantry-test-data/io/job/1/invocation.json"
ROLE = "arn:aws:iam::123456789012:role/gantry-sagemaker"


def settings(**overrides: Any) -> Settings:
    return Settings(region="us-east-1", sagemaker_role_arn=ROLE, **overrides)


def batch_backend() -> tuple[BatchBackend, Stubber, AlgorithmImage]:
    client = boto3.client("batch", region_name="us-east-1")
    backend = BatchBackend(settings(), client)
    image = make_image()
    # The definition is known, so only SubmitJob reaches the stub.
    definition = "arn:aws:batch:us-east-1:123456789012:job-definition/x:1"

    def known(image: AlgorithmImage, *, gpu: bool = True) -> str:
        return definition

    backend.job_definition = known  # type: ignore[method-assign]
    return backend, Stubber(client), image


@pytest.mark.parametrize(
    ("code", "message", "status", "error"),
    [
        ("TooManyRequestsException", "Too many requests", 429, CapacityError),
        ("ThrottlingException", "Rate exceeded", 400, CapacityError),
        ("ServerException", "Internal error", 500, CapacityError),
        ("ClientException", "Job queue limit of 1000000 jobs reached", 400, CapacityError),
        ("ClientException", "Job queue gantry-gpu does not exist", 400, SubmitError),
    ],
)
def test_batch_submit_errors(code, message, status, error):
    backend, stub, image = batch_backend()
    stub.add_client_error("submit_job", code, message, http_status_code=status)
    with stub, pytest.raises(error, match=code if error is CapacityError else "refused") as raised:
        backend.submit(make_job(), image, URI)
    if error is SubmitError:
        # The user reads that it was refused; the service's words go to the log.
        assert message not in str(raised.value) and code not in str(raised.value)


def test_batch_cancel_of_unknown_job_is_quiet():
    backend, stub, _ = batch_backend()
    stub.add_client_error("terminate_job", "ClientException", "Job nope not found")
    with stub:
        backend.cancel("nope")
    stub.assert_no_pending_responses()


def sagemaker_backend(**overrides: Any) -> tuple[SageMakerBackend, Stubber]:
    client = boto3.client("sagemaker", region_name="us-east-1")
    return SageMakerBackend(settings(**overrides), client), Stubber(client)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("ResourceLimitExceeded", CapacityError),
        ("ThrottlingException", CapacityError),
        ("ValidationException", SubmitError),
    ],
)
def test_sagemaker_submit_errors(code, error):
    backend, stub = sagemaker_backend()
    stub.add_client_error("create_training_job", code, "no")
    with stub, pytest.raises(error) as raised:
        backend.submit(make_job(), make_image(), URI)
    assert error is CapacityError or "ValidationException" not in str(raised.value)


def test_sagemaker_resubmit_of_the_same_attempt_is_the_same_job():
    backend, stub = sagemaker_backend()
    job = make_job()
    stub.add_client_error("create_training_job", "ResourceInUse", "Training job already exists")
    with stub:
        name = backend.submit(job, make_image(), URI)
    assert name == f"gantry-{job.pk.replace('-', '')}-1"


def test_sagemaker_cancel_stops_the_training_job():
    backend, stub = sagemaker_backend()
    stub.add_response("stop_training_job", {}, {"TrainingJobName": "gantry-abc-1"})
    # A job that already ended cannot be stopped: not an error.
    stub.add_client_error("stop_training_job", "ValidationException", "already Completed")
    with stub:
        backend.cancel("gantry-abc-1")
        backend.cancel("gantry-abc-1")
    stub.assert_no_pending_responses()


def test_sagemaker_describe_of_unknown_job_is_none():
    backend, stub = sagemaker_backend()
    stub.add_client_error("describe_training_job", "ValidationException", "Could not find job")
    with stub:
        assert backend.describe("gantry-abc-1") is None


def test_sagemaker_needs_a_role():
    backend, _ = sagemaker_backend()
    backend.settings = Settings(region="us-east-1")
    with pytest.raises(SubmitError, match="not set up"):
        backend.submit(make_job(), make_image(), URI)
