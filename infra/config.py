"""Deployment knobs, read once from CDK context into one typed object.

Everything an operator may change per deployment is a context value (``cdk deploy -c
gantry:spot=true``) rather than a CloudFormation parameter: context decides the *shape* of the
template (whether a spot environment exists, which instance types, whether a custom domain is
wired), is visible to the assertion tests, and keeps the template free of parameter
indirection. Names of tables, queues, prefixes and the event bus never come from here: they come
from ``gantry.resources`` and ``gantry.settings`` so that the handlers and the local stack agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from constructs import Node

from batch_runner.config import SandboxMode
from gantry.algorithms import MAX_MEMORY_GB

PREFIX = "gantry:"

# Feature flags the constructs rely on. ``python app.py`` does not read cdk.json, so the app
# passes these itself; CLI context (-c) still overrides them.
FEATURE_FLAGS: dict[str, Any] = {
    # Server access logs are delivered via a bucket policy, not the legacy LogDeliveryWrite ACL
    # (ACLs are disabled on every Gantry bucket).
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    "@aws-cdk/aws-iam:minimizePolicies": True,
    "@aws-cdk/core:enablePartitionLiterals": True,
    "@aws-cdk/aws-lambda:recognizeLayerVersion": True,
    "@aws-cdk/aws-events:eventsTargetQueueSameAccount": True,
    "@aws-cdk/aws-sqs:dlqAlarmEnabled": False,
    "@aws-cdk/aws-apigateway:disableCloudWatchRole": False,
}


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _as_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value if str(v).strip())
    text = str(value).strip()
    if text.startswith("["):
        return tuple(str(v) for v in json.loads(text))
    return tuple(v.strip() for v in text.split(",") if v.strip())


@dataclass(frozen=True)
class GantryConfig:
    """Typed view of the ``gantry:*`` context keys; defaults give a cheap, safe deployment."""

    # Data
    destroy_on_delete: bool = False
    uploads_expire_days: int = 7
    io_expire_days: int = 30
    noncurrent_versions_expire_days: int = 30
    access_logs_expire_days: int = 90
    # Compute
    gpu_instance_types: tuple[str, ...] = ("g4dn.xlarge", "g4dn.2xlarge", "g4dn.4xlarge")
    gpu_max_vcpus: int = 64
    # One size (8 vCPUs) in three memory ratios: every CPU job requests all of a host's vCPUs,
    # so no two privileged runners share a host (docs/deploy.md "Isolation").
    cpu_instance_types: tuple[str, ...] = ("c6i.2xlarge", "m6i.2xlarge", "r6i.2xlarge")
    cpu_max_vcpus: int = 32
    spot: bool = False
    capacity_wait_minutes: int = 30
    misconfiguration_wait_minutes: int = 10
    job_timeout_minutes: int = 120
    # A job still waiting for an instance after this long fails, saying what to check.
    start_timeout_minutes: int = 60
    root_volume_gib: int = 100
    availability_zones: tuple[str, ...] = ()
    runner_placeholder_image: str = "public.ecr.aws/docker/library/python:3.12-slim"
    # The runner layer ``make runner`` builds (relative to the repository), appended to every
    # imported algorithm image; without it the stack deploys but imports fail with a reason.
    runner_layer: str = "dist/runner/gantry-runner-layer.tar"
    # The image of the import job (docs/deploy.md "Importing an algorithm image"): Python 3.11+
    # with this repository installed and the runner layer at /opt/gantry-runner-layer.tar.
    # Empty: no import job; every import runs in the import function (15 minutes at most).
    importer_image: str = ""
    # The algorithm's isolation (docs/deploy.md "Isolation"): a privileged runner container is
    # the only way bubblewrap can build its sandbox on Batch, and with it the runner refuses to
    # run a job unsandboxed. False trades the no-network guarantee for an unprivileged container.
    runner_privileged: bool = True
    compute_backend: str = "batch"
    sagemaker_runner_image: str = ""
    # The bioimage.io runtime image bioimage.io model algorithms run (GANTRY_BIOIMAGEIO_IMAGE):
    # the reference `gantry bioimageio build-image --push ecr` prints (docs/deploy.md); empty:
    # registering a bioimage.io package fails with a message saying so.
    bioimageio_image: str = ""
    # The same for algorithms that ask for a GPU (GANTRY_BIOIMAGEIO_GPU_IMAGE); empty: they run
    # bioimageio_image too.
    bioimageio_gpu_image: str = ""
    # SageMaker cannot run a privileged container; "required" fails jobs the runner cannot
    # sandbox there, "auto" runs them unsandboxed (with the training job's network).
    sagemaker_sandbox: str = "required"
    # API
    api_rate_limit: int = 50
    api_burst_limit: int = 100
    domain_name: str = ""
    certificate_arn: str = ""
    waf_acl_arn: str = ""
    # Behaviour
    dropbox_owner: str = "dropbox"
    log_level: str = "INFO"
    log_retention_days: int = 30
    job_events_reserved_concurrency: int = 0
    sqs_max_concurrency: int = 10
    alarm_email: str = ""

    @property
    def runner_sandbox(self) -> SandboxMode:
        """The runner's sandbox mode (``GANTRY_SANDBOX``) that goes with the container's rights.

        Unprivileged, bwrap cannot create namespaces under Docker's seccomp profile, so
        ``required`` would fail every job; ``auto`` runs it unsandboxed and says so in the log
        and in the result (``sandboxed: false``).
        """
        return "required" if self.runner_privileged else "auto"

    @property
    def cpu_host_vcpus(self) -> int:
        """vCPUs of every CPU host, which each CPU job requests whole (one job per host)."""
        return instance_vcpus(self.cpu_instance_types[0])

    @classmethod
    def from_node(cls, node: Node) -> GantryConfig:
        """Build from ``gantry:<camelCaseName>`` context values; unknown keys are ignored."""
        values: dict[str, Any] = {}
        for name, field in cls.__dataclass_fields__.items():
            raw = node.try_get_context(PREFIX + _camel(name))
            if raw is None:
                continue
            default = field.default
            if isinstance(default, bool):
                values[name] = _as_bool(raw)
            elif isinstance(default, int):
                values[name] = int(raw)
            elif isinstance(default, tuple):
                values[name] = _as_list(raw)
            else:
                values[name] = str(raw)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        gpu_families = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5")
        for itype in self.gpu_instance_types:
            if itype.split(".")[0] not in gpu_families:
                raise ValueError(f"gantry:gpuInstanceTypes: {itype!r} is not a GPU instance type")
        if not self.cpu_instance_types:
            raise ValueError("gantry:cpuInstanceTypes must name at least one instance type")
        sizes = {itype: instance_vcpus(itype) for itype in self.cpu_instance_types}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                "gantry:cpuInstanceTypes must all have the same number of vCPUs: each CPU job "
                "takes a whole host so that no two jobs share one (docs/deploy.md, Isolation); "
                + ", ".join(f"{itype} has {vcpus}" for itype, vcpus in sizes.items())
            )
        # Every memory size the API accepts must fit some host of each kind (the backend asks
        # for 7/8 of it, what ECS can hand out: gantry.compute.batch.ecs_memory_mib).
        for key, types in (
            ("gpuInstanceTypes", self.gpu_instance_types),
            ("cpuInstanceTypes", self.cpu_instance_types),
        ):
            if types and max(instance_memory_gib(t) for t in types) < MAX_MEMORY_GB:
                raise ValueError(
                    f"gantry:{key} must include an instance type with at least "
                    f"{MAX_MEMORY_GB} GiB: algorithms may ask for up to {MAX_MEMORY_GB} GB"
                )
        if self.compute_backend not in {"batch", "sagemaker"}:
            raise ValueError("gantry:computeBackend must be 'batch' or 'sagemaker'")
        if self.sagemaker_sandbox not in {"required", "auto"}:
            raise ValueError("gantry:sagemakerSandbox must be 'required' or 'auto'")
        if bool(self.domain_name) != bool(self.certificate_arn):
            raise ValueError("gantry:domainName and gantry:certificateArn go together")
        if self.capacity_wait_minutes < 10 or self.misconfiguration_wait_minutes < 10:
            raise ValueError("Batch job-state time limits must be at least 10 minutes")


def instance_vcpus(instance_type: str) -> int:
    """vCPUs of an EC2 size as the general-purpose families have them: large 2, xlarge 4,
    <n>xlarge 4n."""
    size = instance_type.partition(".")[2]
    if size == "large":
        return 2
    if size == "xlarge":
        return 4
    count = size.removesuffix("xlarge")
    if size.endswith("xlarge") and count.isdigit():
        return 4 * int(count)
    raise ValueError(
        f"gantry:cpuInstanceTypes: the vCPUs of {instance_type!r} are not known; use "
        "large, xlarge or <n>xlarge sizes"
    )


# GiB per vCPU of the instance families Gantry is deployed on (at least: p3 has 7.6).
MEMORY_PER_VCPU = {"c": 2, "m": 4, "r": 8, "g": 4, "p": 7}


def instance_memory_gib(instance_type: str) -> int:
    """Nominal memory of an EC2 size (at least) from its family's GiB per vCPU."""
    family = instance_type[:1]
    if family not in MEMORY_PER_VCPU:
        known = ", ".join(MEMORY_PER_VCPU)
        raise ValueError(f"the memory of {instance_type!r} is not known (families {known})")
    return MEMORY_PER_VCPU[family] * instance_vcpus(instance_type)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)
