"""What every compute backend offers, and what they share: names, errors, the runner's command.

A backend starts one *attempt* of a job: the job runner (``batch_runner``) inside the
algorithm's image, reading the invocation from S3 and writing a signed result. On AWS the
runner is the static executable of the runner layer (``make runner``) that is appended to
every algorithm image; the local backend runs ``python -m batch_runner`` on the host. The
backend does not decide success; the job callback does, from the result file.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gantry.algorithms import AlgorithmImage
from gantry.job_credentials import claim_value
from gantry.jobs import Job
from gantry.resources import (
    COMPUTE_JOB_NAME_PREFIX,
    ENV_ALGORITHM_CMD,
    ENV_ALGORITHM_ENTRYPOINT,
    ENV_CREDENTIALS_FUNCTION,
    ENV_JOB_CLAIM,
    ENV_SIGNING_KEY,
    RUNNER_BINARY_PATH,
)

logger = logging.getLogger(__name__)

ComputeStatus = Literal["running", "succeeded", "failed"]

# The runner downloads inputs before and uploads outputs after the algorithm's own time limit
# (which the runner enforces itself); the compute service's hard limit leaves room for that.
RUNNER_MARGIN_SECONDS = 600

# The runner layer's executable: it needs nothing from the image (no Python, no libc).
RUNNER_ARGV = (RUNNER_BINARY_PATH, "invoke", "--file")

TAG_JOB = "gantry:job"
TAG_ATTEMPT = "gantry:attempt"

# Batch job names: letters, numbers, hyphens and underscores, up to 128 characters.
_BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# SageMaker training job names: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}.
_SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class ComputeError(Exception):
    """A compute job could not be started."""


class CapacityError(ComputeError):
    """Retryable: throttling, no capacity, a service limit or a transient service fault."""


class SubmitError(ComputeError):
    """Permanent for this job; the message is safe to show to the job's creator."""


# --- What a user may read of the compute service's words ----------------------------------
# AWS's error and status texts name ARNs, roles, instance ids and account details: they go to
# the operators' logs, and the job's creator reads one of these instead.

REFUSED_MESSAGE = (
    "The compute service refused to start the job; an operator can find why in the logs"
)
_PUBLIC_REASONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^Host EC2|spot|instance.*terminat", re.I), "its compute host went away"),
    (
        re.compile(r"CAPACITY|InsufficientCapacity|CapacityError|ResourceLimitExceeded", re.I),
        "no compute instance could be had for it; an operator should check the account's "
        "EC2 service quota for the instance family and the compute environment's instance "
        "types",
    ),
    (re.compile(r"MISCONFIGURATION", re.I), "no compute environment can run a job of its size"),
    (
        re.compile(r"CannotPullContainer|ImagePull|image", re.I),
        "its container image could not be pulled",
    ),
    (
        re.compile(r"CannotStartContainer|ResourceInitialization|Task failed to start", re.I),
        "its container could not be started",
    ),
    (re.compile(r"Cancelled by Gantry", re.I), "it was cancelled"),
    (re.compile(r"Essential container in task exited", re.I), "its container exited early"),
    (re.compile(r"^AlgorithmError", re.I), "its container exited with an error"),
    (re.compile(r"stopped", re.I), "it was stopped"),
    (re.compile(r"no longer knows", re.I), "the compute service no longer knows it"),
)


def refused(action: str, code: str, message: str) -> SubmitError:
    """A permanent refusal by the service: the details for the log, a plain message for the
    user."""
    logger.error("%s refused: %s: %s", action, code, message)
    return SubmitError(REFUSED_MESSAGE)


def public_reason(reason: str) -> str:
    """Why a compute job ended, in words that name nothing of the account."""
    for pattern, words in _PUBLIC_REASONS:
        if pattern.search(reason):
            return words
    return "the compute service stopped it"


@dataclass(frozen=True)
class ComputeState:
    """One compute job's state, the same for every backend, from an API call or an event."""

    compute_job_id: str
    name: str
    status: ComputeStatus
    # The service's own status word (RUNNABLE, RUNNING, InProgress, Stopped, ...).
    raw_status: str
    exit_code: int | None = None
    reason: str = ""
    # The host, spot capacity or service failed, not the algorithm: worth a new attempt.
    retryable: bool = False
    job_pk: str | None = None
    attempt: int | None = None
    # Milliseconds since the epoch, as both services report them.
    started_at: int | None = None
    stopped_at: int | None = None

    @property
    def is_final(self) -> bool:
        return self.status != "running"


