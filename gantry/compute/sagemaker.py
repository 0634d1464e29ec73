"""SageMaker backend: one training job per attempt, running the runner in the runner image.

Network isolation: not SageMaker's. ``EnableNetworkIsolation=True`` would cut the *runner*
off S3 too: inputs would have to arrive as InputDataConfig channels under
/opt/ml/input/data/<channel> and outputs leave through /opt/ml/model, the signed result file
included, which needs a second, SageMaker-only mode of the runner and a second way for the
job callback to find results. Instead the training job runs like a Batch job: the runner
(with the job's role) stages data from and to S3 itself, strips every AWS credential from the
algorithm's environment and starts the algorithm in a bubblewrap sandbox with an empty network
namespace, so the algorithm has no network while the runner does. SageMaker runs training
containers unprivileged under Docker's default seccomp profile, which refuses those
namespaces: with ``required`` (``settings.sagemaker_sandbox``, the default) the backend refuses
the job at submission with a message saying so, instead of starting an instance whose runner
would refuse it; ``auto`` runs it unsandboxed and records ``sandboxed: false`` in the result.

Entry point: ``ContainerEntrypoint`` is the runner itself and ``ContainerArguments`` its
arguments (``invoke --file <invocation>``), so the runner starts whatever the image's own
entry point is, and SageMaker's default ``train`` argument never reaches it. Deployments that want a
second fence can add a VPC config with no route out but an S3 gateway endpoint (not modelled
in settings yet).

Names: a training job name has at most 63 characters, ``[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``:
``gantry-<job pk without hyphens>-<attempt>`` (``sagemaker_name``); ``parse_compute_name``
maps it back. The name is the compute job id. SageMaker refuses a second job of the same
name, which makes a repeated submit of the same attempt idempotent.

Image: ``settings.sagemaker_runner_image`` when set, as a template with ``{image}`` (the
algorithm image's URI) and ``{pk}`` (its pk), e.g. ``<ecr repo>:{pk}``; else the algorithm
image's own URI, which must then be its runner image.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gantry.algorithms import AlgorithmImage
from gantry.compute.base import (
    CapacityError,
    ComputeState,
    SubmitError,
    hard_time_limit,
    job_tags,
    refused,
    runner_command,
    runner_environment,
    sagemaker_name,
)
from gantry.compute.events import sagemaker_state
from gantry.jobs import Job
from gantry.resources import PREFIX_SAGEMAKER_OUTPUT
from gantry.settings import Settings

# (GiB of the instance, instance type), smallest first: the first that holds the job wins.
GPU_INSTANCES: dict[str, tuple[tuple[int, str], ...]] = {
    "T4": ((16, "ml.g4dn.xlarge"), (32, "ml.g4dn.2xlarge"), (64, "ml.g4dn.4xlarge")),
    "A10G": ((16, "ml.g5.xlarge"), (32, "ml.g5.2xlarge"), (64, "ml.g5.4xlarge")),
    "A100": ((1152, "ml.p4d.24xlarge"),),
}
CPU_INSTANCES: tuple[tuple[int, str], ...] = (
    (8, "ml.m5.large"),
    (16, "ml.m5.xlarge"),
    (32, "ml.m5.2xlarge"),
    (64, "ml.m5.4xlarge"),
)
VOLUME_GB = 100
UNSANDBOXABLE = (
    "This platform runs jobs on SageMaker, which cannot start the algorithm in the sandbox "
    "that keeps it off the network, and the sandbox is required; an operator can run jobs on "
    "AWS Batch instead or allow SageMaker jobs without it (gantry:sagemakerSandbox=auto)"
)
# SageMaker's limit on one Environment value.
MAX_ENV_VALUE = 512
CAPACITY_CODES = frozenset(
    {
        "ResourceLimitExceeded",
        "ThrottlingException",
        "Throttling",
        "InternalFailure",
        "ServiceUnavailable",
    }
)


def instance_type_for(job: Job) -> str:
    table = GPU_INSTANCES.get(job.requires_gpu_type) if job.requires_gpu_type else CPU_INSTANCES
    if table is None:
        raise SubmitError(f"GPU type {job.requires_gpu_type!r} is not offered")
    for memory_gb, instance in table:
        if job.requires_memory_gb <= memory_gb:
            return instance
    raise SubmitError(f"No instance offers {job.requires_memory_gb} GB of memory")


class SageMakerBackend:
    def __init__(self, settings: Settings, client: Any, *, sandbox: str | None = None) -> None:
        self.settings = settings
        self.client = client
        self.sandbox = sandbox

    def training_image(self, image: AlgorithmImage) -> str:
        template = self.settings.sagemaker_runner_image
        return template.format(image=image.image, pk=image.pk) if template else image.image

    def create_request(self, job: Job, image: AlgorithmImage, invocation_uri: str) -> dict:
        if not self.settings.sagemaker_role_arn:
            raise SubmitError("The compute service is not set up (no SageMaker role)")
        if self.sandbox == "required":
            # SageMaker runs training containers unprivileged under Docker's default seccomp
            # profile, which refuses the namespaces bwrap needs: the runner would refuse the
            # job only after an instance was started for it. Refuse it now, saying why.
            raise SubmitError(UNSANDBOXABLE)
        environment = runner_environment(job, image, self.settings.job_credentials_function)
        if self.sandbox:
            environment["GANTRY_SANDBOX"] = self.sandbox
        too_long = sorted(k for k, v in environment.items() if len(v) > MAX_ENV_VALUE)
        if too_long:
            raise SubmitError(
                "The image's command or entrypoint is too long to run on SageMaker "
                f"({', '.join(too_long)} over {MAX_ENV_VALUE} characters encoded)"
            )
        resources: dict[str, Any] = {
            "InstanceType": instance_type_for(job),
            "InstanceCount": 1,
            "VolumeSizeInGB": VOLUME_GB,
        }
        if self.settings.sagemaker_warm_pool_seconds > 0:
            resources["KeepAlivePeriodInSeconds"] = self.settings.sagemaker_warm_pool_seconds
        output_path = f"s3://{self.settings.bucket_name}/{PREFIX_SAGEMAKER_OUTPUT}"
        command = runner_command(invocation_uri)
        return {
            "TrainingJobName": sagemaker_name(job.pk, job.attempt),
            "AlgorithmSpecification": {
                "TrainingImage": self.training_image(image),
                "TrainingInputMode": "File",
                # The runner is the entry point and gets its arguments; without
                # ContainerArguments SageMaker would pass "train".
                "ContainerEntrypoint": command[:1],
                "ContainerArguments": command[1:],
            },
            "RoleArn": self.settings.sagemaker_role_arn,
            # Not read by the runner (its command has the URI); shown in the console.
            "HyperParameters": {"invocation": invocation_uri},
            "OutputDataConfig": {"S3OutputPath": output_path},
            "ResourceConfig": resources,
            "StoppingCondition": {"MaxRuntimeInSeconds": hard_time_limit(job)},
            "EnableNetworkIsolation": False,
            "Environment": environment,
            "Tags": [{"Key": k, "Value": v} for k, v in job_tags(job).items()],
        }

    def submit(self, job: Job, image: AlgorithmImage, invocation_uri: str) -> str:
        request = self.create_request(job, image, invocation_uri)
        name = request["TrainingJobName"]
        try:
            self.client.create_training_job(**request)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            message = error.response.get("Error", {}).get("Message", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "ResourceInUse":
                # This attempt was submitted before (an at-least-once retry): same job.
                return name
            if code in CAPACITY_CODES or status >= 500:
                raise CapacityError(f"create_training_job: {code}: {message}") from error
            raise refused("create_training_job", code, message) from error
        except BotoCoreError as error:
            raise CapacityError(f"create_training_job: {error}") from error
        return name

    def cancel(self, compute_job_id: str) -> None:
        try:
            self.client.stop_training_job(TrainingJobName=compute_job_id)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            # Unknown, or already finished (ValidationException): nothing to stop.
            if code not in ("ValidationException", "ResourceNotFound"):
                raise

    def describe(self, compute_job_id: str) -> ComputeState | None:
        try:
            response = self.client.describe_training_job(TrainingJobName=compute_job_id)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("ValidationException", "ResourceNotFound"):
                return None
            raise
        return sagemaker_state(response)
