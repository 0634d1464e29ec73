"""AWS Batch backend: one Batch job per attempt, on the GPU or the CPU queue.

Job definitions. ``containerOverrides`` can change the command, environment and resources,
but not the image, and every algorithm image has its own runner image (the runner layered
onto the algorithm's image). So each algorithm image gets its own job definition,
``<settings.batch_job_definition>-<image pk>``, registered on first use as a copy of the
shared definition that the stack deploys (``settings.batch_job_definition``: job and
execution roles, logging, retry strategy, command) with only the image replaced. The name
shares the shared definition's prefix, so the stack's IAM policy covers it. Registration is
idempotent enough: a definition of that name with the same image is reused; concurrent first
submissions may register two revisions, which is harmless.

Submission. The invocation's S3 URI goes both into ``parameters["invocation"]`` (the shared
definition's command is ``... --file Ref::invocation``) and into an explicit command
override, so the job does not depend on how the definition was written. The signing key and
the algorithm's ENTRYPOINT/CMD travel as environment overrides; the runner removes them before
the algorithm starts (anyone allowed batch:DescribeJobs can read the key, as with SageMaker's
Environment; the key only signs this attempt's result). Tags name the job and attempt and
are propagated to the ECS task.
Batch has no idempotency token: a repeated submit starts a second job, which the job
callback ignores (it only accepts the compute job id stored with the job).
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gantry.algorithms import AlgorithmImage
from gantry.compute.base import (
    RUNNER_ARGV,
    CapacityError,
    ComputeState,
    SubmitError,
    compute_name,
    hard_time_limit,
    job_tags,
    runner_command,
    runner_environment,
)
from gantry.compute.events import batch_state
from gantry.jobs import Job
from gantry.settings import Settings

log = logging.getLogger(__name__)

INVOCATION_PARAMETER = "invocation"
# Batch's floor for attemptDurationSeconds.
MIN_ATTEMPT_SECONDS = 60
TERMINATE_REASON = "Cancelled by Gantry"
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServerException",
        "ServiceUnavailable",
        "InternalFailure",
    }
)
# Keys of containerProperties that RegisterJobDefinition accepts back.
_CONTAINER_KEYS = (
    "command",
    "jobRoleArn",
    "executionRoleArn",
    "volumes",
    "environment",
    "mountPoints",
    "readonlyRootFilesystem",
    "privileged",
    "ulimits",
    "user",
    "resourceRequirements",
    "linuxParameters",
    "logConfiguration",
    "secrets",
    "networkConfiguration",
    "fargatePlatformConfiguration",
    "ephemeralStorage",
    "runtimePlatform",
    "repositoryCredentials",
)
_DEFINITION_KEYS = ("parameters", "retryStrategy", "timeout", "platformCapabilities")


def map_client_error(error: Exception, action: str) -> Exception:
    """A botocore error as CapacityError (try again later) or SubmitError (give up)."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in THROTTLING_CODES or status >= 500 or "limit" in message.lower():
            return CapacityError(f"{action}: {code}: {message}")
        return SubmitError(f"The job could not be started ({code}: {message})")
    # Connection errors, timeouts: the service may be fine a moment later.
    return CapacityError(f"{action}: {type(error).__name__}: {error}")


