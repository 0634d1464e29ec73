"""Registering an algorithm from a bioimage.io model package: check where the package is,
create the algorithm at once (no socket sets yet, import status Queued), queue its import.

The import (``gantry.pipeline.bioimageio_import``) runs in the import function: it alone
loads ``bioimageio.spec``; nothing here imports more than the API already does.
"""

from __future__ import annotations

import re

from gantry.algorithms import Algorithm, AlgorithmCreate, BioimageioImport, ImportStatus
from gantry.context import Context
from gantry.errors import GantryError, ValidationFailed
from gantry.uploads import too_large
from gantry.urls import Urls
from gantry.users import User

FIELD = "bioimageio_package"
PACKAGE_SUFFIXES = (".zip",)
S3_SCHEME = "s3://"
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# "affable-shark", "affable-shark/1.2", a Zenodo DOI.
_ZOO_ID = re.compile(r"^[a-z]+(-[a-z]+)+(/[0-9.]+)?$")
_DOI = re.compile(r"^10\.\d{4,}/\S+$")


def size_problem(size: int | None) -> str | None:
    # Here, not at the top: the tarball rule imports tarfile, which the algorithms router's
    # other requests never need.
    from gantry.tarballs import MAX_MODEL_BYTES

    return too_large("The model package", size, MAX_MODEL_BYTES)


def _not_found(reference: str, message: str) -> str:
    """Why a reference that is no upload of the user's was refused: zoo ids and URLs need
    the network, which Gantry does not use (the runtime's validator says the same)."""
    if _URL.match(reference):
        return (
            f"'{reference}' is a URL: Gantry reads model packages from uploads only (no "
            "network); download the package zip and upload it"
        )
    if _ZOO_ID.match(reference) or _DOI.match(reference):
        return (
            f"'{reference}' looks like a bioimage.io zoo id: resolving it needs the network, "
            "which Gantry does not use; download the package zip and upload it"
        )
    return message


def package_source(ctx: Context, user: User, reference: str, urls: Urls) -> BioimageioImport:
    """Where the package is, checked: a completed upload of the user's, or (admins only) an
    object of the deployment's bucket. ValidationFailed naming ``bioimageio_package``."""
    if reference.startswith(S3_SCHEME):
        bucket, _, key = reference[len(S3_SCHEME) :].partition("/")
        if not user.is_admin:
            raise ValidationFailed(
                "Only admins may name an object of the deployment's bucket; upload the "
                "package zip instead",
                field=FIELD,
            )
        if bucket != ctx.settings.bucket_name or not key:
            raise ValidationFailed(
                f"'{reference}' is not in this deployment's bucket "
                f"(s3://{ctx.settings.bucket_name}/<key>)",
                field=FIELD,
            )
        from botocore.exceptions import ClientError

        try:
            size = ctx.clients.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        except ClientError as error:
            raise ValidationFailed(f"'{reference}' not found", field=FIELD) from error
        filename = key.rpartition("/")[2]
        source = BioimageioImport(key=key, filename=filename)
    else:
        from gantry.services.catalog import _completed_upload

        try:
            upload = _completed_upload(ctx, user, reference, urls)
        except GantryError as error:
            raise ValidationFailed(_not_found(reference, error.message), field=FIELD) from error
        size = upload.size
        source = BioimageioImport(user_upload=upload.pk, filename=upload.filename)
    if not source.filename.lower().endswith(PACKAGE_SUFFIXES):
        raise ValidationFailed(
            f"'{source.filename}' is not a bioimage.io model package zip (.zip)", field=FIELD
        )
    problem = size_problem(size)
    if problem:
        raise ValidationFailed(problem, field=FIELD)
    return source


def register(ctx: Context, user: User, fields: AlgorithmCreate, urls: Urls) -> Algorithm:
    """The new algorithm, its package's import Queued for the import function."""
    from gantry.pipeline.imports import queue_import
    from gantry.pipeline.wiring import import_bioimageio_message

    assert fields.bioimageio_package is not None
    if fields.interfaces:
        raise ValidationFailed(
            "a bioimage.io package brings its own inputs and outputs; leave out interfaces",
            field="interfaces",
        )
    source = package_source(ctx, user, fields.bioimageio_package, urls)
    algorithm = ctx.store.algorithms.create(
        fields,
        creator=user.username,
        bioimageio=source.model_copy(update={"import_status": ImportStatus.QUEUED}),
    )
    queue_import(ctx, import_bioimageio_message(algorithm.pk))
    return algorithm


def not_ready(algorithm: Algorithm) -> str | None:
    """Why jobs cannot run on this algorithm yet (its package's import has not completed)."""
    record = algorithm.bioimageio
    if record is None or record.import_status is ImportStatus.COMPLETED:
        return None
    status = record.import_status.value
    detail = f": {record.status_message}" if record.status_message else ""
    return f"The algorithm's bioimage.io model package import is {status}{detail}"
