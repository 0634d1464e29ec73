"""Import of a bioimage.io model package into the algorithm registered with it (the import
function's work; ``gantry.services.bioimageio`` queues it).

``import_bioimageio(ctx, algorithm_pk)``: the package zip streams from S3 to a scratch folder,
is validated offline (``batch_runner.bioimageio.package``: ``bioimageio.spec`` with IO checks
on the package's own files; loaded here only, never on the API), then

1. each tensor gets its Image interface ``images/<tensor-id>`` (an existing one of that slug is
   reused when it is an Image at that path; anything else there refuses the package);
2. the package folder becomes the algorithm's model (a tarball under ``models/``, the model
   mechanism: extracted to /opt/ml/model for its jobs, its sha256 in their provenance);
3. the algorithm image runs the bioimage.io runtime on it: ``settings.bioimageio_image`` (or
   ``bioimageio_gpu_image`` for an algorithm with ``requires_gpu_type``, when set), or
   with no such image this installation's own interpreter (the local compute backend only;
   elsewhere the registration fails saying the deployment has no runtime image);
4. one write sets the socket set and marks the import Completed.

Until that last write the algorithm has no socket set and job creation refuses it
(``services.bioimageio.not_ready``), so a failed or unfinished import leaves nothing usable.
Every refusal ends as Failed with the validator's message; infrastructure errors raise (the
queue retries them, and the retry is "Re-Queued", reusing what the first attempt made).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any

from gantry import resources, timeutil
from gantry.algorithms import (
    Algorithm,
    AlgorithmImageFields,
    AlgorithmModel,
    BioimageioImport,
    ImportStatus,
    SocketSet,
)
from gantry.context import Context
from gantry.errors import Conflict, NotFound
from gantry.interfaces import Interface, InterfaceFields, slugify

log = logging.getLogger(__name__)

ENTRYPOINT_MODULE = "batch_runner.bioimageio"
RUN_COMMAND = [
    "run",
    "--model",
    resources.MODEL_DIR,
    "--input-dir",
    "/input",
    "--output-dir",
    "/output",
]
LOCAL_IMAGE = "local"
NO_RUNTIME = (
    "This deployment cannot validate bioimage.io model packages (its import function lacks "
    "the 'bioimageio' extra); ask its operator"
)
NO_RUNTIME_IMAGE = (
    "This deployment has no bioimage.io runtime image (GANTRY_BIOIMAGEIO_IMAGE, CDK option "
    "gantry:bioimageioImage), so bioimage.io models cannot run here; ask its operator"
)
_CHUNK = 1024 * 1024


class RegistrationRefused(Exception):
    """The package cannot become this algorithm; the message is the status text."""


def runtime_image(ctx: Context, algorithm: Algorithm) -> AlgorithmImageFields:
    """The image a bioimage.io algorithm runs: the deployment's runtime image (its GPU one
    for an algorithm that asks for a GPU, when set), or (no image set) the runtime with this
    installation's interpreter, on this machine only."""
    image = ctx.settings.bioimageio_image
    if algorithm.requires_gpu_type.value and ctx.settings.bioimageio_gpu_image:
        image = ctx.settings.bioimageio_gpu_image
    if not image and ctx.settings.compute_backend != "local":
        raise RegistrationRefused(NO_RUNTIME_IMAGE)
    python = "python3" if image else sys.executable
    return AlgorithmImageFields(
        image=image or LOCAL_IMAGE,
        entrypoint=[python, "-m", ENTRYPOINT_MODULE],
        command=list(RUN_COMMAND),
    )


