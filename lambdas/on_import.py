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

A new kind of import is one entry of ``HANDLERS``: the message's ``gantry`` value, the key of
the record it names, and the function that runs it.

A function of its own, not the upload handler: an import may take minutes (15 at most, a
Lambda's limit), and it is the only function allowed to push to the image repository. The
push stops a little before the invocation's time runs out, so a too-large image fails with a
message instead of the function being killed and the import retried to no end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context
from gantry.pipeline.wiring import IMPORT_BIOIMAGEIO, IMPORT_IMAGE, IMPORT_MODEL
from lambdas.runtime import context, process_sqs_batch, unknown_message

logger = Logger(service="gantry-on-import")
# Seconds kept after a stopped push to record the failure.
MARGIN_SECONDS = 30.0


def _import_image(ctx: Context, pk: str) -> None:
    from gantry.pipeline.image_import import import_image

    import_image(ctx, pk)


def _import_model(ctx: Context, pk: str) -> None:
    from gantry.pipeline.model_import import import_model

    import_model(ctx, pk)


def _import_bioimageio(ctx: Context, pk: str) -> None:
    from gantry.pipeline.bioimageio_import import import_bioimageio

    import_bioimageio(ctx, pk)


# message type -> (the key naming its record, what runs it)
HANDLERS: dict[str, tuple[str, Callable[[Context, str], None]]] = {
    IMPORT_IMAGE: ("image", _import_image),
    IMPORT_MODEL: ("model", _import_model),
    IMPORT_BIOIMAGEIO: ("algorithm", _import_bioimageio),
}


def handle_message(ctx: Context, message: dict[str, Any]) -> None:
    from gantry.pipeline.model_import import DELETE_MODEL
    from gantry.pipeline.registry_publisher import DELETE_IMAGE, delete_image
    from gantry.resources import PREFIX_MODELS

    kind = message.get("gantry")
    if kind == DELETE_IMAGE:
        reference = message.get("reference")
        if not isinstance(reference, str) or not reference:
            raise ValueError("delete-image message without a reference")
        tag = message.get("tag")
        if not delete_image(ctx, reference, tag if isinstance(tag, str) and tag else None):
            logger.info("nothing to delete", reference=reference)
        return
    if kind == DELETE_MODEL:
        key = message.get("key")
        if not isinstance(key, str) or not key.startswith(PREFIX_MODELS):
            raise ValueError("delete-model message without a key under models/")
        ctx.clients.s3.delete_object(Bucket=ctx.settings.bucket_name, Key=key)
        return
    if not isinstance(kind, str) or kind not in HANDLERS:
        raise unknown_message(message)
    key, run = HANDLERS[kind]
    pk = message.get(key)
    if not isinstance(pk, str) or not pk:
        raise ValueError(f"{kind} message without a {key} pk")
    run(ctx, pk)


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
