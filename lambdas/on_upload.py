"""SQS handler of the uploads queue: S3 notifications for ``uploads/`` and
``{"gantry": "validate-inputs", "job": pk}`` messages.

Partial batch responses: one failing record is retried alone (and ends in the DLQ after the
queue's receive count), never the whole batch. Problems a user must fix never raise: they
fail the job with a message, and the record counts as handled.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context
from gantry.pipeline.wiring import VALIDATE_INPUTS
from lambdas.runtime import context, process_sqs_batch

logger = Logger(service="gantry-on-upload")


def handle_message(ctx: Context, body: str) -> None:
    from gantry.pipeline.dropbox import is_s3_notification, s3_object_events
    from gantry.pipeline.inputs import record_uploaded_object, validate_pending_inputs

    message: Any = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("the message is not a JSON object")
    if message.get("gantry") == VALIDATE_INPUTS:
        job_pk = message.get("job")
        if not isinstance(job_pk, str) or not job_pk:
            raise ValueError("validate-inputs message without a job pk")
        validate_pending_inputs(ctx, job_pk)
        return
    if is_s3_notification(message):
        for event in s3_object_events(message):
            if event.created and not record_uploaded_object(ctx, event.key, event.size):
                logger.info("no upload for this object", key=event.key)
        return
    # Unknown shapes go to the DLQ (after retries) for someone to look at.
    raise ValueError(f"unknown message: {sorted(message)[:10]}")


def process(
    ctx: Context, event: dict[str, Any], lambda_context: LambdaContext | None = None
) -> dict[str, Any]:
    """Handle an SQS batch; the response lists the records to retry (batchItemFailures)."""
    return process_sqs_batch(event, lambda_context, lambda body: handle_message(ctx, body))


@logger.inject_lambda_context
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    return process(context(), event, lambda_context)
