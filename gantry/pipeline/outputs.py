"""Check and register a finished job's outputs, per socket, in grand-challenge's words.

JSON outputs are validated against their schemas and stored inline when the socket says so
(NaN and infinities become null), else kept as files; files are checked for their type; an
image output directory must hold exactly one readable image, which is registered as an Image.
Everything that is kept is copied from the job's io/ prefix (which expires) to values/.
"""

from __future__ import annotations

import math
import posixpath
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from gantry import jsonlimits, resources, timeutil
from gantry.aws import copy_object
from gantry.context import Context
from gantry.images import Image
from gantry.interfaces import Interface, value_errors
from gantry.jobs import Job, SocketValue
from gantry.kinds import spec
from gantry.pipeline.headers import fetch_mha_header
from gantry.s3file import S3File

MAX_JSON_OUTPUT_BYTES = 16 * 1024 * 1024
# An image whose header cannot be read where it lies (not .mha or .tif) is downloaded: on
# AWS to the function's disk (4 GiB, with 120 s to do it all). A larger one would fail the
# function on every try and leave the job Parsing.
MAX_DOWNLOADED_IMAGE_BYTES = 3 * 1024**3
IMAGE_SUFFIXES = (".mha", ".mhd", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd")
MAGIC: dict[str, tuple[tuple[int, bytes], ...]] = {
    ".pdf": ((0, b"%PDF"),),
    ".png": ((0, b"\x89PNG\r\n\x1a\n"),),
    ".jpeg": ((0, b"\xff\xd8\xff"),),
    ".jpg": ((0, b"\xff\xd8\xff"),),
    ".zip": ((0, b"PK\x03\x04"), (0, b"PK\x05\x06")),
    ".mp4": ((4, b"ftyp"),),
}


@dataclass
class ParsedOutputs:
    values: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    # Read and copied, not registered yet: only a job that succeeds registers its images.
    images: list[Image] = field(default_factory=list)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _object_size(ctx: Context, key: str) -> int | None:
    try:
        return int(
            ctx.clients.s3.head_object(Bucket=ctx.settings.bucket_name, Key=key)["ContentLength"]
        )
    except ctx.clients.s3.exceptions.ClientError:
        return None


def parse_outputs(
    ctx: Context, job: Job, sockets: dict[str, Interface], output_slugs: list[str]
) -> ParsedOutputs:
    parsed = ParsedOutputs()
    prefix = resources.io_output_prefix(job.pk, job.attempt)
    for slug in output_slugs:
        socket = sockets[slug]
        kind = spec(socket.kind)
        try:
            if kind.is_image:
                draft = _image_output(ctx, job, socket, prefix, parsed)
            elif kind.is_json:
                draft = _json_output(ctx, job, socket, prefix)
            else:
                draft = _file_output(ctx, job, socket, prefix)
        except OutputError as error:
            parsed.errors[slug] = str(error)
            continue
        parsed.values.append(draft)
    return parsed


class OutputError(Exception):
    pass


def _keep(ctx: Context, job: Job, socket: Interface, source_key: str) -> str:
    # One key per job, attempt and socket: a repeated completion (a duplicate event, a retry
    # after a crash) writes the same bytes to the same key instead of leaving stray copies.
    name = posixpath.basename(source_key)
    key = resources.output_value_key(job.pk, job.attempt, socket.slug, name)
    bucket = ctx.settings.bucket_name
    copy_object(ctx.clients.s3, bucket, source_key, key)
    return key


def _json_output(ctx: Context, job: Job, socket: Interface, prefix: str) -> dict[str, Any]:
    key = prefix + socket.relative_path
    # One GET: its length is known before the body is read, and a body too large is not read.
    try:
        response = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=key)
    except ctx.clients.s3.exceptions.ClientError as error:
        raise OutputError(f"Output file '{socket.relative_path}' was not produced") from error
    size = int(response["ContentLength"])
    if size > MAX_JSON_OUTPUT_BYTES:
        response["Body"].close()
        raise OutputError(
            f"The output file '{socket.relative_path}' is too large ({size} bytes) to be read"
        )
    body = response["Body"].read()
    try:
        value = _finite(jsonlimits.loads(body.decode("utf-8")))
    except jsonlimits.TooDeep as error:
        raise OutputError(
            f"The output file '{socket.relative_path}' is not valid json: {error}"
        ) from error
    except (UnicodeDecodeError, ValueError) as error:
        raise OutputError(f"The output file '{socket.relative_path}' is not valid json") from error
    errors = value_errors(socket, value)
    if errors:
        raise OutputError(
            f"The output file '{socket.relative_path}' is not valid: {'; '.join(errors)}"
        )
    if socket.store_in_database:
        return {"socket": socket.slug, "value": value}
    return {"socket": socket.slug, "file": _keep(ctx, job, socket, key)}


