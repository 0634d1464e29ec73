"""The imports users start for their algorithms (a container image, a model tarball, a
bioimage.io package), whichever queue brings them.

On a deployment they go to the import function's queue (an import may take minutes, and only
that function may push to the image repository or write ``models/``); on the local stack, which
has no such queue, to the uploads queue, whose worker runs them too. Both handlers run an import
through ``run_import``. Imported when an import is sent or run: the modules that do the work are
imported by ``run_import`` for the one it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gantry.context import Context

if TYPE_CHECKING:
    from gantry.messages import ImportBioimageio, ImportImage, ImportModel


def queue_import(ctx: Context, body: str) -> None:
    """Send ``body`` (a message of ``gantry.messages`` the import function takes) to the
    import function's queue where the deployment has one, else to the uploads queue."""
    ctx.clients.sqs.send_message(
        QueueUrl=ctx.settings.imports_queue_url or ctx.settings.uploads_queue_url, MessageBody=body
    )


def run_import(ctx: Context, message: ImportImage | ImportModel | ImportBioimageio) -> None:
    """Run the import ``message`` asks for."""
    from gantry import messages

    if isinstance(message, messages.ImportImage):
        from gantry.pipeline.image_import import import_image

        import_image(ctx, message.image)
    elif isinstance(message, messages.ImportModel):
        from gantry.pipeline.model_import import import_model

        import_model(ctx, message.model)
    else:
        from gantry.pipeline.bioimageio_import import import_bioimageio

        import_bioimageio(ctx, message.algorithm)