def import_bioimageio(ctx: Context, algorithm_pk: str) -> Algorithm | None:
    """Run the import of the algorithm's package; None when there is nothing (left) to do."""
    algorithm = ctx.store.algorithms.find(algorithm_pk)
    if algorithm is None or algorithm.bioimageio is None:
        log.info("algorithm %s has no bioimage.io package to import", algorithm_pk)
        return None
    if algorithm.bioimageio.import_status.is_finished:
        return None
    status = (
        ImportStatus.RE_QUEUED
        if algorithm.bioimageio.import_status is ImportStatus.STARTED
        else ImportStatus.STARTED
    )
    algorithm = _record(ctx, algorithm_pk, import_status=status, status_message="")
    try:
        with tempfile.TemporaryDirectory(prefix="gantry-bioimageio-") as scratch:
            done = _register(ctx, algorithm, Path(scratch))
    except RegistrationRefused as refusal:
        log.info("bioimage.io package of algorithm %s refused: %s", algorithm_pk, refusal)
        return _record(
            ctx, algorithm_pk, import_status=ImportStatus.FAILED, status_message=str(refusal)
        )
    return done


def _register(ctx: Context, algorithm: Algorithm, scratch: Path) -> Algorithm:
    record = algorithm.bioimageio
    assert record is not None
    # Before anything is made: a deployment without a runtime image refuses.
    image = runtime_image(ctx, algorithm)
    package = _download(ctx, record, scratch / "package.zip")
    found, root = _validate(package, scratch / "unpacked")
    inputs = _sockets(ctx, algorithm, found["inputs"])
    outputs = _sockets(ctx, algorithm, found["outputs"])
    try:
        socket_set = SocketSet(inputs=[s.slug for s in inputs], outputs=[s.slug for s in outputs])
    except ValueError as error:
        raise RegistrationRefused(f"the package's tensors: {error}") from None
    found_fields = {
        "name": str(found["name"])[:255],
        "format_version": found["format_version"],
        "weights_format": found["weights_format"],
    }
    algorithm = _record(ctx, algorithm.pk, **found_fields)
    model = _store_model(ctx, algorithm, root, scratch / "model.tar.gz")
    image_pk = _add_image(ctx, algorithm, image)

    def complete(current: Algorithm, used: set[int]) -> Algorithm:
        assert current.bioimageio is not None
        update = {"import_status": ImportStatus.COMPLETED, "status_message": ""}
        return current.model_copy(
            update={
                "interfaces": [socket_set],
                "bioimageio": current.bioimageio.model_copy(
                    update={**update, "model": model.pk, "image": image_pk}
                ),
            }
        )

    done = ctx.store.algorithms.update(algorithm.pk, complete)
    ctx.store.sockets.mark_used([*inputs, *outputs], flag="in_algorithm")
    return done


def _download(ctx: Context, record: BioimageioImport, target: Path) -> Path:
    """Stream the package from S3 to ``target`` (never whole in memory)."""
    from gantry.services.bioimageio import size_problem

    if record.user_upload is not None:
        try:
            key = ctx.store.uploads.get(record.user_upload).key
        except NotFound:
            raise RegistrationRefused(f"the upload of {record.filename} is gone") from None
    else:
        assert record.key is not None
        key = record.key
    s3 = ctx.clients.s3
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=ctx.settings.bucket_name, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise RegistrationRefused(f"the package {record.filename} is gone") from None
        raise
    problem = size_problem(body.get("ContentLength"))
    if problem:
        raise RegistrationRefused(problem)
    with target.open("wb") as out:
        shutil.copyfileobj(body["Body"], out, _CHUNK)
    return target


def _validate(package: Path, folder: Path) -> tuple[dict[str, Any], Path]:
    """The validator's findings and the unpacked package's root (where its rdf.yaml is)."""
    try:
        from batch_runner.bioimageio import package as packages
        from batch_runner.bioimageio.plan import PackageError
    except ImportError as error:
        log.error("bioimage.io runtime not importable: %s", error)
        raise RegistrationRefused(NO_RUNTIME) from None
    folder.mkdir()
    try:
        packages._safe_extract(package, folder)
        root = packages.find_rdf(folder).parent
        plan = packages.load_plan(root)
    except PackageError as error:
        raise RegistrationRefused(str(error)) from None
    found = {
        "name": plan.name,
        "format_version": plan.format_version,
        "weights_format": plan.weights_format,
        **packages.interfaces(plan),
    }
    return found, root


