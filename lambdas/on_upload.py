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
from gantry.pipeline.wiring import (
    IMPORT_BIOIMAGEIO,
    IMPORT_IMAGE,
    IMPORT_ITEM_VALUES,
    IMPORT_MODEL,
    IMPORT_UPLOAD_SESSION,
    START_JOB,
    VALIDATE_INPUTS,
)
from lambdas.runtime import context, process_sqs_batch, unknown_message

logger = Logger(service="gantry-on-upload")


def handle_message(ctx: Context, message: dict[str, Any]) -> None:
    from gantry.pipeline.dropbox import is_s3_notification, s3_object_events
    from gantry.pipeline.inputs import record_uploaded_object, validate_pending_inputs

    if message.get("gantry") in (VALIDATE_INPUTS, START_JOB):
        job_pk = message.get("job")
        if not isinstance(job_pk, str) or not job_pk:
            raise ValueError(f"{message['gantry']} message without a job pk")
        if message["gantry"] == START_JOB:
            from gantry.pipeline.provision import start_job

            # Queued by the API: copy the inputs and submit (a no-op if already started).
            start_job(ctx, job_pk)
        else:
            validate_pending_inputs(ctx, job_pk)
        return
    if message.get("gantry") == IMPORT_IMAGE:
        from gantry.pipeline.image_import import import_image

        image_pk = message.get("image")
        if not isinstance(image_pk, str) or not image_pk:
            raise ValueError("import-image message without an image pk")
        import_image(ctx, image_pk)
        return
    if message.get("gantry") == IMPORT_ITEM_VALUES:
        from gantry.pipeline.archive_values import import_item_values

        item_pk = message.get("item")
        if not isinstance(item_pk, str) or not item_pk:
            raise ValueError("import-item-values message without an item pk")
        import_item_values(ctx, item_pk)
        return
    if message.get("gantry") == IMPORT_UPLOAD_SESSION:
        from gantry.pipeline.upload_sessions import import_upload_session

        session_pk = message.get("session")
        if not isinstance(session_pk, str) or not session_pk:
            raise ValueError("import-upload-session message without a session pk")
        import_upload_session(ctx, session_pk)
        return
    if message.get("gantry") == IMPORT_BIOIMAGEIO:
        # Where the deployment has no imports queue (the local stack), imports come here.
        from lambdas.on_import import import_bioimageio_message

        import_bioimageio_message(ctx, message)
        return
    if message.get("gantry") == IMPORT_MODEL:
        from gantry.pipeline.model_import import import_model

        model_pk = message.get("model")
        if not isinstance(model_pk, str) or not model_pk:
            raise ValueError("import-model message without a model pk")
        import_model(ctx, model_pk)
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