class ComputeBackend(Protocol):
    def submit(self, job: Job, image: AlgorithmImage, invocation_uri: str) -> str:
        """Start one attempt; returns the compute job id. Raises CapacityError or SubmitError."""
        ...

    def cancel(self, compute_job_id: str) -> None:
        """Stop the compute job; a job already finished or unknown is not an error."""
        ...

    def describe(self, compute_job_id: str) -> ComputeState | None:
        """The job's state, or None when the service no longer knows it."""
        ...


# --- Names --------------------------------------------------------------------------------


def compute_name(job_pk: str, attempt: int) -> str:
    """``gantry-<job pk>-<attempt>``: Batch and local job names."""
    name = f"{COMPUTE_JOB_NAME_PREFIX}{job_pk}-{attempt}"
    if not _BATCH_NAME.match(name):
        raise SubmitError(f"The job id {job_pk!r} cannot be used as a compute job name")
    return name


def sagemaker_name(job_pk: str, attempt: int) -> str:
    """``gantry-<job pk without hyphens>-<attempt>``: fits SageMaker's 63 characters.

    A UUID with hyphens gives 7 + 36 + 1 + digits > 44 characters, which fits too, but
    stripping the hyphens keeps room for long attempt numbers and non-UUID keys; the
    mapping is reversible for UUIDs (see ``parse_compute_name``).
    """
    name = f"{COMPUTE_JOB_NAME_PREFIX}{job_pk.replace('-', '')}-{attempt}"
    if not _SAGEMAKER_NAME.match(name):
        raise SubmitError(f"The job id {job_pk!r} cannot be used as a training job name")
    return name


def parse_compute_name(name: str) -> tuple[str, int] | None:
    """(job pk, attempt) from either name form, or None when it is not a Gantry job's name.

    32 hex digits are a UUID whose hyphens were stripped for SageMaker: they come back in
    the canonical 8-4-4-4-12 form.
    """
    if not name.startswith(COMPUTE_JOB_NAME_PREFIX):
        return None
    body, sep, attempt = name.removeprefix(COMPUTE_JOB_NAME_PREFIX).rpartition("-")
    if not sep or not body or not attempt.isdigit() or not attempt.isascii():
        return None
    if _HEX32.match(body):
        body = f"{body[:8]}-{body[8:12]}-{body[12:16]}-{body[16:20]}-{body[20:]}"
    return body, int(attempt)


# --- The runner ---------------------------------------------------------------------------


def runner_command(invocation_uri: str) -> list[str]:
    """The runner's command inside the algorithm's image (Batch's command, SageMaker's
    ContainerEntrypoint)."""
    if not invocation_uri.startswith("s3://"):
        raise ValueError(f"{invocation_uri!r} is not an s3:// URI")
    return [*RUNNER_ARGV, invocation_uri]


def runner_environment(
    job: Job, image: AlgorithmImage, credentials_function: str = ""
) -> dict[str, str]:
    """What the runner reads (and removes before the algorithm starts).

    With a credentials function the environment, which DescribeJobs shows, carries only a
    one-time claim; the runner trades it for the signing key and credentials scoped to its
    own job (``gantry.job_credentials``). Without one (the local stack) the key itself.
    """
    if not job.signing_key:
        raise SubmitError("The job has no signing key; its result could not be verified")
    if credentials_function:
        env = {
            ENV_CREDENTIALS_FUNCTION: credentials_function,
            ENV_JOB_CLAIM: claim_value(job),
        }
    else:
        env = {ENV_SIGNING_KEY: job.signing_key}
    if image.entrypoint:
        env[ENV_ALGORITHM_ENTRYPOINT] = encode_b64j(image.entrypoint)
    if image.command:
        env[ENV_ALGORITHM_CMD] = encode_b64j(image.command)
    return env


def encode_b64j(argv: Sequence[str]) -> str:
    """base64(JSON list), the form the runner (and grand-challenge's shim) decodes."""
    return base64.b64encode(json.dumps(list(argv)).encode()).decode()


def job_tags(job: Job) -> dict[str, str]:
    return {TAG_JOB: job.pk, TAG_ATTEMPT: str(job.attempt)}


def hard_time_limit(job: Job) -> int:
    return job.time_limit + RUNNER_MARGIN_SECONDS
