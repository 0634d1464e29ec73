"""Check uploaded inputs of a job in "Validating inputs", import its images, then queue it.

Runs from the upload handler for a ``validate-inputs`` message, at least once and possibly
twice at the same time. Everything it writes is deterministic (image pks and S3 keys derive
from the job and socket), so a rerun overwrites instead of duplicating; the job itself
changes in one versioned write (transition to Queued or Failed), which only one run wins.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from gantry import access, jsonlimits, resources, timeutil
from gantry.access import Action
from gantry.aws import copy_object
from gantry.context import Context
from gantry.errors import NotFound
from gantry.images import Image
from gantry.interfaces import MAX_JSON_BYTES, Interface, InterfaceValueError, validate_value
from gantry.job_states import JobStatus
from gantry.jobs import Job, SocketValue
from gantry.kinds import InterfaceKind, accepts_upload, spec
from gantry.uploads import MAX_FILENAME, Upload, UploadStatus
from gantry.users import User

logger = logging.getLogger(__name__)

K = InterfaceKind
# JSON given as a file is parsed in memory: cap it well below the handler's memory.
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024
_HEAD_BYTES = 4096
_CHUNK = 1024 * 1024

# File signatures: (offset, bytes); any one matching is enough.
_MAGIC: dict[InterfaceKind, tuple[tuple[int, bytes], ...]] = {
    K.PDF: ((0, b"%PDF-"),),
    K.THUMBNAIL_PNG: ((0, b"\x89PNG\r\n\x1a\n"),),
    K.THUMBNAIL_JPG: ((0, b"\xff\xd8\xff"),),
    # An empty archive has only the end-of-central-directory record.
    K.ZIP: ((0, b"PK\x03\x04"), (0, b"PK\x05\x06")),
    K.MP4: ((4, b"ftyp"),),
    K.SQREG: ((0, b"SQLite format 3\x00"),),
    # BIOM 2.x is HDF5; BIOM 1.0 is JSON.
    K.BIOM: ((0, b"\x89HDF\r\n\x1a\n"), (0, b"{")),
}
_MAGIC_TEXT = {
    K.PDF: "it does not start with %PDF",
    K.THUMBNAIL_PNG: "it has no PNG signature",
    K.THUMBNAIL_JPG: "it has no JPEG signature",
    K.ZIP: "it is not a ZIP archive",
    K.MP4: "it has no MP4 'ftyp' box",
    K.SQREG: "it is not an SQLite database",
    K.BIOM: "it is neither BIOM 2 (HDF5) nor BIOM 1 (JSON)",
}
_TEXT_KINDS = frozenset({K.CSV, K.NEWICK, K.OBJ})


class InputError(Exception):
    """An input the user must fix; the message is shown as is (prefixed with the input)."""


def image_pk_for(job_pk: str, socket_slug: str) -> str:
    """The pk of the image imported for a job's input: the same on every rerun."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:{job_pk}:input:{socket_slug}"))


def validate_pending_inputs(ctx: Context, job_pk: str) -> None:
    job = ctx.store.jobs.find(job_pk)
    if job is None or job.status is not JobStatus.VALIDATING_INPUTS:
        return  # gone, or a duplicate message after another run moved it on
    pending = [v for v in job.inputs if v.pending_upload or v.pending_uploads]
    resolved, failed = resolve_pending(
        ctx,
        pending,
        scope=job.pk,
        owner=lambda _value: job.creator,
        image_pk=lambda value: image_pk_for(job.pk, value.socket),
        scratch_prefix="gantry-inputs-",
    )
    errors = {v.socket: failed[v.pk] for v in pending if v.pk in failed}
    if errors:
        _fail(ctx, job, errors)
        return

    image_pks = [r["image"] for r in resolved.values() if r.get("image")]
    if image_pks:
        # Before the job is queued, so the API shows the relation as soon as the job runs.
        ctx.store.jobs.add_input_images(job, image_pks)

    def changes(current: Job) -> dict[str, Any]:
        return {"inputs": [_ready(v, resolved.get(v.pk)) for v in current.inputs]}

    queued = ctx.store.jobs.transition(
        job_pk, attempt=job.attempt, status=JobStatus.PENDING, changes=changes
    )
    if queued is None:
        return  # another run (or a cancel) got there first
    from gantry.pipeline.provision import start_job

    start_job(ctx, job_pk)


def _ready(value: SocketValue, change: dict[str, Any] | None) -> SocketValue:
    if change is None:
        return value
    return value.model_copy(update={**change, "pending_upload": None, "pending_uploads": None})


def _fail(ctx: Context, job: Job, errors: dict[str, str]) -> None:
    from gantry.pipeline.lifecycle import finish

    messages = [f"Input '{slug}': {message}" for slug, message in errors.items()]
    summary = messages[0] if len(messages) == 1 else "; ".join(messages)
    finish(
        ctx,
        job,
        JobStatus.FAILURE,
        {"error_message": summary, "detailed_error_message": dict(errors)},
    )


