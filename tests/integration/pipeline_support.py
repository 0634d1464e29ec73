"""Helpers of the callback and sweeper tests, and the Batch set-up of the Batch backend's
(no tests here).

The compute services are moto's (Batch without Docker, SageMaker); the runner's part is played
by writing what it writes (outputs and the signed result, with the runner's own
``write_result``); state changes are AWS's recorded event shapes from ``tests/fixtures/events``
pointed at a real job; the "Gantry Job …" events reach an SQS queue through an EventBridge rule.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from batch_runner.invoke import write_result
from gantry import resources
from gantry.algorithms import Algorithm
from gantry.compute.base import TAG_ATTEMPT, TAG_JOB, compute_name, sagemaker_name
from gantry.compute.batch import CPU_DEFINITION_SUFFIX
from gantry.context import Context
from gantry.contract import InferenceResult, Invocation, ResultOutput
from gantry.jobs import Job
from gantry.pipeline.provision import start_job
from gantry.resources import RUNNER_BINARY_PATH
from gantry.services.jobs import JobInput
from gantry.settings import Settings
from lambdas.on_job_event import process
from tests.integration.test_inputs_support import make_algorithm, make_socket, new_job

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
REGION = "us-east-1"
SAGEMAKER_ROLE = "arn:aws:iam::123456789012:role/gantry-sagemaker"
SCORE = b"0.75"
REPORT = b"%PDF-1.4\n% a report\n"
OUTPUTS = {"score.json": SCORE, "report.pdf": REPORT}

# The recorded events of each service, by what they report.
SHAPES: dict[str, dict[str, str]] = {
    "batch": {
        "running": "batch_running.json",
        "succeeded": "batch_succeeded.json",
        "failed": "batch_failed_exit1.json",
        "host": "batch_failed_host_terminated.json",
    },
    "sagemaker": {
        "running": "sagemaker_inprogress.json",
        "succeeded": "sagemaker_completed.json",
        "failed": "sagemaker_failed.json",
        "host": "sagemaker_failed.json",
    },
}
# SageMaker's words when it could not get an instance: the service's failure, not the job's.
SAGEMAKER_CAPACITY = (
    "CapacityError: Unable to provision requested ML compute capacity. "
    "Please retry using a different ML instance type."
)


def pipeline_settings(backend: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "table_name": "gantry-test",
        "bucket_name": "gantry-test-data",
        "region": REGION,
        "api_base_url": "https://api.gantry.test/api/v1/",
        "compute_backend": backend,
        "sagemaker_role_arn": SAGEMAKER_ROLE,
        # SageMaker cannot sandbox; "required" would refuse every job at submission.
        "sagemaker_sandbox": "auto",
    }
    values.update(overrides)
    return Settings(**values)


def create_batch_resources(iam: Any, batch: Any, settings: Settings) -> str:
    """What the stack deploys for Batch: a compute environment, both queues, the shared
    runner job definitions (GPU and CPU); the job role."""
    role = iam.create_role(RoleName="gantry-job", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName="gantry-test-env",
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=role,
    )["computeEnvironmentArn"]
    for queue in (settings.batch_job_queue_gpu, settings.batch_job_queue_cpu):
        batch.create_job_queue(
            jobQueueName=queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
        )
    # The stack's two shared definitions: GPU, and CPU (no GPU requirement); no Batch retries.
    base = settings.batch_job_definition
    for name, gpu in ((base, True), (f"{base}{CPU_DEFINITION_SUFFIX}", False)):
        requirements = [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "14336"}]
        if gpu:
            requirements.append({"type": "GPU", "value": "1"})
        batch.register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties={
                "image": "public.ecr.aws/docker/library/busybox:latest",
                "command": [RUNNER_BINARY_PATH, "invoke", "--file", "Ref::invocation"],
                "jobRoleArn": role,
                "executionRoleArn": role,
                "resourceRequirements": requirements,
            },
            timeout={"attemptDurationSeconds": 7200},
            propagateTags=True,
        )
    return role


def route_job_events(ctx: Context) -> str:
    """An SQS queue that receives every "Gantry Job …" event from the bus; its URL."""
    sqs = ctx.clients.sqs
    queue_url = sqs.create_queue(QueueName="job-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events = ctx.clients.events
    with contextlib.suppress(events.exceptions.ResourceAlreadyExistsException):
        events.create_event_bus(Name=ctx.settings.event_bus_name)
    events.put_rule(
        Name="all-job-events",
        EventBusName=ctx.settings.event_bus_name,
        EventPattern=json.dumps({"source": [resources.EVENT_SOURCE]}),
    )
    events.put_targets(
        Rule="all-job-events",
        EventBusName=ctx.settings.event_bus_name,
        Targets=[{"Id": "queue", "Arn": arn}],
    )
    return queue_url


def published(ctx: Context, queue_url: str) -> list[tuple[str, dict[str, Any]]]:
    """(detail-type, detail) of every job event published since the last call."""
    found: list[tuple[str, dict[str, Any]]] = []
    sqs = ctx.clients.sqs
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        if not messages:
            return found
        for message in messages:
            event = json.loads(message["Body"])
            found.append((event["detail-type"], event["detail"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def make_pipeline_algorithm(ctx: Context) -> Algorithm:
    """One Float input; a Float output kept in the database and a PDF kept as a file."""
    make_socket(ctx, "Threshold", "Float", "threshold.json")
    make_socket(ctx, "Score", "Float", "score.json")
    make_socket(ctx, "Report", "PDF", "report.pdf")
    return make_algorithm(ctx, "Scorer", ["threshold"], ["score", "report"])


def queued_job(ctx: Context, algorithm: Algorithm) -> Job:
    """A job as the API creates it (Queued; provisioning not run yet)."""
    return new_job(ctx, algorithm, [JobInput(interface="threshold", value=2.5)])


def provisioned_job(ctx: Context, algorithm: Algorithm) -> Job:
    """A job the provisioner has submitted to the compute service."""
    job = queued_job(ctx, algorithm)
    start_job(ctx, job.pk)
    return ctx.store.jobs.get(job.pk)


def run_attempt(
    ctx: Context,
    job: Job,
    *,
    outputs: dict[str, bytes] | None = None,
    return_code: int = 0,
    pk: str | None = None,
    key: str | None = None,
) -> bytes:
    """Do what the runner does for the job's current attempt: read the invocation, upload
    the outputs, write the signed result. ``pk`` and ``key`` forge a result; the body."""
    bucket = ctx.settings.bucket_name
    s3 = ctx.clients.s3
    stored = s3.get_object(Bucket=bucket, Key=resources.invocation_key(job.pk, job.attempt))
    invocation = Invocation.model_validate_json(stored["Body"].read())
    written: list[ResultOutput] = []
    for relative_path, body in (OUTPUTS if outputs is None else outputs).items():
        object_key = invocation.output_prefix + relative_path
        s3.put_object(Bucket=invocation.output_bucket_name, Key=object_key, Body=body)
        written.append(
            ResultOutput(
                relative_path=relative_path,
                bucket_name=invocation.output_bucket_name,
                bucket_key=object_key,
                size=len(body),
            )
        )
    result = InferenceResult(
        pk=pk or invocation.pk,
        return_code=return_code,
        exec_duration=1.5,
        invoke_duration=2.0,
        outputs=written,
        user_process_last_stdout_lines=["scoring", "done"],
        sandboxed=True,
        runner_version="test",
    )
    return write_result(s3, invocation, result, key or job.signing_key)


def stored_result(ctx: Context, job: Job) -> tuple[bytes, dict[str, str]]:
    key = resources.result_key(resources.io_output_prefix(job.pk, job.attempt))
    response = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=key)
    return response["Body"].read(), response["Metadata"]


def replace_result(ctx: Context, job: Job, body: bytes, metadata: dict[str, str]) -> None:
    key = resources.result_key(resources.io_output_prefix(job.pk, job.attempt))
    ctx.clients.s3.put_object(
        Bucket=ctx.settings.bucket_name, Key=key, Body=body, Metadata=metadata
    )


def kept_values(ctx: Context, job: Job) -> list[str]:
    """Keys of the files kept for the job's outputs."""
    listing = ctx.clients.s3.list_objects_v2(
        Bucket=ctx.settings.bucket_name, Prefix=f"{resources.PREFIX_VALUES}{job.pk}/"
    )
    return [item["Key"] for item in listing.get("Contents", [])]