def _sockets(ctx: Context, algorithm: Algorithm, wanted: list[dict[str, Any]]) -> list[Interface]:
    """The Image interface of each tensor: reused when it exists as that, else created."""
    sockets = []
    for spec in wanted:
        fields = InterfaceFields.model_validate(spec)
        slug = slugify(fields.title)
        existing = ctx.store.sockets.get_many_by_slug([slug]).get(slug)
        if existing is None:
            try:
                existing = ctx.store.sockets.create(fields, creator=algorithm.creator)
            except Conflict:  # created meanwhile (or its title is taken): look again
                existing = ctx.store.sockets.get_many_by_slug([slug]).get(slug)
        if (
            existing is None
            or existing.kind != fields.kind
            or existing.relative_path != fields.relative_path
        ):
            what = (
                f"a {existing.kind.value} interface at '{existing.relative_path}'"
                if existing is not None
                else "taken by another interface's title"
            )
            raise RegistrationRefused(
                f"tensor '{fields.title}' needs the Image interface '{slug}' at "
                f"'{fields.relative_path}', but '{slug}' is {what}: rename the tensor"
            )
        sockets.append(existing)
    return sockets


def _store_model(ctx: Context, algorithm: Algorithm, root: Path, tarball: Path) -> AlgorithmModel:
    """The package folder as the algorithm's desired model (a retry reuses the model pk)."""
    record = algorithm.bioimageio
    assert record is not None
    models = ctx.store.models
    pk = record.model
    if pk is None:
        pk = str(uuid.uuid4())
        _record(ctx, algorithm.pk, model=pk)
    try:
        model = models.get(pk)
    except NotFound:
        model = models.create(
            AlgorithmModel(
                pk=pk,
                algorithm=algorithm.pk,
                creator=algorithm.creator,
                created=timeutil.iso(),
                import_status=ImportStatus.STARTED,
                comment=f"bioimage.io model package {record.filename}",
            )
        )
    sha256, size = _tar(root, tarball)
    key = resources.model_key(algorithm.pk, model.pk)
    ctx.clients.s3.upload_file(str(tarball), ctx.settings.bucket_name, key)
    done = models.complete(model.pk, sha256=sha256, size=size, key=key)
    models.make_desired(done)
    return done


def _tar(root: Path, target: Path) -> tuple[str, int]:
    """A gzipped tarball of ``root``'s files (regular files and folders only, no times or
    owners: the same package gives the same bytes); its sha256 and size."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with (
        target.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            tar.add(path, path.relative_to(root).as_posix(), recursive=False, filter=clean)
    digest = hashlib.sha256()
    with target.open("rb") as written:
        while chunk := written.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}", target.stat().st_size


def _add_image(ctx: Context, algorithm: Algorithm, fields: AlgorithmImageFields) -> str:
    """The runtime image, the algorithm's desired one (a retry reuses the one it made)."""
    record = algorithm.bioimageio
    assert record is not None
    if record.image is not None:
        try:
            ctx.store.algorithms.get_image(record.image)
            return record.image
        except NotFound:
            pass
    image = ctx.store.algorithms.create_image(algorithm, fields, creator=algorithm.creator)
    _record(ctx, algorithm.pk, image=image.pk)
    return image.pk


def _record(ctx: Context, pk: str, **fields: Any) -> Algorithm:
    """Change the algorithm's registration record (unless its import has ended)."""

    def change(current: Algorithm, used: set[int]) -> Algorithm:
        record = current.bioimageio
        if record is None or record.import_status.is_finished:
            return current
        return current.model_copy(update={"bioimageio": record.model_copy(update=fields)})

    return ctx.store.algorithms.update(pk, change)