def _file_output(ctx: Context, job: Job, socket: Interface, prefix: str) -> dict[str, Any]:
    key = prefix + socket.relative_path
    if _object_size(ctx, key) is None:
        raise OutputError(f"Output file '{socket.relative_path}' was not produced")
    suffix = Path(socket.relative_path).suffix.lower()
    signatures = MAGIC.get(suffix)
    if signatures:
        head = ctx.clients.s3.get_object(
            Bucket=ctx.settings.bucket_name, Key=key, Range="bytes=0-15"
        )["Body"].read()
        if not any(head[offset : offset + len(magic)] == magic for offset, magic in signatures):
            raise OutputError(
                f"The output file '{socket.relative_path}' is not a valid {spec(socket.kind).label}"
            )
    return {"socket": socket.slug, "file": _keep(ctx, job, socket, key)}


def _image_output(
    ctx: Context, job: Job, socket: Interface, prefix: str, parsed: ParsedOutputs
) -> dict[str, Any]:
    from gantry import imaging

    directory = prefix + socket.relative_path + "/"
    keys = [
        item["Key"]
        for page in ctx.clients.s3.get_paginator("list_objects_v2").paginate(
            Bucket=ctx.settings.bucket_name, Prefix=directory
        )
        for item in page.get("Contents", [])
    ]
    images = [k for k in keys if k.lower().endswith(IMAGE_SUFFIXES)]
    if not keys:
        raise OutputError(f"Output directory '{socket.relative_path}' is empty")
    if len(images) != 1:
        raise OutputError(
            f"Only 1 image should be produced in '{socket.relative_path}', we found {len(images)}"
        )
    source_key = images[0]
    name = posixpath.basename(source_key)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / name
        try:
            # The header is all that is read: a .mha's comes by a ranged GET, a TIFF's tags
            # by ranged reads where they lie; only other formats are downloaded.
            if imaging.suffix_of(name) in imaging.TIFF_SUFFIXES:
                with S3File(ctx.clients.s3, ctx.settings.bucket_name, source_key) as handle:
                    info = imaging.tiff_info(cast(BinaryIO, handle))
            else:
                bucket = ctx.settings.bucket_name
                if fetch_mha_header(ctx.clients.s3, bucket, source_key, local) is None:
                    _check_downloadable(ctx, socket, source_key)
                    ctx.clients.s3.download_file(bucket, source_key, str(local))
                info = imaging.read_image_info(local)
                if imaging.suffix_of(name) == ".mha":
                    with local.open("rb") as header:
                        head = header.read(64 * 1024)
                    size = _object_size(ctx, source_key) or 0
                    problem = imaging.mha_data_problem(head, size, info)
                    if problem:
                        raise imaging.ImageError(problem)
        except imaging.ImageError as error:
            raise OutputError(
                f"The output image '{socket.relative_path}/{name}' could not be read: {error}"
            ) from error
    image_pk = str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:{job.pk}:{job.attempt}:{socket.slug}"))
    key = resources.image_file_key(image_pk, name)
    bucket = ctx.settings.bucket_name
    copy_object(ctx.clients.s3, bucket, source_key, key)
    image = imaging.image_from(
        info, pk=image_pk, name=name, owner=job.creator, key=key, created=timeutil.iso()
    )
    parsed.images.append(image)
    return {"socket": socket.slug, "image": image_pk}


def _check_downloadable(ctx: Context, socket: Interface, key: str) -> None:
    size = _object_size(ctx, key) or 0
    if size > MAX_DOWNLOADED_IMAGE_BYTES:
        name = posixpath.basename(key)
        raise OutputError(
            f"The output image '{socket.relative_path}/{name}' is too large to be read "
            f"({size} bytes; at most {MAX_DOWNLOADED_IMAGE_BYTES} for this format): write it "
            "as .mha or .tif, whose headers are read where they lie"
        )


def to_socket_values(ctx: Context, drafts: list[dict[str, Any]]) -> list[SocketValue]:
    pks = ctx.store.table.next_ids("socket_value", len(drafts))
    return [SocketValue(pk=pk, **draft) for pk, draft in zip(pks, drafts, strict=True)]