def compute_event(
    fixture: str,
    job_pk: str,
    attempt: int,
    compute_job_id: str,
    *,
    reason: str | None = None,
    bucket: str = "gantry-test-data",
) -> dict[str, Any]:
    """A recorded AWS event, rewritten to report on this job's attempt."""
    event = copy.deepcopy(json.loads((FIXTURES / fixture).read_text()))
    detail = event["detail"]
    invocation = f"s3://{bucket}/{resources.invocation_key(job_pk, attempt)}"
    tags = {TAG_JOB: job_pk, TAG_ATTEMPT: str(attempt)}
    if event["source"] == resources.BATCH_EVENT_SOURCE:
        arn = f"arn:aws:batch:{event['region']}:{event['account']}:job/{compute_job_id}"
        event["resources"] = [arn]
        detail.update(jobArn=arn, jobId=compute_job_id, jobName=compute_name(job_pk, attempt))
        detail["tags"] = {**tags, "resourceArn": arn}
        detail["parameters"] = {"invocation": invocation}
        for container in [detail.get("container") or {}] + [
            c
            for task in (detail.get("ecsProperties") or {}).get("taskProperties", [])
            for c in task.get("containers", [])
        ]:
            if container.get("command"):
                container["command"][-1] = invocation
    else:
        name = sagemaker_name(job_pk, attempt)
        assert name == compute_job_id, "a training job's id is its name"
        arn = f"arn:aws:sagemaker:{event['region']}:{event['account']}:training-job/{name}"
        event["resources"] = [arn]
        detail.update(TrainingJobName=name, TrainingJobArn=arn, Tags=tags)
        detail["HyperParameters"] = {"invocation": invocation}
        detail["AlgorithmSpecification"]["ContainerEntrypoint"][-1] = invocation
        if reason is not None:
            detail["FailureReason"] = reason
    return event


