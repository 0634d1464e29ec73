"""The Batch backend against moto: the exact job it submits, its job definitions, describe."""

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
from gantry.compute.batch import BatchBackend
from gantry.job_credentials import claim_value
from gantry.resources import (
    ENV_ALGORITHM_CMD,
    ENV_ALGORITHM_ENTRYPOINT,
    ENV_CREDENTIALS_FUNCTION,
    ENV_JOB_CLAIM,
    ENV_SIGNING_KEY,
    RUNNER_BINARY_PATH,
)
from gantry.settings import Settings
from tests.integration.pipeline_support import create_batch_resources
from tests.unit.test_compute_base import make_image, make_job

REGION = "us-east-1"
URI = "s3://gantry-test-data/io/job/1/invocation.json"


@pytest.fixture
def settings() -> Settings:
    return Settings(region=REGION, compute_backend="batch", bucket_name="gantry-test-data")


@pytest.fixture
def batch(settings: Settings) -> Iterator[dict[str, Any]]:
    """Moto Batch with both queues and the stack's shared runner definition."""
    with mock_aws(config={"batch": {"use_docker": False}}):
        client = boto3.client("batch", region_name=REGION)
        role = create_batch_resources(boto3.client("iam", region_name=REGION), client, settings)
        yield {"client": client, "role": role}


def recorder(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every request the client sends, as the parameters botocore serialises."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, json.loads(json.dumps(params))))

    client.meta.events.register("provide-client-params.batch.*", record)
    return calls


def env_map(items: list[dict[str, str]]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in items}


def test_submit_gpu_job_exact_request(batch, settings):
    client = batch["client"]
    calls = recorder(client)
    backend = BatchBackend(settings, client)
    job = make_job(requires_gpu_type="T4", requires_memory_gb=16, attempt=2, time_limit=1800)
    image = make_image()

    job_id = backend.submit(job, image, URI)

    (submitted,) = [params for name, params in calls if name == "SubmitJob"]
    assert submitted["jobName"] == f"gantry-{job.pk}-2"
    # A 16 GB job asks for what ECS can give on a 16 GiB g4dn.xlarge, not the nominal 16 GiB.
    assert submitted["containerOverrides"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "4"},
        {"type": "MEMORY", "value": "14336"},
        {"type": "GPU", "value": "1"},
    ]
    assert submitted["propagateTags"] is True

    (described,) = client.describe_jobs(jobs=[job_id])["jobs"]
    assert described["jobName"] == f"gantry-{job.pk}-2"
    assert described["jobQueue"].endswith(f":job-queue/{settings.batch_job_queue_gpu}")
    assert described["jobDefinition"].endswith(
        f":job-definition/{settings.batch_job_definition}-{image.pk}:1"
    )
    assert described["parameters"] == {"invocation": URI}
    assert described["timeout"] == {"attemptDurationSeconds": 1800 + RUNNER_MARGIN_SECONDS}
    assert described["tags"] == {"gantry:job": job.pk, "gantry:attempt": "2"}
    assert described["container"]["command"] == [RUNNER_BINARY_PATH, "invoke", "--file", URI]
    env = env_map(described["container"]["environment"])
    assert env[ENV_SIGNING_KEY] == job.signing_key
    assert json.loads(base64.b64decode(env[ENV_ALGORITHM_CMD])) == image.command
    assert json.loads(base64.b64decode(env[ENV_ALGORITHM_ENTRYPOINT])) == image.entrypoint


def test_cpu_job_goes_to_the_cpu_queue_without_gpu(batch, settings):
    client = batch["client"]
    calls = recorder(client)
    backend = BatchBackend(settings, client)
    image = make_image()
    job_id = backend.submit(make_job(requires_gpu_type="", requires_memory_gb=4), image, URI)
    (submitted,) = [params for name, params in calls if name == "SubmitJob"]
    assert submitted["containerOverrides"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "1"},
        {"type": "MEMORY", "value": "3584"},
    ]
    (described,) = client.describe_jobs(jobs=[job_id])["jobs"]
    assert described["jobQueue"].endswith(f":job-queue/{settings.batch_job_queue_cpu}")
    # A copy of the CPU definition: an override cannot drop the GPU definition's GPU.
    definition = client.describe_job_definitions(jobDefinitions=[described["jobDefinition"]])
    (copied,) = definition["jobDefinitions"]
    assert copied["jobDefinitionName"] == f"{settings.batch_job_definition}-cpu-{image.pk}"
    types = {r["type"] for r in copied["containerProperties"]["resourceRequirements"]}
    assert "GPU" not in types


