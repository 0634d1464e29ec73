"""Credentials scoped to one job attempt's data, handed to that attempt's runner only.

Every job's container runs the same runner under the same role, so the role itself can hold
no patient data: the Batch job role and the SageMaker role may only call the credentials
function (``lambdas/job_credentials``). The runner calls it at start with a claim naming its
job and attempt; the function assumes the job-data role with a *session policy* limited to
``io/<job>/<attempt>/`` and returns those credentials together with the job's signing key.

Why this shape:
- The scope is decided by the platform from its own record of the job, never by the caller:
  a subverted runner cannot widen it (with STS AssumeRole done by the runner itself, or an
  S3 Access Grants request, the caller names the scope, so its role would need every job's).
- The claim token is HMAC(signing key, "claim:<job>:<attempt>"): it travels in the compute
  job's environment, which ``DescribeJobs``/``DescribeTrainingJob`` show, so it is made
  worthless there: it can be redeemed once per attempt, only by a principal allowed to invoke
  the function (the job roles, which cannot call DescribeJobs), and only while the attempt is
  not finished. A second redemption is refused and logged, and the real runner then fails the
  attempt visibly rather than share its data.
- Credentials from a Lambda function's role are *chained* role sessions, which STS caps at one
  hour, while a job may wait and run for 24 hours and more. So the claim's answer carries a
  refresh token (HMAC(signing key, "refresh:…"), never in any environment or request log) with
  which the runner renews its credentials before they expire, for as long as the attempt is
  not finished. Presigned URLs are not used: they would expire with the credentials too.
- The signing key leaves the platform only in the claim's answer (Lambda invoke payloads are
  not recorded by CloudTrail), no longer in the compute job's environment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gantry import resources
from gantry.jobs import Job

logger = logging.getLogger(__name__)

# STS caps chained role sessions at one hour.
SESSION_SECONDS = 3600
# What the runner does with its job's data: read the invocation and inputs, write outputs
# and the result (multipart uploads of large outputs included).
JOB_DATA_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload")
REFUSED = "The job's credentials cannot be issued"


class CredentialsRefused(Exception):
    """The claim or refresh is not valid for this attempt (message safe for the runner)."""


class CredentialsRequest(BaseModel):
    """What the runner sends: its job, attempt, and a claim token or its refresh token."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1, max_length=128)
    attempt: int = Field(ge=1)
    claim: str | None = Field(default=None, max_length=128)
    refresh: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _one_token(self) -> CredentialsRequest:
        if (self.claim is None) == (self.refresh is None):
            raise ValueError("exactly one of claim and refresh is required")
        return self


def _token(signing_key: str, purpose: str, job_pk: str, attempt: int) -> str:
    message = f"{purpose}:{job_pk}:{attempt}".encode()
    return hmac.new(bytes.fromhex(signing_key), message, hashlib.sha256).hexdigest()


def claim_token(job: Job) -> str:
    """The one-time token the compute job's environment carries for this attempt."""
    return _token(job.signing_key, "claim", job.pk, job.attempt)


def refresh_token(job: Job) -> str:
    return _token(job.signing_key, "refresh", job.pk, job.attempt)


def claim_value(job: Job) -> str:
    """``<job>/<attempt>/<claim token>``: the runner's ``GANTRY_JOB_CLAIM``."""
    return f"{job.pk}/{job.attempt}/{claim_token(job)}"


def session_policy(bucket_arn: str, job_pk: str, attempt: int) -> dict[str, Any]:
    """The session policy: this attempt's ``io/`` prefix, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ThisJobAttemptOnly",
                "Effect": "Allow",
                "Action": list(JOB_DATA_ACTIONS),
                "Resource": f"{bucket_arn}/{resources.io_prefix(job_pk, attempt)}*",
            }
        ],
    }


def bucket_arn(role_arn: str, bucket: str) -> str:
    """The bucket's ARN in the partition of the role (aws, aws-cn, aws-us-gov)."""
    partition = role_arn.split(":")[1] if role_arn.startswith("arn:") else "aws"
    return f"arn:{partition}:s3:::{bucket}"


def _check(job: Job | None, request: CredentialsRequest) -> Job:
    if job is None or not job.signing_key:
        raise CredentialsRefused(f"{REFUSED}: unknown job")
    if job.attempt != request.attempt or job.status.is_terminal:
        raise CredentialsRefused(f"{REFUSED}: the attempt is not running")
    return job


def issue(ctx: Any, request: CredentialsRequest) -> dict[str, Any]:
    """Redeem a claim (once per attempt) or a refresh token; raises CredentialsRefused."""
    role_arn = ctx.settings.job_data_role_arn
    if not role_arn:
        raise CredentialsRefused(f"{REFUSED}: no job data role is configured")
    job = _check(ctx.store.jobs.find(request.job), request)
    answer: dict[str, Any] = {}
    if request.claim is not None:
        if not hmac.compare_digest(request.claim, claim_token(job)):
            raise CredentialsRefused(f"{REFUSED}: the claim is not valid")

        def redeem(current: Job) -> Job | None:
            if current.credentials_claimed >= request.attempt:
                return None
            _check(current, request)
            return current.model_copy(update={"credentials_claimed": request.attempt})

        if ctx.store.jobs.update(job.pk, redeem) is None:
            logger.warning("second claim of job %s attempt %s refused", job.pk, job.attempt)
            raise CredentialsRefused(f"{REFUSED}: the claim was already redeemed")
        answer["refresh"] = refresh_token(job)
        answer["signing_key"] = job.signing_key
    else:
        valid = hmac.compare_digest(request.refresh or "", refresh_token(job))
        if not valid or job.credentials_claimed != request.attempt:
            raise CredentialsRefused(f"{REFUSED}: the refresh token is not valid")
    policy = session_policy(bucket_arn(role_arn, ctx.settings.bucket_name), job.pk, job.attempt)
    response = ctx.clients.sts.assume_role(
        RoleArn=role_arn,
        # Shown in CloudTrail next to every S3 data event of the session.
        RoleSessionName=f"gantry-job-{job.attempt}-{job.pk}"[:64],
        Policy=json.dumps(policy, separators=(",", ":")),
        DurationSeconds=SESSION_SECONDS,
    )
    credentials = response["Credentials"]
    answer["credentials"] = {
        "access_key": credentials["AccessKeyId"],
        "secret_key": credentials["SecretAccessKey"],
        "token": credentials["SessionToken"],
        "expiry_time": credentials["Expiration"].isoformat(),
    }
    return answer
