"""Completing an upload S3 does not know answers 404 NoSuchUpload, as S3 does.

moto looks the upload up with ``bucket.multiparts[upload_id]`` and lets the KeyError through:
the endpoint answered 500 InternalError, which botocore retries four times before it gives up
with a message about an internal error. S3 answers NoSuchUpload at once for an id that was
never made, was aborted, or whose completion a crash kept its client from hearing (a retry of
a completion that did happen is answered by moto's own check first, as S3 answers it).
"""

from __future__ import annotations

from typing import Any

from gantry.local import moto_patch

# The moto whose ``S3Backend.complete_multipart_upload`` this guards.
MOTO_VERSION = "5.2.5"
_NAME = "complete_multipart_upload"


def install() -> bool:
    """Guard moto's completion; False (moto's own stays) for another moto version."""
    from moto.s3.models import S3Backend

    return moto_patch.replace(
        S3Backend, _NAME, complete_multipart_upload, moto_version=MOTO_VERSION
    )


def complete_multipart_upload(self: Any, bucket_name: str, multipart_id: str, body: Any) -> Any:
    from moto.s3.exceptions import NoSuchUpload
    from moto.s3.models import S3Backend

    if multipart_id not in self.get_bucket(bucket_name).multiparts:
        raise NoSuchUpload(upload_id=multipart_id)
    return moto_patch.original(S3Backend, _NAME)(self, bucket_name, multipart_id, body)
