"""SQS handler of the archive-runs queue: pages of an archive run's items to make jobs of
(``{"gantry": "archive-run-page", "run": pk, "cursor": …}``), pages of a cancelled run's
records whose jobs to cancel (``"archive-run-cancel"``), and Gantry job events from
EventBridge for the runs' jobs (outputs written back into the items; runs waiting for a free
job slot go on).

Partial batch responses: a record that raises is retried alone and ends in the DLQ after the
queue's receive count. Every message is idempotent (gantry.pipeline.archive_runs).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context
from lambdas.runtime import context, process_sqs_batch, unknown_message

logger = Logger(service="gantry-on-archive-run")


def handle_message(ctx: Context, message: dict[str, Any]) -> None:
    from gantry import messages
    from gantry.messages import JobEnded, is_job_ended_event
    from gantry.pipeline import archive_runs

    if "gantry" in message:
        # A kind this queue does not take, or a field missing or wrong, fails the record.
        parsed = messages.parse(messages.ARCHIVE_RUNS_QUEUE_MESSAGE, message)
        if isinstance(parsed, messages.ArchiveRunPage):
            archive_runs.handle_page(ctx, parsed.run, parsed.cursor)
        else:
            archive_runs.handle_cancel(ctx, parsed.run, parsed.cursor)
        return
    if is_job_ended_event(message):
        archive_runs.handle_job_event(ctx, JobEnded.model_validate(message.get("detail")))
        return
    raise unknown_message(message)


def process(
    ctx: Context, event: dict[str, Any], lambda_context: LambdaContext | None = None
) -> dict[str, Any]:
    """Handle an SQS batch; the response lists the records to retry (batchItemFailures)."""
    return process_sqs_batch(event, lambda_context, lambda message: handle_message(ctx, message))


@logger.inject_lambda_context
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    # A page makes 100 jobs: on_upload copies their inputs and submits them, from the queue.
    return process(context(provision_on_queue=True), event, lambda_context)
