"""One typed settings object, read from environment variables (prefix ``GANTRY_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gantry import resources

ENV_PREFIX = "gantry_"


def _environment() -> dict[str, str]:
    """``GANTRY_*`` variables by field name, the prefix in any case (as pydantic-settings
    reads them: case-insensitive)."""
    return {
        name.lower().removeprefix(ENV_PREFIX): value
        for name, value in os.environ.items()
        if name.lower().startswith(ENV_PREFIX)
    }


class Settings(BaseModel):
    """Values given to the constructor win over ``GANTRY_<FIELD>`` variables, which win over the
    defaults. A plain model rather than pydantic-settings' BaseSettings: importing that costs
    about as much as boto3 (it loads every settings source, cloud vaults included), and each
    API cold start pays for it. Every field is a scalar, which pydantic parses from the
    variable's text."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_environment(), **values})

    table_name: str = resources.DEFAULT_TABLE_NAME
    bucket_name: str = resources.DEFAULT_BUCKET_NAME
    region: str = Field(default="us-east-1")
    # None means boto3's own resolution (AWS_ENDPOINT_URL or the real AWS endpoints).
    endpoint_url: str | None = None
    # Endpoint written into presigned S3 URLs handed to clients, when they reach S3 by another
    # address than this process does (the local stack's HTTPS gateway); None: endpoint_url.
    presign_endpoint_url: str | None = None
    # Public base of the API, used to build every api_url and file URL.
    # Empty: derived from each request (host, and stage on execute-api hosts).
    api_base_url: str = ""

    compute_backend: Literal["batch", "sagemaker", "local"] = "batch"
    batch_job_queue_gpu: str = "gantry-gpu"
    batch_job_queue_cpu: str = "gantry-cpu"
    batch_job_definition: str = "gantry-runner"
    # vCPUs of every host of the CPU queue: a CPU job requests them all, so it has its host to
    # itself (docs/deploy.md "Isolation"). 0: vCPUs by memory, hosts may be shared.
    batch_cpu_host_vcpus: int = 0
    sagemaker_role_arn: str = ""
    sagemaker_runner_image: str = ""
    sagemaker_warm_pool_seconds: int = 0
    # The runner's sandbox mode on SageMaker, which cannot run a privileged container:
    # "required" fails a job the runner cannot sandbox rather than run it with network.
    sagemaker_sandbox: Literal["required", "auto", "off"] = "required"
    local_workers: int = 2
    # Local backend: an invoke-mode image's server stays up this long after its last job.
    local_invoke_idle_seconds: float = Field(default=300.0, gt=0)
    # Local backend: exec-mode runners are forked from one warm runner that imported the
    # runner once (batch_runner.forkserver); off: each job starts an interpreter of its own.
    local_fork_server: bool = True
    # Per-job data credentials (gantry.job_credentials): the function runners call for them
    # and the role it assumes. Empty: runners get the signing key in their environment and
    # use their own role (the local stack).
    job_credentials_function: str = ""
    job_data_role_arn: str = ""

    event_bus_name: str = resources.DEFAULT_EVENT_BUS
    # SQS queue the upload handler reads: S3 upload events and "validate-inputs" messages.
    uploads_queue_url: str = ""
    # SQS queue of archive runs: pages of items to make jobs of, and their jobs' ends.
    archive_runs_queue_url: str = ""
    dropbox_owner: str = "dropbox"
    # Algorithm image import on AWS (docs/deploy.md "Importing an algorithm image"): the queue
    # the API sends imports to (empty: the uploads queue), the ECR repository images are pushed
    # to (empty: no registry; the local stack stores images itself), the runner layer file.
    imports_queue_url: str = ""
    image_repository: str = ""
    runner_layer_path: str = "/opt/gantry-runner-layer.tar"
    # An import of an archive larger than this, or one the import function cannot finish in
    # its time, runs as a Batch job of ``import_job_definition`` on the CPU queue
    # (gantry.pipeline.import_job); empty: every import runs in the function.
    import_job_definition: str = ""
    import_job_threshold_bytes: int = Field(default=5 * 1024**3, ge=0)
    # The bioimage.io runtime image a bioimage.io model algorithm runs (an ``oci:sha256:…`` of
    # the local image store or a registry reference ``host/repository@sha256:…``). Empty: the
    # runtime runs with this installation's own interpreter (one machine only).
    bioimageio_image: str = ""
    # The runtime image for bioimage.io algorithms that ask for a GPU (onnxruntime-gpu); empty:
    # they run bioimageio_image too.
    bioimageio_gpu_image: str = ""
    # Attempts after host or spot failures; capacity back-offs do not count.
    max_attempts: int = 3
    max_capacity_retries: int = 20
    # Seconds past a job's time limit before the sweeper asks the backend about it.
    sweeper_margin_seconds: int = 900
    # Image and model imports that failed or were cancelled are removed by the sweeper after this
    # long (gantry.pipeline.sweeper.import_retention_cutoff).
    failed_import_retention_seconds: int = Field(default=7 * 24 * 3600, ge=0)
    # Seconds a submitted job may wait for an instance (Batch RUNNABLE) before it fails.
    compute_start_timeout_seconds: int = Field(default=3600, ge=300)
    presigned_url_seconds: int = 3600
    # Unfinished jobs at once (grand-challenge's defaults): per user, per algorithm, in all.
    max_active_jobs_per_user: int = Field(default=16, ge=1)
    max_active_jobs_per_algorithm: int = Field(default=16, ge=1)
    max_active_jobs: int = Field(default=128, ge=1)
    # Credits a user may spend a calendar month, and the compute cost (US cents) they buy;
    # a job costs at least monthly_credits / max_jobs_per_month (grand-challenge's defaults).
    monthly_credits: int = Field(default=1000, ge=0)
    monthly_credit_cents: int = Field(default=1000, ge=1)
    max_jobs_per_month: int = Field(default=50, ge=1)
    # Free jobs of each algorithm image for its algorithm's editors (all editors together),
    # before their jobs spend credits like anyone's (grand-challenge's default).
    complimentary_editor_jobs: int = Field(default=5, ge=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process; tests build their own ``Settings(...)`` instead of patching."""
    return Settings()
