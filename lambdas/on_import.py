"""SQS handler of the imports queue: the imports that may take minutes, one per invocation.

- ``{"gantry": "import-image", "image": pk}``: an uploaded container image archive, validated
  as a stream from S3 and pushed, with the runner layer, to the deployment's ECR repository
  (``gantry.pipeline.image_import``, ``gantry.pipeline.registry_publisher``).
- ``{"gantry": "import-model", "model": pk}``: an uploaded model tarball, hashed and checked
  as it is copied to ``models/`` (``gantry.pipeline.model_import``).
- ``{"gantry": "import-bioimageio", "algorithm": pk}``: an algorithm registered from a
  bioimage.io model package (``gantry.pipeline.bioimageio_import``).
- ``{"gantry": "delete-image", "reference": …}``: a removed image deleted from that repository
  (``registry_publisher.queue_deletion`` sends it); ``{"gantry": "delete-model", "key": …}``:
  a removed model's tarball deleted from ``models/`` (``model_import.delete_tarball``).

Every message is a model of ``gantry.messages`` (``IMPORTS_QUEUE_MESSAGE``); imports run
through ``gantry.pipeline.imports.run_import``, as on the local stack's uploads queue: a new
kind of import is a model there and a case of ``run_import``.

A function of its own, not the upload handler: an import may take minutes (15 at most, a
Lambda's limit), and it is the only function allowed to push to the image repository. The
push stops a little before the invocation's time runs out, so a too-large image fails with a
message instead of the function being killed and the import retried to no end.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context
from lambdas.runtime import context, process_sqs_batch

logger = Logger(service="gantry-on-import")
# Seconds kept after a stopped push to record the failure.
MARGIN_SECONDS = 30.0


def handle_message(ctx: Context, message: dict[str, Any]) -> None:
    from gantry import messages

    # A kind this queue does not take, or a field missing or wrong, fails the record.
    parsed = messages.parse(messages.IMPORTS_QUEUE_MESSAGE, message)
    if isinstance(parsed, messages.ImportImage | messages.ImportModel | messages.ImportBioimageio):
        from gantry.pipeline.imports import run_import

        run_import(ctx, parsed)
    elif isinstance(parsed, messages.DeleteImage):
        from gantry.pipeline.registry_publisher import delete_image

        if not delete_image(ctx, parsed.reference, parsed.tag or None):
            logger.info("nothing to delete", reference=parsed.reference)
    else:
        ctx.clients.s3.delete_object(Bucket=ctx.settings.bucket_name, Key=parsed.key)


def process(
    ctx: Context, event: dict[str, Any], lambda_context: LambdaContext | None = None
) -> dict[str, Any]:
    """Handle an SQS batch; the response lists the records to retry (batchItemFailures)."""
    from gantry.pipeline.registry_publisher import ensure_publisher

    publisher = ensure_publisher(ctx)
    if publisher is not None and lambda_context is not None:
        remaining = lambda_context.get_remaining_time_in_millis() / 1000
        publisher.time_left(max(remaining - MARGIN_SECONDS, 0.0))
    return process_sqs_batch(event, lambda_context, lambda message: handle_message(ctx, message))


@logger.inject_lambda_context
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    return process(context(), event, lambda_context)