def event_for(
    ctx: Context, backend: str, what: str, job: Job, *, reason: str | None = None
) -> dict[str, Any]:
    """The ``what`` event (running, succeeded, failed, host) of the job's current attempt."""
    assert job.compute_job_id, f"job {job.pk} was not submitted"
    if what == "host" and backend == "sagemaker":
        reason = reason or SAGEMAKER_CAPACITY
    return compute_event(
        SHAPES[backend][what],
        job.pk,
        job.attempt,
        job.compute_job_id,
        reason=reason,
        bucket=ctx.settings.bucket_name,
    )


@dataclass
class World:
    """One test's platform: a context on moto, a compute service, an algorithm, the queue
    that receives the published job events."""

    ctx: Context
    backend: str
    algorithm: Algorithm
    queue_url: str

    def job(self) -> Job:
        return provisioned_job(self.ctx, self.algorithm)

    def get(self, job: Job) -> Job:
        return self.ctx.store.jobs.get(job.pk)

    def event(self, what: str, job: Job, **kwargs: Any) -> dict[str, Any]:
        return event_for(self.ctx, self.backend, what, job, **kwargs)

    def deliver(self, what: str, job: Job, **kwargs: Any) -> str | None:
        return process(self.ctx, self.event(what, job, **kwargs))

    def published(self) -> list[str]:
        return [detail_type for detail_type, _ in published(self.ctx, self.queue_url)]


def build_world(ctx: Context, backend: str) -> World:
    if backend == "batch":
        create_batch_resources(ctx.clients.client("iam"), ctx.clients.batch, ctx.settings)
    queue_url = route_job_events(ctx)
    return World(ctx, backend, make_pipeline_algorithm(ctx), queue_url)


# Fixtures of the callback and sweeper tests; each test module binds them by name.


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws(config={"batch": {"use_docker": False}}):
        yield


@pytest.fixture
def backend() -> str:
    return "batch"


@pytest.fixture
def settings(backend: str) -> Settings:
    return pipeline_settings(backend)


@pytest.fixture
def world(ctx: Context, backend: str) -> World:
    return build_world(ctx, backend)