def resolve_pending(
    ctx: Context,
    pending: Sequence[SocketValue],
    *,
    scope: str,
    owner: Callable[[SocketValue], str],
    image_pk: Callable[[SocketValue], str],
    scratch_prefix: str,
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Each pending value's uploads (of ``owner(value)``) turned into the value, by value pk
    (``resolve_upload``), and what the user must fix for each that could not be, by value pk
    (an interface deleted meanwhile included). Their scratch files are gone on return."""
    sockets = ctx.store.sockets.get_many_by_slug(sorted({v.socket for v in pending}))
    resolved: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix=scratch_prefix) as scratch:
        for value in pending:
            socket = sockets.get(value.socket)
            try:
                if socket is None:
                    raise InputError("the interface no longer exists")
                resolved[value.pk] = resolve_upload(
                    ctx,
                    owner(value),
                    scope,
                    socket,
                    value,
                    Path(scratch) / str(value.pk),
                    image_pk=image_pk(value),
                )
            except InputError as error:
                failed[value.pk] = str(error)
    return resolved, failed


def resolve_upload(
    ctx: Context,
    owner: str,
    scope: str,
    socket: Interface,
    value: SocketValue,
    work: Path,
    *,
    image_pk: str,
) -> dict[str, Any]:
    """Check the uploads of a pending value of ``owner`` and turn them into the value: an
    image (stored as ``image_pk``), a file copied under ``values/<scope>/``, or inline JSON.
    InputError says what the user must fix. Deterministic, so a rerun overwrites."""
    kind = spec(socket.kind)
    upload_pks = value.pending_uploads or ([value.pending_upload] if value.pending_upload else [])
    uploads = [_upload(ctx, owner, pk) for pk in upload_pks]
    if kind.is_image:
        return _import_image(ctx, owner, image_pk, socket, uploads, work)
    if len(uploads) != 1:
        raise InputError(f"expected one uploaded file, got {len(uploads)}")
    if kind.is_json:
        return _json_file(ctx, scope, socket, value, uploads[0])
    return _plain_file(ctx, scope, socket, value, uploads[0])


def _upload(ctx: Context, owner: str, pk: str) -> Upload:
    try:
        upload = ctx.store.uploads.get(pk)
    except NotFound:
        raise InputError(f"the upload {pk} no longer exists") from None
    # Checked when the value was given too; repeated because this handler trusts no message.
    user = User(username=owner)
    if not access.upload(user, Action.USE, upload) or upload.status is not UploadStatus.COMPLETED:
        raise InputError(f"the upload {pk} is not a completed upload of {owner}")
    return upload


def _file_name(upload: Upload) -> str:
    name = Path(upload.filename).name
    if name in ("", ".", "..") or name != upload.filename:
        raise InputError(f"the file name '{upload.filename}' is not allowed")
    # Saved under this name on a file system, which allows 255 bytes (uploads made before the
    # API checked it).
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME:
        raise InputError(f"the file name '{name}' is longer than {MAX_FILENAME} bytes")
    return name


def download_upload(ctx: Context, upload: Upload, directory: Path) -> Path:
    name = _file_name(upload)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if target.exists():
        raise InputError(f"the file '{name}' is uploaded twice")
    try:
        # Managed transfer: streamed to disk in parts, never held in memory.
        ctx.clients.s3.download_file(ctx.settings.bucket_name, upload.key, str(target))
    except ctx.clients.s3.exceptions.ClientError as error:
        if _missing(error):
            raise InputError(f"the uploaded file '{name}' no longer exists") from None
        raise
    return target


def _missing(error: Exception) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in ("404", "NoSuchKey", "NotFound")


# --- images -----------------------------------------------------------------------------------


def _import_image(
    ctx: Context, owner: str, image_pk: str, socket: Interface, uploads: list[Upload], work: Path
) -> dict[str, Any]:
    from gantry import imaging

    if socket.kind is K.DICOM_IMAGE_SET:
        raise InputError("DICOM image sets are not supported yet; upload the image as .mha")
    if not uploads:
        raise InputError("no files were uploaded")
    if len(uploads) == 1:
        imported = _import_in_place(ctx, owner, image_pk, socket, uploads[0], work)
        if imported is not None:
            return imported
    paths = [download_upload(ctx, upload, work / "upload") for upload in uploads]
    names = ", ".join(f"'{p.name}'" for p in paths)
    what = f"the file {names} is" if len(paths) == 1 else f"the files {names} are"
    try:
        prepared = imaging.prepare_image(paths, work / "converted")
        if socket.kind is K.SEGMENTATION:
            _check_segments(socket, imaging.segment_values(prepared.path))
    except imaging.ImageError as error:
        raise InputError(f"{what} not a readable image: {error}") from None
    except _SegmentError as error:
        raise InputError(str(error)) from None

    store_prepared_image(ctx, prepared, paths, image_pk=image_pk, owner=owner, uploads=uploads)
    return {"image": image_pk}


def store_prepared_image(
    ctx: Context,
    prepared: Any,
    paths: list[Path],
    *,
    image_pk: str,
    owner: str,
    uploads: list[Upload] | None = None,
) -> Image:
    """Put a checked image file (``imaging.prepare_image``) in the bucket and record it,
    named after the uploaded file that is the image. Rerun-safe for the same ``image_pk``.
    A single upload (``uploads``) stored as it is is copied in the bucket, not uploaded."""
    from gantry import imaging

    key = resources.image_file_key(image_pk, prepared.name)
    if uploads and len(uploads) == 1 and prepared.path == paths[0]:
        # A server-side copy (a link on one machine) instead of an upload of the same bytes.
        copy_object(ctx.clients.s3, ctx.settings.bucket_name, uploads[0].key, key)
    else:
        ctx.clients.s3.upload_file(str(prepared.path), ctx.settings.bucket_name, key)
    primary, _ = imaging.primary_file(paths)
    image = imaging.image_from(
        prepared.info,
        pk=image_pk,
        name=primary.name,
        owner=owner,
        key=key,
        created=timeutil.iso(),
    )
    ctx.store.images.put(image)
    return image


def _import_in_place(
    ctx: Context, owner: str, image_pk: str, socket: Interface, upload: Upload, work: Path
) -> dict[str, Any] | None:
    """A .mha or .tif image checked where it lies in the bucket and stored by a server-side
    copy: its header by ranged reads and, for a segmentation, its voxels streamed a few MiB
    at a time, so neither disk nor memory holds the whole image. None where the file cannot
    be read that way (then it is downloaded)."""
    from gantry import imaging
    from gantry.pipeline.headers import fetch_mha_header
    from gantry.s3file import S3File

    name = _file_name(upload)
    suffix = imaging.suffix_of(name)
    if suffix not in imaging.STORED_SUFFIXES:
        return None
    bucket = ctx.settings.bucket_name
    segmentation = socket.kind is K.SEGMENTATION
    try:
        with contextlib.ExitStack() as stack:
            header = None
            if suffix == ".mha":
                header = fetch_mha_header(ctx.clients.s3, bucket, upload.key, work / "h" / name)
                if header is None:
                    return None
            # A .mha's header alone says all but the voxels: only a segmentation reads on.
            handle: BinaryIO | None = None
            if header is None or segmentation:
                s3file = S3File(ctx.clients.s3, bucket, upload.key)
                handle = cast(BinaryIO, stack.enter_context(s3file))
            try:
                if header is not None:
                    info = imaging.read_image_info(header)
                    size = int(
                        ctx.clients.s3.head_object(Bucket=bucket, Key=upload.key)["ContentLength"]
                    )
                    problem = imaging.mha_data_problem(header.read_bytes(), size, info)
                    if problem:
                        raise imaging.ImageError(problem)
                    if segmentation:
                        assert handle is not None
                        _check_segments(socket, imaging.mha_segment_values(handle, info))
                elif segmentation:
                    assert handle is not None
                    info, values = imaging.tiff_segmentation(handle)
                    _check_segments(socket, values)
                else:
                    assert handle is not None
                    info = imaging.tiff_info(handle)
            except imaging.ImageError as error:
                raise InputError(f"the file '{name}' is not a readable image: {error}") from None
            except _SegmentError as error:
                raise InputError(str(error)) from None
    except ctx.clients.s3.exceptions.ClientError as error:
        if _missing(error):
            raise InputError(f"the uploaded file '{name}' no longer exists") from None
        raise
    key = resources.image_file_key(image_pk, name)
    copy_object(ctx.clients.s3, bucket, upload.key, key)
    image = imaging.image_from(
        info, pk=image_pk, name=name, owner=owner, key=key, created=timeutil.iso()
    )
    ctx.store.images.put(image)
    return {"image": image_pk}


class _SegmentError(Exception):
    pass


def _check_segments(socket: Interface, values: list[int]) -> None:
    allowed = {0, *(s.voxel_value for s in socket.overlay_segments or [])}
    extra = sorted(set(values) - allowed)
    if extra:
        raise _SegmentError(
            f"the segmentation contains the voxel values {extra}; the valid values for this "
            f"interface are {sorted(allowed)}"
        )


# --- files ------------------------------------------------------------------------------------


def _plain_file(
    ctx: Context, scope: str, socket: Interface, value: SocketValue, upload: Upload
) -> dict[str, Any]:
    kind = spec(socket.kind)
    name = upload.filename
    if not accepts_upload(socket.kind, name):
        allowed = ", ".join(t for t in kind.upload_types if t.startswith("."))
        raise InputError(f"the file '{name}' is not a {kind.label} (allowed: {allowed})")
    head = _head(ctx, upload)
    if not head:
        raise InputError(f"the file '{name}' is empty")
    signatures = _MAGIC.get(socket.kind)
    if signatures is not None:
        stripped = head.lstrip() if socket.kind is K.BIOM else head
        if not any(stripped[at : at + len(sig)] == sig for at, sig in signatures):
            raise InputError(
                f"the file '{name}' is not a valid {kind.label}: {_MAGIC_TEXT[socket.kind]}"
            )
    if socket.kind in _TEXT_KINDS:
        _check_text(ctx, socket.kind, upload)
    return {"file": _copy(ctx, upload, resources.value_key(scope, value.pk, name))}


def _head(ctx: Context, upload: Upload) -> bytes:
    try:
        response = ctx.clients.s3.get_object(
            Bucket=ctx.settings.bucket_name, Key=upload.key, Range=f"bytes=0-{_HEAD_BYTES - 1}"
        )
    except ctx.clients.s3.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "InvalidRange":
            return b""  # an empty object has no byte 0
        if _missing(error):
            raise InputError(f"the uploaded file '{upload.filename}' no longer exists") from None
        raise
    return response["Body"].read()


def _check_text(ctx: Context, kind: InterfaceKind, upload: Upload) -> None:
    """Stream the whole object: it must be UTF-8 text without NUL bytes."""
    label = spec(kind).label
    body = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=upload.key)["Body"]
    decoder = codecs.getincrementaldecoder("utf-8")()
    last = ""
    try:
        for chunk in body.iter_chunks(_CHUNK):
            if b"\x00" in chunk:
                raise InputError(f"the file '{upload.filename}' is not a {label}: it is binary")
            text = decoder.decode(chunk)
            last = text.rstrip()[-1:] or last
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InputError(
            f"the file '{upload.filename}' is not a {label}: it is not UTF-8 text"
        ) from None
    if kind is K.NEWICK and last != ";":
        raise InputError(
            f"the file '{upload.filename}' is not a {label}: a Newick tree ends with ';'"
        )


def _copy(ctx: Context, upload: Upload, key: str) -> str:
    bucket = ctx.settings.bucket_name
    # Server side, never through this handler's memory.
    copy_object(ctx.clients.s3, bucket, upload.key, key)
    return key


# --- JSON given as a file ---------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _json_file(
    ctx: Context, scope: str, socket: Interface, value: SocketValue, upload: Upload
) -> dict[str, Any]:
    name = upload.filename
    try:
        response = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=upload.key)
    except ctx.clients.s3.exceptions.ClientError as error:
        if _missing(error):
            raise InputError(f"the uploaded file '{name}' no longer exists") from None
        raise
    if int(response.get("ContentLength", 0)) > MAX_JSON_FILE_BYTES:
        response["Body"].close()
        raise InputError(
            f"the file '{name}' is larger than {MAX_JSON_FILE_BYTES // 1024**2} MiB of JSON"
        )
    raw = response["Body"].read()
    try:
        parsed = jsonlimits.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"the file '{name}' is not valid JSON: {error}") from None
    try:
        validate_value(socket, parsed)
    except InterfaceValueError as error:
        raise InputError(
            f"the file '{name}' does not match the interface: {'; '.join(error.errors)}"
        ) from None
    if socket.store_in_database:
        size = len(json.dumps(parsed, separators=(",", ":")).encode())
        if size > MAX_JSON_BYTES:
            raise InputError(
                f"the value in '{name}' is {size} bytes; values kept in the database may be "
                f"at most {MAX_JSON_BYTES // 1024} KiB"
            )
        return {"value": parsed}
    return {"file": _copy(ctx, upload, resources.value_key(scope, value.pk, name))}


# --- upload notifications ---------------------------------------------------------------------


def record_uploaded_object(ctx: Context, key: str, size: int | None) -> bool:
    """Note the size of a finished upload from its S3 notification; False if no upload has
    that key. Cheap on purpose: content is checked once the upload is bound to a job."""
    parts = key.split("/")
    if len(parts) != 4 or f"{parts[0]}/" != resources.PREFIX_UPLOADS:
        return False
    try:
        upload = ctx.store.uploads.get(parts[2])
    except NotFound:
        return False
    if upload.key != key:
        return False
    if size is not None and upload.size != size:
        ctx.store.uploads.update(
            upload.pk,
            lambda current: (
                None if current.size == size else current.model_copy(update={"size": size})
            ),
        )
    return True
