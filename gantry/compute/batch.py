"""AWS Batch backend: one Batch job per attempt, on the GPU or the CPU queue.

Job definitions. ``containerOverrides`` can change the command, environment and resources,
but not the image, and every algorithm image has its own runner image (the runner layered
onto the algorithm's image). So each algorithm image gets its own job definition, registered
on first use as a copy of one of the two shared definitions the stack deploys (job and
execution roles, logging, environment, command) with only the image replaced:
``<settings.batch_job_definition>-<image pk>`` from the GPU definition for GPU jobs, and
``<settings.batch_job_definition>-cpu-<image pk>`` from ``…-cpu`` for CPU jobs (an override can
change the GPU count but never drop the GPU requirement, so a CPU job on a copy of the GPU
definition could never be placed). The names share the shared definition's prefix, so the
stack's IAM policy covers them. A copy is tagged with the revision it was made from and is
reused only while that revision is the shared definition's latest: a stack update that
changes the shared definition (roles, environment, logging) reaches every image's next job.
Concurrent first submissions may register two revisions, which is harmless.

Memory. ECS hands a job only what the instance has left after the OS and its agent, less than
the nominal memory: a job asking for all 16 GiB of a g4dn.xlarge would never be placed there.
A job of N GB requests ``N * 1024 * 7/8`` MiB (``ecs_memory_mib``): a 16 GB T4 job asks for
14,336 MiB and fits a g4dn.xlarge (about 15.3 GiB available to ECS); 32 GB fits a
g4dn.2xlarge or an m6i.2xlarge.

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
    refused,
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
        return refused(action, code, message)
    # Connection errors, timeouts: the service may be fine a moment later.
    return CapacityError(f"{action}: {type(error).__name__}: {error}")


def vcpus_for(memory_gb: int) -> int:
    """One vCPU per 4 GiB, as the g4dn and m5 families are built (4 vCPU per 16 GiB)."""
    return max(1, memory_gb // 4)


# The part of an instance's nominal memory a job may ask for (ECS keeps the rest).
ECS_MEMORY_FRACTION = (7, 8)
CPU_DEFINITION_SUFFIX = "-cpu"
# Tag of a per-image definition: the shared definition revision it was copied from.
TAG_BASE_DEFINITION = "gantry:base-definition"
TAG_IMAGE = "gantry:algorithm-image"


def ecs_memory_mib(memory_gb: int) -> int:
    """MiB to request for a job of ``memory_gb`` so it fits an instance of that memory."""
    numerator, denominator = ECS_MEMORY_FRACTION
    return memory_gb * 1024 * numerator // denominator


def resource_requirements(job: Job, cpu_host_vcpus: int = 0) -> list[dict[str, str]]:
    """What the job asks of its host. A GPU job takes the single GPU of its host; a CPU job
    takes every vCPU of its host when ``cpu_host_vcpus`` is set: either way one job per host,
    which the privileged runner container needs (docs/deploy.md, "Isolation")."""
    vcpus = cpu_host_vcpus if cpu_host_vcpus and not job.requires_gpu_type else None
    requirements = [
        {"type": "VCPU", "value": str(vcpus or vcpus_for(job.requires_memory_gb))},
        {"type": "MEMORY", "value": str(ecs_memory_mib(job.requires_memory_gb))},
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
        # (image pk, shared definition ARN) -> this image's definition ARN.
        self._definitions: dict[tuple[str, str], str] = {}

    # --- Job definitions ------------------------------------------------------------------

    def base_definition_name(self, *, gpu: bool) -> str:
        base = self.settings.batch_job_definition
        return base if gpu else f"{base}{CPU_DEFINITION_SUFFIX}"

    def definition_name(self, image: AlgorithmImage, *, gpu: bool = True) -> str:
        return f"{self.base_definition_name(gpu=gpu)}-{image.pk}"

    def _active(self, name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("describe_job_definitions")
        for page in paginator.paginate(jobDefinitionName=name, status="ACTIVE"):
            found.extend(d for d in page["jobDefinitions"] if d.get("status") == "ACTIVE")
        return sorted(found, key=lambda d: d["revision"])

    def job_definition(self, image: AlgorithmImage, *, gpu: bool = True) -> str:
        """The ARN of this image's definition, copied from the latest shared one."""
        try:
            base = self._base(gpu=gpu)
            key = (image.pk, str(base["jobDefinitionArn"]))
            if key in self._definitions:
                return self._definitions[key]
            name = self.definition_name(image, gpu=gpu)
            existing = [
                d
                for d in self._active(name)
                if (d.get("containerProperties") or {}).get("image") == image.image
                and (d.get("tags") or {}).get(TAG_BASE_DEFINITION) == key[1]
            ]
            arn = (
                existing[-1]["jobDefinitionArn"] if existing else self._register(name, image, base)
            )
        except (ClientError, BotoCoreError) as error:
            raise map_client_error(error, "job definition") from error
        self._definitions[key] = arn
        return arn

    def _base(self, *, gpu: bool) -> dict[str, Any]:
        base_name = self.base_definition_name(gpu=gpu)
        bases = self._active(base_name)
        if not bases:
            # An operator's problem (the log names the definition), not the user's.
            log.error("no active job definition %s", base_name)
            raise SubmitError("The compute service is not set up for this kind of job")
        base = bases[-1]
        if "containerProperties" not in base:
            log.error("job definition %s has no containerProperties to copy", base_name)
            raise SubmitError("The compute service is not set up for this kind of job")
        return base

    def _register(self, name: str, image: AlgorithmImage, base: dict[str, Any]) -> str:
        container = {k: v for k, v in base["containerProperties"].items() if k in _CONTAINER_KEYS}
        container["image"] = image.image
        container.setdefault("command", [*RUNNER_ARGV, f"Ref::{INVOCATION_PARAMETER}"])
        request: dict[str, Any] = {
            "jobDefinitionName": name,
            "type": "container",
            "containerProperties": container,
            "propagateTags": True,
            "tags": {TAG_IMAGE: image.pk, TAG_BASE_DEFINITION: str(base["jobDefinitionArn"])},
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
            "jobDefinition": self.job_definition(image, gpu=bool(job.requires_gpu_type)),
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
