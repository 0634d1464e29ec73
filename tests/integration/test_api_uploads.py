"""uploads/ through the handler: gcapi's multipart protocol against moto's S3."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from gcapi.models import (
    PaginatedUserUploadList,
    UserUpload,
    UserUploadComplete,
    UserUploadParts,
    UserUploadPresignedURLs,
)

PART = 5 * 1024 * 1024  # S3's minimum size of every part but the last


def _start(api, filename: str = "ct.mha") -> dict:
    status, body, _ = api.post("uploads/", {"filename": filename})
    assert status == 201, body
    UserUpload(**body)
    return body


def _base(upload: dict) -> str:
    return f"uploads/{upload['pk']}/{upload['s3_upload_id']}"


def _put_parts(ctx, upload: dict, parts: list[bytes]) -> list[dict]:
    # The client PUTs each part to its presigned URL; the S3 call is the same request.
    etags = []
    for number, data in enumerate(parts, start=1):
        response = ctx.clients.s3.upload_part(
            Bucket=ctx.settings.bucket_name,
            Key=upload["key"],
            UploadId=upload["s3_upload_id"],
            PartNumber=number,
            Body=data,
        )
        etags.append({"ETag": response["ETag"], "PartNumber": number})
    return etags


def test_full_upload(api, ctx) -> None:
    upload = _start(api)
    assert upload["status"] == "Initialized"
    assert upload["filename"] == "ct.mha"

    status, body, _ = api.patch(
        f"{_base(upload)}/generate-presigned-urls/", {"part_numbers": [1, 2]}
    )
    assert status == 200, body
    presigned = UserUploadPresignedURLs(**body).presigned_urls
    assert set(presigned) == {"1", "2"}
    assert all(url.startswith("https://") and "partNumber=" in url for url in presigned.values())
    assert upload["s3_upload_id"] in presigned["1"]

    data = [b"a" * PART, b"tail"]
    parts = _put_parts(ctx, upload, data)
    status, listed, _ = api.get(f"{_base(upload)}/list-parts/")
    assert status == 200, listed
    assert [p.PartNumber for p in UserUploadParts(**listed).parts] == [1, 2]
    assert [p["Size"] for p in listed["parts"]] == [PART, 4]

    status, done, _ = api.patch(f"{_base(upload)}/complete-multipart-upload/", {"parts": parts})
    assert status == 200, done
    assert UserUploadComplete(**done).status == "Completed"
    stored = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=upload["key"])
    assert stored["Body"].read() == b"".join(data)
    assert api.get(f"uploads/{upload['pk']}/")[1]["status"] == "Completed"
    # A completed upload is closed.
    status, body, _ = api.patch(f"{_base(upload)}/generate-presigned-urls/", {"part_numbers": [3]})
    assert status == 400


def test_a_retried_complete_finishes_an_upload_s3_completed(api, ctx) -> None:
    """The platform died after S3 completed the upload and before the record said so: the
    client's retry finds the object its parts made (S3 answers NoSuchUpload) and succeeds."""
    upload = _start(api)
    data = [b"a" * PART, b"tail"]
    parts = _put_parts(ctx, upload, data)
    ctx.clients.s3.complete_multipart_upload(
        Bucket=ctx.settings.bucket_name,
        Key=upload["key"],
        UploadId=upload["s3_upload_id"],
        MultipartUpload={"Parts": parts},
    )
    for _attempt in range(2):  # and a retry of the retry whose answer was lost
        status, done, _ = api.patch(f"{_base(upload)}/complete-multipart-upload/", {"parts": parts})
        assert status == 200, done
        assert done["status"] == "Completed"
    assert api.get(f"uploads/{upload['pk']}/")[1]["status"] == "Completed"
    # Other parts than those that made the object are still refused.
    wrong = [{"ETag": parts[0]["ETag"], "PartNumber": 1}]
    status, body, _ = api.patch(f"{_base(upload)}/complete-multipart-upload/", {"parts": wrong})
    assert status == 400, body


