"""Import of an uploaded model tarball into an algorithm (the import function's work).

``import_model(ctx, pk)`` copies the upload S3 to S3 to the model's own key, then reads that
copy once as a stream: the sha256 is computed from its bytes while ``gantry.tarballs.scan``
checks every member with the rule the runner applies when it extracts the model (never the
whole tarball in memory or on disk). The algorithm's (sha256) claim is taken in the same
write that completes the import, so a second upload of the same bytes fails with a status
text instead of becoming a second copy. A completed import becomes the desired model unless
a newer one already is. Refusals end the import as Failed with a status text; only
infrastructure errors raise (the queue retries them, and the retry is "Re-Queued").
"""

from __future__ import annotations

import logging
from typing import Any

from gantry import resources
from gantry.algorithms import AlgorithmModel, ImportStatus
from gantry.aws import copy_object
from gantry.context import Context
from gantry.errors import NotFound
from gantry.store.algorithm_models import DuplicateModel
from gantry.tarballs import MAX_MODEL_BYTES, Digesting, ModelTarballError, scan
from gantry.uploads import too_large

log = logging.getLogger(__name__)

DUPLICATE = (
    "This model has already been uploaded to this algorithm ({sha256}, model {existing}): "
    "activate that model instead of uploading it again"
)


def size_problem(size: int | None) -> str | None:
    return too_large("The model tarball", size, MAX_MODEL_BYTES)


def import_model(ctx: Context, pk: str) -> AlgorithmModel | None:
    """Run the import of model ``pk``; None when there is nothing (left) to do."""
    models = ctx.store.models
    try:
        model = models.get(pk)
    except NotFound:
        log.info("algorithm model %s is gone; nothing to import", pk)
        return None
    if model.import_status is ImportStatus.COMPLETED:
        # A retry after the completing write: make sure the pointer step happened too.
        models.make_desired(model, only_if_newest=True)
        return model
    if model.import_status.is_finished or model.user_upload is None:
        return None
    status = (
        ImportStatus.RE_QUEUED
        if model.import_status is ImportStatus.STARTED
        else ImportStatus.STARTED
    )
    _set(ctx, pk, import_status=status, status_message="")
    key = resources.model_key(model.algorithm, model.pk)
    try:
        sha256, size = _copy_and_check(ctx, model, key)
    except ModelTarballError as refusal:
        return _fail(ctx, pk, key, str(refusal))
    try:
        done = models.complete(pk, sha256=sha256, size=size, key=key)
    except DuplicateModel as duplicate:
        return _fail(ctx, pk, key, DUPLICATE.format(sha256=sha256, existing=duplicate.existing))
    models.make_desired(done, only_if_newest=True)
    return done


def _fail(ctx: Context, pk: str, key: str, message: str) -> AlgorithmModel:
    # The copy is of no use (and a duplicate's bytes are stored already).
    ctx.clients.s3.delete_object(Bucket=ctx.settings.bucket_name, Key=key)
    return _set(ctx, pk, import_status=ImportStatus.FAILED, status_message=message)


def _copy_and_check(ctx: Context, model: AlgorithmModel, key: str) -> tuple[str, int]:
    """Copy the upload to ``key``; the sha256 and size of the copy, once its members pass."""
    upload = ctx.store.uploads.get(str(model.user_upload))
    bucket = ctx.settings.bucket_name
    s3 = ctx.clients.s3
    size = s3.head_object(Bucket=bucket, Key=upload.key)["ContentLength"]
    problem = size_problem(size)
    if problem:
        raise ModelTarballError(problem)
    copy_object(s3, bucket, upload.key, key)
    stream = Digesting(s3.get_object(Bucket=bucket, Key=key)["Body"])
    try:
        scan(stream)
    except ModelTarballError as error:
        raise ModelTarballError(f"{upload.filename}: {error}") from None
    return stream.sha256, stream.size


def purge_failed_imports(ctx: Context, before: str) -> list[str]:
    """Remove the models whose import failed ``before`` (an ISO time: the sweeper's
    ``import_retention_cutoff``, as for images); their pks. A failed import keeps no tarball
    (``_fail`` deleted its copy) and no job ever used it."""
    removed = []
    for model in ctx.store.models.failed_before(before):
        ctx.store.models.delete(model)
        removed.append(model.pk)
    if removed:
        log.info("removed %s model imports that failed before %s", len(removed), before)
    return removed


def delete_tarball(ctx: Context, key: str) -> None:
    """Delete a removed model's tarball: through the import function where the deployment has
    one (its queue: the import function may write models/, the API may not), else (the local
    stack) at once."""
    from gantry.messages import DeleteModel

    if not key.startswith(resources.PREFIX_MODELS):
        raise ValueError(f"not a model tarball: {key}")
    if ctx.settings.imports_queue_url:
        ctx.clients.sqs.send_message(
            QueueUrl=ctx.settings.imports_queue_url,
            MessageBody=DeleteModel(key=key).model_dump_json(),
        )
    else:
        ctx.clients.s3.delete_object(Bucket=ctx.settings.bucket_name, Key=key)


def _set(ctx: Context, pk: str, **fields: Any) -> AlgorithmModel:
    return ctx.store.models.update(pk, lambda current: current.model_copy(update=fields))
