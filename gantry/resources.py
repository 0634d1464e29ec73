"""Names and shapes of the AWS resources Gantry uses.

One source of truth: the CDK stacks (infra/), the handlers (lambdas/) and the embedded
local stack (gantry/local/) all read these, so a name changed here changes everywhere.
Pure data: no boto3 or CDK import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --- DynamoDB: one table -------------------------------------------------------------------

PARTITION_KEY = "PK"
SORT_KEY = "SK"
TTL_ATTRIBUTE = "expires_at"


@dataclass(frozen=True)
class GlobalIndex:
    name: str
    partition_key: str
    sort_key: str
    purpose: str


# Every GSI projects ALL attributes: list pages are served from the index alone.
GSI_BY_OWNER = GlobalIndex("GSI1", "GSI1PK", "GSI1SK", "list an owner's items of one type")
GSI_BY_PARENT = GlobalIndex(
    "GSI2", "GSI2PK", "GSI2SK", "list jobs of an algorithm, images of a job"
)
GSI_BY_STATUS = GlobalIndex("GSI3", "GSI3PK", "GSI3SK", "find jobs by status (sweeper)")
GSI_BY_COMPUTE_ID = GlobalIndex("GSI4", "GSI4PK", "GSI4SK", "map a compute job id to a job")
GLOBAL_INDEXES: tuple[GlobalIndex, ...] = (
    GSI_BY_OWNER,
    GSI_BY_PARENT,
    GSI_BY_STATUS,
    GSI_BY_COMPUTE_ID,
)

# --- S3: one bucket, prefixes ----------------------------------------------------------------
# Every key Gantry writes is built here, so the layout is read in one place. Stored data is
# found by these keys: change one and what is already in the bucket can no longer be found.

PREFIX_UPLOADS = "uploads/"
PREFIX_VALUES = "values/"
PREFIX_IO = "io/"
PREFIX_DROPBOX = "dropbox/"
PREFIX_DROPBOX_RESULTS = "dropbox-results/"
PREFIX_MODELS = "models/"
# SageMaker's own model artifacts (an empty /opt/ml/model): written by the SageMaker role,
# read by nobody, kept out of io/ so that role needs no access to any job's data.
PREFIX_SAGEMAKER_OUTPUT = "sagemaker-output/"

RESULT_FILE_SUFFIX = ".sagemaker_shim/inference_result.json"
SIGNATURE_METADATA_KEY = "signature_hmac_sha256"


def io_prefix(job_pk: str, attempt: int) -> str:
    return f"{PREFIX_IO}{job_pk}/{attempt}/"


def io_input_prefix(job_pk: str, attempt: int) -> str:
    return f"{io_prefix(job_pk, attempt)}input/"


def io_output_prefix(job_pk: str, attempt: int) -> str:
    return f"{io_prefix(job_pk, attempt)}output/"


def invocation_key(job_pk: str, attempt: int) -> str:
    return f"{io_prefix(job_pk, attempt)}invocation.json"


def model_key(algorithm_pk: str, model_pk: str) -> str:
    return f"{PREFIX_MODELS}{algorithm_pk}/{model_pk}.tar.gz"


def io_model_key(job_pk: str, attempt: int) -> str:
    """The job's copy of its model, where the runner's per-job credentials reach it."""
    return f"{io_prefix(job_pk, attempt)}model.tar.gz"


def result_key(output_prefix: str) -> str:
    return f"{output_prefix}{RESULT_FILE_SUFFIX}"


def upload_key(username: str, upload_pk: str, filename: str) -> str:
    """Where a user's upload (one of ``uploads/``) is stored."""
    return f"{PREFIX_UPLOADS}{username}/{upload_pk}/{filename}"


def value_key(scope: str, value_pk: int, filename: str) -> str:
    """Where an uploaded file value is kept: ``scope`` is its job's (or archive item's) pk."""
    return f"{PREFIX_VALUES}{scope}/{value_pk}/{filename}"


def output_value_key(job_pk: str, attempt: int, socket_slug: str, filename: str) -> str:
    """Where a job's output file is kept: one key per job, attempt and socket."""
    return f"{PREFIX_VALUES}{job_pk}/{attempt}/{socket_slug}/{filename}"


def archive_value_key(item_pk: str, job_pk: str, socket_slug: str, filename: str) -> str:
    """Where an archive item keeps a file its job wrote: one key per item, job and socket."""
    return f"{PREFIX_VALUES}{item_pk}/{job_pk}/{socket_slug}/{filename}"


def image_file_key(image_pk: str, filename: str) -> str:
    """Where a file of an image (an input imported from uploads, or an output) is kept."""
    return f"{PREFIX_VALUES}images/{image_pk}/{filename}"


def dropbox_folder(slug: str, case: str | None = None) -> str:
    """The drop folder of an algorithm, or of one case folder in it."""
    return f"{PREFIX_DROPBOX}{slug}/" + (f"{case}/" if case is not None else "")


def dropbox_results_prefix(ref: str) -> str:
    """Where the results of the drop ``ref`` (``<algorithm-slug>/<case>``) are written."""
    return f"{PREFIX_DROPBOX_RESULTS}{ref}/"


# --- Events ----------------------------------------------------------------------------------

