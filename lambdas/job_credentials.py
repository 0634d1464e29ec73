"""Invoked by a job's runner: credentials for its own job attempt's data and its signing key.

The runner invokes this function directly (``lambda:Invoke``, allowed to the Batch job role
and the SageMaker role only) with ``{job, attempt, claim}`` once and ``{job, attempt,
refresh}`` to renew; see ``gantry.job_credentials``. A refusal answers ``{"error": …}`` with
no detail of why beyond the claim's state, and is logged for operators.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from gantry.job_credentials import CredentialsRefused, CredentialsRequest, issue
from lambdas.runtime import context

logger = Logger(service="gantry-job-credentials")


@logger.inject_lambda_context
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    try:
        request = CredentialsRequest.model_validate(event)
    except ValidationError as error:
        logger.warning("bad credentials request", extra={"errors": error.errors()})
        return {"error": "The credentials request is not valid"}
    try:
        return issue(context(), request)
    except CredentialsRefused as error:
        logger.warning(
            "credentials refused",
            extra={"job": request.job, "attempt": request.attempt, "reason": str(error)},
        )
        return {"error": str(error)}
