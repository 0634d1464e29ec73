"""EventBridge → Lambda: AWS Batch and SageMaker job state changes for Gantry's jobs."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.compute.events import state_from_event
from gantry.context import Context
from gantry.job_states import JobStatus
from gantry.pipeline.callback import handle_compute_event
from gantry.pipeline.import_job import JOB_NAME_PREFIX as IMPORT_JOB_NAME_PREFIX
from lambdas.runtime import context

logger = Logger(service="gantry-callback")
# The service dimension comes from POWERTOOLS_SERVICE_NAME, which the alarms match.
metrics = Metrics(namespace="Gantry")


def process(ctx: Context, event: dict[str, Any]) -> str | None:
    """Apply one event; the job's new status label, or None when nothing changed."""
    parsed = state_from_event(event)
    if parsed is None:
        return None
    if parsed.name.startswith(IMPORT_JOB_NAME_PREFIX):
        from gantry.pipeline.import_job import job_ended

        # An image import on the CPU queue, not an algorithm's job.
        job_ended(ctx, parsed)
        return None
    job = handle_compute_event(ctx, parsed)
    if job is None:
        return None
    if job.status is JobStatus.SUCCESS:
        metrics.add_metric(name="JobsSucceeded", unit=MetricUnit.Count, value=1)
    elif job.status is JobStatus.FAILURE:
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
    return job.status.label


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    status = process(context(), event)
    logger.info("compute event applied", extra={"status": status})
    return {"status": status}
