"""User uploads as S3 multipart uploads, filled by the client through presigned part URLs."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from gantry import access, resources, timeutil
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound, ValidationFailed
from gantry.uploads import CompleteUpload, PartNumbers, Upload, UploadCreate, UploadStatus
from gantry.users import User


def create(ctx: Context, user: User, body: UploadCreate) -> Upload:
    pk = str(uuid.uuid4())
    key = resources.upload_key(user.username, pk, body.filename)
    response = ctx.clients.s3.create_multipart_upload(Bucket=ctx.settings.bucket_name, Key=key)
    upload = Upload(
        pk=pk,
        creator=user.username,
        filename=body.filename,
        key=key,
        s3_upload_id=response["UploadId"],
        created=timeutil.iso(),
    )
    return ctx.store.uploads.create(upload)


def get_own(ctx: Context, user: User, pk: str, s3_upload_id: str | None = None) -> Upload:
    """The user's own upload (an admin's: anyone's); others' are "not found", never
    "forbidden"."""
    upload = ctx.store.uploads.get(pk)
    if not access.upload(user, Action.CHANGE, upload) or (
        s3_upload_id is not None and s3_upload_id != upload.s3_upload_id
    ):
        raise NotFound(f"Upload {pk} not found")
    return upload


def _require_open(upload: Upload) -> None:
    if upload.status is not UploadStatus.INITIALIZED:
        raise ValidationFailed(
            f"Upload {upload.pk} is {upload.status.value.lower()}", field="status"
        )


def presigned_urls(ctx: Context, upload: Upload, body: PartNumbers) -> dict[str, str]:
    _require_open(upload)
    return {
        str(number): ctx.clients.s3_presign.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": ctx.settings.bucket_name,
                "Key": upload.key,
                "UploadId": upload.s3_upload_id,
                "PartNumber": number,
            },
            ExpiresIn=ctx.settings.presigned_url_seconds,
        )
        for number in body.part_numbers
    }


def complete(ctx: Context, upload: Upload, body: CompleteUpload) -> Upload:
    """Complete the upload; a retry of a completion that S3 made (the first answer, or the
    record's update, was lost) finds the object these parts made and answers as the first."""
    parts: list[dict[str, Any]] = [
        {"ETag": p.ETag, "PartNumber": p.PartNumber}
        for p in sorted(body.parts, key=lambda p: p.PartNumber)
    ]
    if upload.status is UploadStatus.COMPLETED and _completed_size(ctx, upload, parts) is not None:
        return upload
    _require_open(upload)
    try:
        ctx.clients.s3.complete_multipart_upload(
            Bucket=ctx.settings.bucket_name,
            Key=upload.key,
            UploadId=upload.s3_upload_id,
            MultipartUpload={"Parts": parts},
        )
    except ctx.clients.s3.exceptions.ClientError as error:
        # NoSuchUpload where S3 completed it before a crash kept the record from saying so.
        if _completed_size(ctx, upload, parts) is None:
            message = error.response.get("Error", {}).get("Message", "the parts do not match")
            raise ValidationFailed(
                f"Could not complete the upload: {message}", field="parts"
            ) from error
    size = ctx.clients.s3.head_object(Bucket=ctx.settings.bucket_name, Key=upload.key)[
        "ContentLength"
    ]

    def change(current: Upload) -> Upload:
        return current.model_copy(update={"status": UploadStatus.COMPLETED, "size": size})

    return ctx.store.uploads.update(upload.pk, change)


def multipart_etag(etags: list[str]) -> str | None:
    """S3's ETag of an object completed from parts with these ETags (the MD5 of their MD5s
    and the count); None where a part's ETag is not an MD5 (encrypted with KMS)."""
    try:
        digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    except ValueError:
        return None
    return f'"{hashlib.md5(digests).hexdigest()}-{len(etags)}"'


def _completed_size(ctx: Context, upload: Upload, parts: list[dict[str, Any]]) -> int | None:
    """The size of the upload's object when it is the one these parts make; else None."""
    expected = multipart_etag([part["ETag"] for part in parts])
    try:
        head = ctx.clients.s3.head_object(Bucket=ctx.settings.bucket_name, Key=upload.key)
    except ctx.clients.s3.exceptions.ClientError:
        return None
    return int(head["ContentLength"]) if expected and head.get("ETag") == expected else None


def abort(ctx: Context, upload: Upload) -> Upload:
    _require_open(upload)
    ctx.clients.s3.abort_multipart_upload(
        Bucket=ctx.settings.bucket_name, Key=upload.key, UploadId=upload.s3_upload_id
    )
    return ctx.store.uploads.update(
        upload.pk, lambda current: current.model_copy(update={"status": UploadStatus.ABORTED})
    )


def list_parts(ctx: Context, upload: Upload) -> list[dict[str, Any]]:
    _require_open(upload)
    parts: list[dict[str, Any]] = []
    marker = 0
    while True:
        response = ctx.clients.s3.list_parts(
            Bucket=ctx.settings.bucket_name,
            Key=upload.key,
            UploadId=upload.s3_upload_id,
            PartNumberMarker=marker,
        )
        for part in response.get("Parts", []):
            parts.append(
                {
                    "ETag": part["ETag"],
                    "PartNumber": part["PartNumber"],
                    "LastModified": timeutil.iso(part["LastModified"]),
                    "Size": part["Size"],
                }
            )
        if not response.get("IsTruncated"):
            return parts
        marker = response["NextPartNumberMarker"]
