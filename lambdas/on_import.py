"""SQS handler of the imports queue: ``{"gantry": "import-image", "image": pk}`` messages the API
sends for an uploaded container image archive, and ``{"gantry": "import-bioimageio",
"algorithm": pk}`` for an algorithm registered from a bioimage.io model package
(``gantry.pipeline.bioimageio_import``). The import (``gantry.pipeline.image_import``)
validates the archive as a stream from S3 and pushes it, with the runner layer, to the
deployment's ECR repository (``gantry.pipeline.registry_publisher``). ``{"gantry":
"delete-image", "reference": …}`` deletes a removed image from that repository
(``registry_publisher.queue_deletion`` sends it).

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
from gantry.pipeline.wiring import IMPORT_BIOIMAGEIO, IMPORT_IMAGE
from lambdas.runtime import context, process_sqs_batch, unknown_message

logger = Logger(service="gantry-on-import")
# Seconds kept after a stopped push to record the failure.
MARGIN_SECONDS = 30.0


def handle_message(ctx: Context, message: dict[str, Any]) -> None:
    from gantry.pipeline.image_import import import_image
    from gantry.pipeline.registry_publisher import DELETE_IMAGE, delete_image

    if message.get("gantry") == DELETE_IMAGE:
        reference = message.get("reference")
        if not isinstance(reference, str) or not reference:
            raise ValueError("delete-image message without a reference")
        tag = message.get("tag")
        if not delete_image(ctx, reference, tag if isinstance(tag, str) and tag else None):
            logger.info("nothing to delete", reference=reference)
        return
    if message.get("gantry") == IMPORT_BIOIMAGEIO:
        import_bioimageio_message(ctx, message)
        return
    if message.get("gantry") != IMPORT_IMAGE:
        raise unknown_message(message)
    image_pk = message.get("image")
    if not isinstance(image_pk, str) or not image_pk:
        raise ValueError("import-image message without an image pk")
    import_image(ctx, image_pk)


def import_bioimageio_message(ctx: Context, message: dict[str, Any]) -> None:
    """``{"gantry": "import-bioimageio", "algorithm": pk}``: register the algorithm's
    bioimage.io model package (gantry.pipeline.bioimageio_import)."""
    from gantry.pipeline.bioimageio_import import import_bioimageio

    algorithm_pk = message.get("algorithm")
    if not isinstance(algorithm_pk, str) or not algorithm_pk:
        raise ValueError("import-bioimageio message without an algorithm pk")
    import_bioimageio(ctx, algorithm_pk)


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
