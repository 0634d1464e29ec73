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
    from gantry.messages import JobEnded, is_job_ended_event
    from gantry.pipeline import archive_runs

    kind = message.get("gantry")
    if kind in (archive_runs.RUN_PAGE, archive_runs.RUN_CANCEL):
        run_pk, cursor = message.get("run"), message.get("cursor")
        if not isinstance(run_pk, str) or not run_pk or not isinstance(cursor, dict | None):
            raise ValueError(f"{kind} message without a run pk or a valid cursor")
        if kind == archive_runs.RUN_PAGE:
            archive_runs.handle_page(ctx, run_pk, cursor)
        else:
            archive_runs.handle_cancel(ctx, run_pk, cursor)
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
