"""The SageMaker backend against moto: the exact training job it creates, and describe."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from gantry.compute import SubmitError
from gantry.compute.base import RUNNER_MARGIN_SECONDS
from gantry.compute.sagemaker import SageMakerBackend, instance_type_for
from gantry.resources import ENV_ALGORITHM_CMD, ENV_SIGNING_KEY, RUNNER_BINARY_PATH
from gantry.settings import Settings
from tests.unit.test_compute_base import make_image, make_job

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/gantry-sagemaker"
URI = "s3://gantry-test-data/io/job/1/invocation.json"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "region": REGION,
        "compute_backend": "sagemaker",
        "bucket_name": "gantry-test-data",
        "sagemaker_role_arn": ROLE,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


def recorder(client: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(json.loads(json.dumps(params)))

    client.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob", record)
    return calls


def test_training_job_exact_request(client):
    calls = recorder(client)
    backend = SageMakerBackend(settings(sagemaker_warm_pool_seconds=600), client)
    job = make_job(requires_gpu_type="T4", requires_memory_gb=16, attempt=2, time_limit=1800)
    image = make_image()

    name = backend.submit(job, image, URI)

    assert name == f"gantry-{job.pk.replace('-', '')}-2"
    described = client.describe_training_job(TrainingJobName=name)
    spec = described["AlgorithmSpecification"]
    assert spec["TrainingImage"] == image.image
    assert spec["TrainingInputMode"] == "File"
    assert spec["ContainerEntrypoint"] == [RUNNER_BINARY_PATH]
    assert described["RoleArn"] == ROLE
    assert described["HyperParameters"] == {"invocation": URI}
    assert described["ResourceConfig"] == {
        "InstanceType": "ml.g4dn.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 100,
        "KeepAlivePeriodInSeconds": 600,
    }
    assert described["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800 + RUNNER_MARGIN_SECONDS}
    assert described["OutputDataConfig"]["S3OutputPath"] == (
        "s3://gantry-test-data/sagemaker-output/"
    )
    assert described["EnableNetworkIsolation"] is False
    tags = client.list_tags(ResourceArn=described["TrainingJobArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"gantry:job": job.pk, "gantry:attempt": "2"}
    # Moto does not return Environment: the request itself shows it.
    (request,) = calls
    # The runner starts and gets its arguments (moto does not return ContainerArguments).
    assert request["AlgorithmSpecification"]["ContainerArguments"] == ["invoke", "--file", URI]
    environment = request["Environment"]
    assert environment[ENV_SIGNING_KEY] == job.signing_key
    assert json.loads(base64.b64decode(environment[ENV_ALGORITHM_CMD])) == image.command
    assert "GANTRY_SANDBOX" not in environment


def test_no_warm_pool_by_default_and_sandbox_mode(client):
    calls = recorder(client)
    backend = SageMakerBackend(settings(), client, sandbox="auto")
    backend.submit(make_job(requires_gpu_type="", requires_memory_gb=4), make_image(), URI)
    (request,) = calls
    assert "KeepAlivePeriodInSeconds" not in request["ResourceConfig"]
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.large"
    assert request["Environment"]["GANTRY_SANDBOX"] == "auto"


def test_a_job_that_must_be_sandboxed_is_refused_at_once(client):
    """SageMaker cannot give the algorithm its network-less sandbox: the job fails at
    submission, saying why and what an operator can change, and no instance is started."""
    calls = recorder(client)
    backend = SageMakerBackend(settings(), client, sandbox="required")
    with pytest.raises(SubmitError, match="sandbox") as raised:
        backend.submit(make_job(), make_image(), URI)
    assert "gantry:sagemakerSandbox=auto" in str(raised.value)
    assert calls == []


def test_runner_image_template(client):
    backend = SageMakerBackend(
        settings(sagemaker_runner_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/r:{pk}"),
        client,
    )
    image = make_image()
    name = backend.submit(make_job(), image, URI)
    described = client.describe_training_job(TrainingJobName=name)
    assert described["AlgorithmSpecification"]["TrainingImage"].endswith(f"/r:{image.pk}")


def test_describe(client):
    backend = SageMakerBackend(settings(), client)
    job = make_job(attempt=4)
    name = backend.submit(job, make_image(), URI)
    state = backend.describe(name)
    assert state is not None
    # Moto completes training jobs at once.
    assert (state.status, state.raw_status, state.exit_code) == ("succeeded", "Completed", 0)
    assert (state.job_pk, state.attempt) == (job.pk, 4)
    assert backend.describe("gantry-unknown-1") is None


@pytest.mark.parametrize(
    ("gpu", "memory", "instance"),
    [
        ("T4", 4, "ml.g4dn.xlarge"),
        ("T4", 16, "ml.g4dn.xlarge"),
        ("T4", 17, "ml.g4dn.2xlarge"),
        ("T4", 32, "ml.g4dn.2xlarge"),
        ("", 8, "ml.m5.large"),
        ("", 16, "ml.m5.xlarge"),
        ("", 32, "ml.m5.2xlarge"),
    ],
)
def test_instance_types(gpu, memory, instance):
    job = make_job(requires_gpu_type=gpu, requires_memory_gb=memory)
    assert instance_type_for(job) == instance


def test_unknown_gpu_and_long_commands_are_refused(client):
    backend = SageMakerBackend(settings(), client)
    with pytest.raises(SubmitError, match="not offered"):
        instance_type_for(make_job(requires_gpu_type="H100"))
    long_image = make_image(command=["--flag-" + "x" * 40] * 20)
    with pytest.raises(SubmitError, match="too long"):
        backend.submit(make_job(), long_image, URI)


def test_training_job_environment_carries_a_claim_not_the_signing_key(client):
    """As deployed (a credentials function): DescribeTrainingJob would show no secret."""
    from gantry.job_credentials import claim_value
    from gantry.resources import ENV_CREDENTIALS_FUNCTION, ENV_JOB_CLAIM

    calls = recorder(client)
    backend = SageMakerBackend(settings(job_credentials_function="gantry-job-credentials"), client)
    job = make_job()
    backend.submit(job, make_image(), URI)
    (request,) = calls
    environment = request["Environment"]
    assert ENV_SIGNING_KEY not in environment
    assert job.signing_key not in json.dumps(request)
    assert environment[ENV_CREDENTIALS_FUNCTION] == "gantry-job-credentials"
    assert environment[ENV_JOB_CLAIM] == claim_value(job)