def test_cpu_job_takes_a_whole_host_and_the_environment_carries_no_secret(batch, settings):
    # As deployed: CPU hosts of 8 vCPUs and the credentials function.
    deployed = settings.model_copy(
        update={"batch_cpu_host_vcpus": 8, "job_credentials_function": "gantry-job-credentials"}
    )
    client = batch["client"]
    calls = recorder(client)
    job = make_job(requires_gpu_type="", requires_memory_gb=4)
    job_id = BatchBackend(deployed, client).submit(job, make_image(), URI)
    (submitted,) = [params for name, params in calls if name == "SubmitJob"]
    assert submitted["containerOverrides"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "8"},
        {"type": "MEMORY", "value": "3584"},
    ]
    (described,) = client.describe_jobs(jobs=[job_id])["jobs"]
    env = env_map(described["container"]["environment"])
    assert ENV_SIGNING_KEY not in env
    assert job.signing_key not in json.dumps(described)
    assert env[ENV_CREDENTIALS_FUNCTION] == "gantry-job-credentials"
    assert env[ENV_JOB_CLAIM] == claim_value(job)
    # GPU jobs are alone on their host by their single GPU; their vCPUs follow memory.
    BatchBackend(deployed, client).submit(make_job(requires_gpu_type="T4"), make_image(), URI)
    gpu = [params for name, params in calls if name == "SubmitJob"][-1]
    assert {"type": "GPU", "value": "1"} in gpu["containerOverrides"]["resourceRequirements"]


def test_job_definition_per_image_is_a_copy_registered_once(batch, settings):
    client = batch["client"]
    calls = recorder(client)
    backend = BatchBackend(settings, client)
    image, other = (
        make_image(),
        make_image(image="123456789012.dkr.ecr.us-east-1.amazonaws.com/x:2"),
    )

    backend.submit(make_job(), image, URI)
    backend.submit(make_job(), image, URI)
    # A second process (a fresh backend) finds the definition instead of registering again.
    BatchBackend(settings, client).submit(make_job(), image, URI)
    backend.submit(make_job(), other, URI)

    registered = [params for name, params in calls if name == "RegisterJobDefinition"]
    assert [r["jobDefinitionName"] for r in registered] == [
        f"{settings.batch_job_definition}-{image.pk}",
        f"{settings.batch_job_definition}-{other.pk}",
    ]
    (definition,) = client.describe_job_definitions(
        jobDefinitionName=f"{settings.batch_job_definition}-{image.pk}", status="ACTIVE"
    )["jobDefinitions"]
    container = definition["containerProperties"]
    # The image is the algorithm's runner image; everything else comes from the shared one.
    assert container["image"] == image.image
    assert container["jobRoleArn"] == batch["role"]
    assert container["executionRoleArn"] == batch["role"]
    assert container["command"][-1] == "Ref::invocation"
    assert definition["propagateTags"] is True
    assert registered[0]["tags"] == {
        "gantry:algorithm-image": image.pk,
        "gantry:base-definition": base_arn(client, settings.batch_job_definition),
    }


def base_arn(client: Any, name: str) -> str:
    definitions = client.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
    return max(definitions["jobDefinitions"], key=lambda d: d["revision"])["jobDefinitionArn"]


def test_a_changed_shared_definition_reaches_the_next_job_of_every_image(batch, settings):
    """A stack update that registers a new revision of the shared definition (a new role,
    environment or log setting) is copied into each image's definition on its next job."""
    client = batch["client"]
    backend = BatchBackend(settings, client)
    image = make_image()
    first = client.describe_jobs(jobs=[backend.submit(make_job(), image, URI)])["jobs"][0]

    (shared,) = client.describe_job_definitions(
        jobDefinitionName=settings.batch_job_definition, status="ACTIVE"
    )["jobDefinitions"]
    container = shared["containerProperties"]
    container["environment"] = [{"name": "AWS_REGION", "value": REGION}]
    client.register_job_definition(
        jobDefinitionName=settings.batch_job_definition,
        type="container",
        containerProperties={
            k: container[k]
            for k in (
                "image",
                "command",
                "jobRoleArn",
                "executionRoleArn",
                "resourceRequirements",
                "environment",
            )
        },
    )

    # The same warm backend, and a new process.
    for submitter in (backend, BatchBackend(settings, client)):
        job_id = submitter.submit(make_job(), image, URI)
        (described,) = client.describe_jobs(jobs=[job_id])["jobs"]
        assert described["jobDefinition"] != first["jobDefinition"]
        (used,) = client.describe_job_definitions(jobDefinitions=[described["jobDefinition"]])[
            "jobDefinitions"
        ]
        assert {"name": "AWS_REGION", "value": REGION} in used["containerProperties"]["environment"]


def test_missing_shared_definition_is_a_submit_error(batch, settings):
    backend = BatchBackend(
        settings.model_copy(update={"batch_job_definition": "nope"}), batch["client"]
    )
    with pytest.raises(SubmitError, match="not set up") as raised:
        backend.submit(make_job(), make_image(), URI)
    # The user's message names no AWS resource; the operators' log does.
    assert "nope" not in str(raised.value)


def test_describe_and_cancel(batch, settings):
    client = batch["client"]
    backend = BatchBackend(settings, client)
    job = make_job(attempt=3)
    job_id = backend.submit(job, make_image(), URI)

    state = backend.describe(job_id)
    assert state is not None
    assert state.compute_job_id == job_id
    assert (state.job_pk, state.attempt) == (job.pk, 3)
    # Moto runs jobs without Docker to SUCCEEDED at once; any state it reports is valid.
    assert state.status in {"running", "succeeded"}
    assert backend.describe("00000000-0000-0000-0000-000000000000") is None

    calls = recorder(client)
    backend.cancel(job_id)
    assert calls == [("TerminateJob", {"jobId": job_id, "reason": "Cancelled by Gantry"})]