EVENT_SOURCE = "gantry"
DETAIL_TYPE_JOB_SUCCEEDED = "Gantry Job Succeeded"
DETAIL_TYPE_JOB_FAILED = "Gantry Job Failed"
BATCH_EVENT_SOURCE = "aws.batch"
BATCH_DETAIL_TYPE = "Batch Job State Change"
SAGEMAKER_EVENT_SOURCE = "aws.sagemaker"
SAGEMAKER_DETAIL_TYPE = "SageMaker Training Job State Change"

# Compute job names start with this so event rules match Gantry's jobs only.
COMPUTE_JOB_NAME_PREFIX = "gantry-"

# --- Runner environment ----------------------------------------------------------------------

# Only the runner reads these; it removes them before it starts the algorithm.
ENV_SIGNING_KEY = "GANTRY_SIGNING_KEY_HEX"
# On AWS instead of the key: the function that issues the job's credentials and signing key,
# and the one-time claim ``<job>/<attempt>/<token>`` (gantry.job_credentials).
ENV_CREDENTIALS_FUNCTION = "GANTRY_CREDENTIALS_FUNCTION"
ENV_JOB_CLAIM = "GANTRY_JOB_CLAIM"
ENV_ALGORITHM_CMD = "GANTRY_ALGORITHM_CMD_B64J"
ENV_ALGORITHM_ENTRYPOINT = "GANTRY_ALGORITHM_ENTRYPOINT_B64J"
# The image's own configuration, as its config JSON has it (USER, ENV, WORKDIR, the
# org.grand-challenge.api-method label); the runner applies them to the algorithm.
ENV_ALGORITHM_USER = "GANTRY_ALGORITHM_USER"
ENV_ALGORITHM_ENV = "GANTRY_ALGORITHM_ENV_B64J"
ENV_ALGORITHM_WORKDIR = "GANTRY_ALGORITHM_WORKDIR"
ENV_API_METHOD = "GANTRY_API_METHOD"
# One machine only: an unpacked image root filesystem that becomes / in the sandbox.
ENV_ROOTFS = "GANTRY_ROOTFS"
# One machine only: the algorithm's memory limit (its requires_memory_gb), which the runner
# enforces on the algorithm's processes (on AWS the compute service does).
ENV_MEMORY_LIMIT_MB = "GANTRY_MEMORY_LIMIT_MB"
# An algorithm image's ``image`` value for an image in the local image store:
# "oci:sha256:<config digest hex>" (gantry.oci.store).
OCI_IMAGE_PREFIX = "oci:"

# grand-challenge's image label that selects invoke mode, and its values.
LABEL_API_METHOD = "org.grand-challenge.api-method"
API_METHOD_EXEC = "exec"
API_METHOD_INVOKE = "invoke"

# Where the runner layer puts Gantry's static runner and bwrap inside an imported image.
RUNNER_LAYER_DIR = "/gantry/bin"
RUNNER_BINARY_PATH = f"{RUNNER_LAYER_DIR}/gantry-runner"
RUNNER_BWRAP_PATH = f"{RUNNER_LAYER_DIR}/bwrap"
# Model tarballs are extracted here, read-only to the algorithm (grand-challenge's path).
MODEL_DIR = "/opt/ml/model"

# --- Default names (overridable by settings) --------------------------------------------------

DEFAULT_TABLE_NAME = "gantry"
DEFAULT_BUCKET_NAME = "gantry-data"
DEFAULT_UPLOADS_QUEUE = "gantry-uploads"
DEFAULT_DROPBOX_QUEUE = "gantry-dropbox"
DEFAULT_IMPORTS_QUEUE = "gantry-imports"
DEFAULT_JOB_EVENTS_QUEUE = "gantry-job-events"
DEFAULT_ARCHIVE_RUNS_QUEUE = "gantry-archive-runs"
DEFAULT_EVENT_BUS = "gantry"
DEFAULT_JOB_CREDENTIALS_FUNCTION = "gantry-job-credentials"

# --- Routing (the CDK stacks and the local stack build the same from these) -------------------

# Object-created notifications: key prefix -> the queue whose handler takes it.
BUCKET_NOTIFICATIONS = (
    (PREFIX_UPLOADS, DEFAULT_UPLOADS_QUEUE),
    (PREFIX_DROPBOX, DEFAULT_DROPBOX_QUEUE),
)
JOB_SOURCE_DROPBOX = "dropbox"
# Finished drop-folder jobs go back to the drop-folder queue, which writes their results.
DROPBOX_JOBS_RULE = "gantry-dropbox-jobs"
DROPBOX_JOBS_PATTERN: dict[str, Any] = {
    "source": [EVENT_SOURCE],
    "detail-type": [DETAIL_TYPE_JOB_SUCCEEDED, DETAIL_TYPE_JOB_FAILED],
    "detail": {"source": [JOB_SOURCE_DROPBOX]},
}
JOB_SOURCE_ARCHIVE_RUN = "archive-run"
# Finished jobs of archive runs go to the archive-runs queue: outputs written back into the
# items, and runs waiting for a free slot go on.
ARCHIVE_RUN_JOBS_RULE = "gantry-archive-run-jobs"
ARCHIVE_RUN_JOBS_PATTERN: dict[str, Any] = {
    "source": [EVENT_SOURCE],
    "detail-type": [DETAIL_TYPE_JOB_SUCCEEDED, DETAIL_TYPE_JOB_FAILED],
    "detail": {"source": [JOB_SOURCE_ARCHIVE_RUN]},
}
