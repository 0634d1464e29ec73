"""The runner's own job's credentials and signing key, claimed from the platform at start.

On AWS the compute job's environment carries no secret, only ``GANTRY_CREDENTIALS_FUNCTION``
and a one-time claim ``GANTRY_JOB_CLAIM=<job>/<attempt>/<token>``. The runner invokes the
function with it (under the job role, which may do nothing else) and gets credentials limited
to ``io/<job>/<attempt>/``, its signing key and a refresh token; botocore renews the
credentials through the function before they expire (STS caps them at one hour), so a job
that waits and runs for a day keeps working. See ``gantry.job_credentials``.

Without those variables (the local stack, tests) the runner keeps its ambient credentials
and reads ``GANTRY_SIGNING_KEY_HEX``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from gantry.resources import ENV_CREDENTIALS_FUNCTION, ENV_JOB_CLAIM

# Sends one request to the credentials function and returns its JSON answer.
Invoke = Callable[[dict[str, Any]], dict[str, Any]]


class CredentialsError(Exception):
    """The job's credentials could not be obtained; no result can be written."""


@dataclass(frozen=True)
class JobAccess:
    session: boto3.session.Session
    signing_key: str


def region_from_env(environ: Mapping[str, str]) -> str:
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def lambda_invoker(function: str, region: str) -> Invoke:
    """Invoke ``function`` synchronously with the ambient (job role) credentials."""
    client = boto3.client("lambda", region_name=region, config=Config(retries={"mode": "standard"}))

    def invoke(payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = client.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
        except (BotoCoreError, ClientError) as error:
            raise CredentialsError(f"the credentials function cannot be called: {error}") from error
        body = response["Payload"].read()
        if response.get("FunctionError"):
            raise CredentialsError(f"the credentials function failed: {body[:200]!r}")
        answer = json.loads(body)
        if not isinstance(answer, dict):
            raise CredentialsError("the credentials function gave no answer")
        return answer

    return invoke


def _answer(invoke: Invoke, request: dict[str, Any]) -> dict[str, Any]:
    answer = invoke(request)
    if "error" in answer:
        raise CredentialsError(str(answer["error"]))
    if not isinstance(answer.get("credentials"), dict):
        raise CredentialsError("the credentials function returned no credentials")
    return answer


def claim(
    environ: Mapping[str, str] | None = None, *, invoke: Invoke | None = None
) -> JobAccess | None:
    """Redeem the job's claim; None when the environment names no credentials function."""
    env = os.environ if environ is None else environ
    function = env.get(ENV_CREDENTIALS_FUNCTION)
    if not function:
        return None
    job, _, rest = env.get(ENV_JOB_CLAIM, "").partition("/")
    attempt, _, token = rest.partition("/")
    if not job or not attempt.isdigit() or not token:
        raise CredentialsError(f"{ENV_JOB_CLAIM} must be <job>/<attempt>/<token>")
    region = region_from_env(env)
    invoke = invoke or lambda_invoker(function, region)
    first = _answer(invoke, {"job": job, "attempt": int(attempt), "claim": token})
    refresh = str(first.get("refresh") or "")
    key = str(first.get("signing_key") or "")
    if not refresh or not key:
        raise CredentialsError("the credentials function returned no signing key")

    def renew() -> dict[str, Any]:
        answer = _answer(invoke, {"job": job, "attempt": int(attempt), "refresh": refresh})
        return dict(answer["credentials"])

    credentials = RefreshableCredentials.create_from_metadata(
        metadata=dict(first["credentials"]),
        refresh_using=renew,
        method="gantry-job-credentials",
    )
    core = botocore.session.get_session()
    # botocore has no public setter for a session's credential object.
    core._credentials = credentials
    return JobAccess(boto3.session.Session(botocore_session=core, region_name=region), key)