def test_list_and_detail_parse_with_gcapi(api) -> None:
    uploads = [_start(api, f"f{i}.mha") for i in range(3)]
    status, body, _ = api.get("uploads/")
    assert status == 200
    page = PaginatedUserUploadList(**body)
    assert page.count == 3
    assert [u.pk for u in page.results] == [u["pk"] for u in uploads]
    assert api.get(f"uploads/{uploads[0]['pk']}/")[1] == uploads[0]


def test_abort(api, ctx) -> None:
    upload = _start(api)
    _put_parts(ctx, upload, [b"x"])
    status, body, _ = api.patch(f"{_base(upload)}/abort-multipart-upload/")
    assert status == 200, body
    assert body["status"] == "Aborted"
    listed = ctx.clients.s3.list_multipart_uploads(Bucket=ctx.settings.bucket_name)
    assert upload["s3_upload_id"] not in [u["UploadId"] for u in listed.get("Uploads", [])]
    status, body, _ = api.patch(
        f"{_base(upload)}/complete-multipart-upload/",
        {"parts": [{"ETag": "x", "PartNumber": 1}]},
    )
    assert status == 400
    assert "aborted" in body["detail"]


def test_complete_with_wrong_etags_is_400_naming_parts(api, ctx) -> None:
    upload = _start(api)
    _put_parts(ctx, upload, [b"x"])
    status, body, _ = api.patch(
        f"{_base(upload)}/complete-multipart-upload/",
        {"parts": [{"ETag": '"0000"', "PartNumber": 1}]},
    )
    assert status == 400
    assert "parts" in body
    assert api.get(f"uploads/{upload['pk']}/")[1]["status"] == "Initialized"


@pytest.mark.parametrize(
    "suffix", ["generate-presigned-urls/", "complete-multipart-upload/", "abort-multipart-upload/"]
)
def test_wrong_s3_upload_id_is_404(api, suffix: str) -> None:
    upload = _start(api)
    body: dict[str, Any] | None = {"generate-presigned-urls/": {"part_numbers": [1]}}.get(
        suffix, {"parts": [{"ETag": "x", "PartNumber": 1}]}
    )
    if suffix == "abort-multipart-upload/":
        body = None
    status, answer, _ = api.patch(f"uploads/{upload['pk']}/wrong-id/{suffix}", body)
    assert status == 404, answer
    status, _, _ = api.get(f"uploads/{upload['pk']}/wrong-id/list-parts/")
    assert status == 404
    assert api.get(f"uploads/{upload['pk']}/")[1]["status"] == "Initialized"


def test_others_cannot_see_or_touch_your_upload(api, api_bob) -> None:
    upload = _start(api)
    assert api_bob.get(f"uploads/{upload['pk']}/")[0] == 404
    assert api_bob.get("uploads/")[1]["count"] == 0
    status, body, _ = api_bob.patch(
        f"{_base(upload)}/generate-presigned-urls/", {"part_numbers": [1]}
    )
    assert status == 404
    assert "presigned_urls" not in body
    assert api_bob.patch(f"{_base(upload)}/abort-multipart-upload/")[0] == 404
    assert api.get(f"uploads/{upload['pk']}/")[1]["status"] == "Initialized"
    assert api.get(f"uploads/{uuid.uuid4()}/")[0] == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filename": "../etc/passwd"}, "filename"),
        ({"filename": "a/b.mha"}, "filename"),
        ({"filename": ""}, "filename"),
        ({}, "filename"),
    ],
)
def test_bad_filenames_are_400(api, body: dict, field: str) -> None:
    status, answer, _ = api.post("uploads/", body)
    assert status == 400
    assert field in answer


@pytest.mark.parametrize("numbers", [[0], [10001], []])
def test_bad_part_numbers_are_400(api, numbers: list[int]) -> None:
    upload = _start(api)
    status, body, _ = api.patch(
        f"{_base(upload)}/generate-presigned-urls/", {"part_numbers": numbers}
    )
    assert status == 400
    assert "part_numbers" in body


def test_malformed_complete_body_is_400(api) -> None:
    upload = _start(api)
    status, body, _ = api.patch(f"{_base(upload)}/complete-multipart-upload/", raw_body="{oops")
    assert status == 400
    assert "detail" in body