def vcpus_for(memory_gb: int) -> int:
    """One vCPU per 4 GiB, as the g4dn and m5 families are built (4 vCPU per 16 GiB)."""
    return max(1, memory_gb // 4)


def resource_requirements(job: Job, cpu_host_vcpus: int = 0) -> list[dict[str, str]]:
    """What the job asks of its host. A GPU job takes the single GPU of its host; a CPU job
    takes every vCPU of its host when ``cpu_host_vcpus`` is set: either way one job per host,
    which the privileged runner container needs (docs/deploy.md, "Isolation")."""
    vcpus = cpu_host_vcpus if cpu_host_vcpus and not job.requires_gpu_type else None
    requirements = [
        {"type": "VCPU", "value": str(vcpus or vcpus_for(job.requires_memory_gb))},
        {"type": "MEMORY", "value": str(job.requires_memory_gb * 1024)},
    ]
    if job.requires_gpu_type:
        requirements.append({"type": "GPU", "value": "1"})
    return requirements


class BatchBackend:
    def __init__(self, settings: Settings, client: Any, *, sandbox: str | None = None) -> None:
        self.settings = settings
        self.client = client
        # The runner's sandbox mode (GANTRY_SANDBOX); None keeps the runner's default, auto.
        self.sandbox = sandbox
        # image pk -> job definition ARN; a definition never changes for an image pk.
        self._definitions: dict[str, str] = {}

    # --- Job definitions ------------------------------------------------------------------

    def definition_name(self, image: AlgorithmImage) -> str:
        return f"{self.settings.batch_job_definition}-{image.pk}"

    def _active(self, name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("describe_job_definitions")
        for page in paginator.paginate(jobDefinitionName=name, status="ACTIVE"):
            found.extend(d for d in page["jobDefinitions"] if d.get("status") == "ACTIVE")
        return sorted(found, key=lambda d: d["revision"])

    def job_definition(self, image: AlgorithmImage) -> str:
        """The ARN of this image's definition, registered from the shared one on first use."""
        if image.pk in self._definitions:
            return self._definitions[image.pk]
        name = self.definition_name(image)
        try:
            existing = [
                d
                for d in self._active(name)
                if (d.get("containerProperties") or {}).get("image") == image.image
            ]
            arn = existing[-1]["jobDefinitionArn"] if existing else self._register(name, image)
        except (ClientError, BotoCoreError) as error:
            raise map_client_error(error, "job definition") from error
        self._definitions[image.pk] = arn
        return arn

    def _register(self, name: str, image: AlgorithmImage) -> str:
        base_name = self.settings.batch_job_definition
        bases = self._active(base_name)
        if not bases:
            # An operator's problem, but the job cannot run: say so plainly.
            raise SubmitError(f"The compute service is not set up (no job definition {base_name})")
        base = bases[-1]
        if "containerProperties" not in base:
            raise SubmitError(
                f"The job definition {base_name} must use containerProperties to be copied"
            )
        container = {k: v for k, v in base["containerProperties"].items() if k in _CONTAINER_KEYS}
        container["image"] = image.image
        container.setdefault("command", [*RUNNER_ARGV, f"Ref::{INVOCATION_PARAMETER}"])
        request: dict[str, Any] = {
            "jobDefinitionName": name,
            "type": "container",
            "containerProperties": container,
            "propagateTags": True,
            "tags": {"gantry:algorithm-image": image.pk},
        }
        request.update({k: base[k] for k in _DEFINITION_KEYS if base.get(k)})
        response = self.client.register_job_definition(**request)
        log.info("registered job definition %s", response["jobDefinitionArn"])
        return str(response["jobDefinitionArn"])

    # --- The backend ----------------------------------------------------------------------

    def queue_for(self, job: Job) -> str:
        gpu = self.settings.batch_job_queue_gpu
        return gpu if job.requires_gpu_type else self.settings.batch_job_queue_cpu

    def submit_request(self, job: Job, image: AlgorithmImage, invocation_uri: str) -> dict:
        environment = runner_environment(job, image, self.settings.job_credentials_function)
        if self.sandbox:
            environment["GANTRY_SANDBOX"] = self.sandbox
        return {
            "jobName": compute_name(job.pk, job.attempt),
            "jobQueue": self.queue_for(job),
            "jobDefinition": self.job_definition(image),
            "parameters": {INVOCATION_PARAMETER: invocation_uri},
            "containerOverrides": {
                "command": runner_command(invocation_uri),
                "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
                "resourceRequirements": resource_requirements(
                    job, self.settings.batch_cpu_host_vcpus
                ),
            },
            "timeout": {"attemptDurationSeconds": max(MIN_ATTEMPT_SECONDS, hard_time_limit(job))},
            "tags": job_tags(job),
            "propagateTags": True,
        }

    def submit(self, job: Job, image: AlgorithmImage, invocation_uri: str) -> str:
        request = self.submit_request(job, image, invocation_uri)
        try:
            response = self.client.submit_job(**request)
        except (ClientError, BotoCoreError) as error:
            raise map_client_error(error, "submit_job") from error
        return str(response["jobId"])

    def cancel(self, compute_job_id: str) -> None:
        # TerminateJob stops RUNNING jobs and cancels those not yet started.
        try:
            self.client.terminate_job(jobId=compute_job_id, reason=TERMINATE_REASON)
        except ClientError as error:
            # An unknown or already finished job: nothing to stop.
            if error.response.get("Error", {}).get("Code") != "ClientException":
                raise

    def describe(self, compute_job_id: str) -> ComputeState | None:
        response = self.client.describe_jobs(jobs=[compute_job_id])
        jobs = response.get("jobs") or []
        return batch_state(jobs[0]) if jobs else None
