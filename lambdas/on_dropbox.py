"""SQS handler of the drop-folder queue: S3 notifications for ``dropbox/`` (dropped files
become jobs) and Gantry job events from EventBridge (finished drop-folder jobs write their
results to ``dropbox-results/``).

Partial batch responses: a record that raises (AWS trouble, or a duplicate arriving while the
first copy is still being handled) is retried alone; drops a user must fix write error.json
and count as handled.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context
from lambdas.runtime import context, process_sqs_batch, unknown_message

logger = Logger(service="gantry-on-dropbox")


def handle_message(ctx: Context, message: dict[str, Any]) -> None:
    from gantry.messages import JobEnded, is_job_ended_event
    from gantry.pipeline import dropbox

    if is_job_ended_event(message):
        dropbox.handle_job_event(ctx, JobEnded.model_validate(message.get("detail")))
        return
    if dropbox.is_s3_notification(message):
        for event in dropbox.s3_object_events(message):
            job_pk = dropbox.handle_dropped_object(ctx, event)
            if job_pk:
                logger.info("drop started a job", key=event.key, job=job_pk)
        return
    raise unknown_message(message)


def process(
    ctx: Context, event: dict[str, Any], lambda_context: LambdaContext | None = None
) -> dict[str, Any]:
    """Handle an SQS batch; the response lists the records to retry (batchItemFailures)."""
    return process_sqs_batch(event, lambda_context, lambda message: handle_message(ctx, message))


@logger.inject_lambda_context
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    return process(context(), event, lambda_context)
