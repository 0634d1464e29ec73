"""SQS handler of the uploads queue: S3 notifications for ``uploads/``,
``{"gantry": "validate-inputs", "job": pk}`` and ``{"gantry": "start-job", "job": pk}``
messages (jobs the API created with ready inputs: this function provisions them), and
``{"gantry": "import-image", "image": pk}`` (an uploaded container image to import),
``{"gantry": "import-model", "model": pk}`` (an uploaded model tarball to import),
``{"gantry": "import-item-values", "item": pk}`` (uploaded values of an archive item) and
``{"gantry": "import-upload-session", "session": pk}`` (uploaded medical images to import).

Partial batch responses: one failing record is retried alone (and ends in the DLQ after the
queue's receive count), never the whole batch. Problems a user must fix never raise: they
fail the job with a message, and the record counts as handled.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context
from lambdas.runtime import context, process_sqs_batch, unknown_message

logger = Logger(service="gantry-on-upload")


def handle_message(ctx: Context, message: dict[str, Any]) -> None:
    from gantry import messages
    from gantry.pipeline.dropbox import is_s3_notification, s3_object_events
    from gantry.pipeline.inputs import record_uploaded_object

    if "gantry" in message:
        # A message that names no kind this queue takes, or lacks a field, fails its record.
        parsed = messages.parse(messages.UPLOADS_QUEUE_MESSAGE, message)
        if isinstance(parsed, messages.ValidateInputs):
            from gantry.pipeline.inputs import validate_pending_inputs

            validate_pending_inputs(ctx, parsed.job)
        elif isinstance(parsed, messages.StartJob):
            from gantry.pipeline.provision import start_job

            # Queued by the API: copy the inputs and submit (a no-op if already started).
            start_job(ctx, parsed.job)
        elif isinstance(parsed, messages.ImportItemValues):
            from gantry.pipeline.archive_values import import_item_values

            import_item_values(ctx, parsed.item)
        elif isinstance(parsed, messages.ImportUploadSession):
            from gantry.pipeline.upload_sessions import import_upload_session

            import_upload_session(ctx, parsed.session)
        else:
            # Where the deployment has no imports queue (the local stack), imports come here.
            from gantry.pipeline.imports import run_import

            run_import(ctx, parsed)
        return
    if is_s3_notification(message):
        for event in s3_object_events(message):
            if event.created and not record_uploaded_object(ctx, event.key, event.size):
                logger.info("no upload for this object", key=event.key)
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
