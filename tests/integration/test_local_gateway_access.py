"""The local gateway's https host is what API users reach: besides the API, it serves only
the presigned S3 URLs the API hands out, checked as S3 checks them. Anything else (a listing
of the bucket, a key of another user's, a URL past its expiry, the table) is refused, so the
API's access policy is not bypassed by talking to the embedded AWS endpoint through it."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gantry.local import presigned
from gantry.local.endpoint import EmbeddedAws
from gantry.local.gateway import ApiPool, Gateway, gateway_app
from gantry.local.tls import ensure_certificates

SIGNER = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
S3_CONFIG = Config(s3={"addressing_style": "path"}, signature_version="s3v4")


class _Stack:
    def __init__(self, endpoint: EmbeddedAws, gateway: Gateway, tls: Any, bucket: str) -> None:
        self.endpoint = endpoint
        self.gateway = gateway
        self.tls = tls
        self.bucket = bucket

    def s3(self, url: str, **credentials: str) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            config=S3_CONFIG,
            verify=str(self.tls.ca_file),
            **(credentials or SIGNER),
        )

    def get(self, url: str) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(self.tls.ca_file))
        try:
            with urllib.request.urlopen(url, context=context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[_Stack]:
    endpoint = EmbeddedAws().start()
    tls = ensure_certificates(tmp_path / "tls")
    gateway = Gateway(tls)
    # No API request reaches the pool here: the tests only go to S3 through the gateway.
    pool = ApiPool(None)  # type: ignore[arg-type]
    gateway.start(gateway_app(pool, endpoint.app, signer=lambda: ("local", "local")))
    bucket = f"gw-{uuid.uuid4().hex[:12]}"
    direct = boto3.client(
        "s3", endpoint_url=endpoint.url, region_name="us-east-1", config=S3_CONFIG, **SIGNER
    )
    direct.create_bucket(Bucket=bucket)
    direct.put_object(Bucket=bucket, Key="uploads/alice/1/ct.mha", Body=b"alice's scan")
    direct.put_object(Bucket=bucket, Key="uploads/bob/2/ct.mha", Body=b"bob's scan")
    try:
        yield _Stack(endpoint, gateway, tls, bucket)
    finally:
        gateway.stop()
        endpoint.stop()


def test_a_presigned_url_the_api_hands_out_works_through_the_gateway(stack: _Stack) -> None:
    signer = stack.s3(stack.gateway.base_url)
    url = signer.generate_presigned_url(
        "get_object", Params={"Bucket": stack.bucket, "Key": "uploads/bob/2/ct.mha"}
    )
    assert stack.get(url) == (200, b"bob's scan")


def test_a_key_changed_in_a_presigned_url_is_refused(stack: _Stack) -> None:
    signer = stack.s3(stack.gateway.base_url)
    url = signer.generate_presigned_url(
        "get_object", Params={"Bucket": stack.bucket, "Key": "uploads/bob/2/ct.mha"}
    )
    crafted = url.replace("uploads/bob/2/ct.mha", "uploads/alice/1/ct.mha")
    status, body = stack.get(crafted)
    assert status == 403, body
    assert b"alice" not in body


def _environ(url: str, method: str = "GET") -> dict[str, str]:
    parts = urlsplit(url)
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(parts.path),
        "RAW_URI": parts.path + "?" + parts.query,
        "QUERY_STRING": parts.query,
        "HTTP_HOST": parts.netloc,
    }


def test_a_presigned_url_is_valid_until_it_expires() -> None:
    signer = boto3.client(
        "s3",
        endpoint_url="https://127.0.0.1:8443",
        region_name="us-east-1",
        config=S3_CONFIG,
        **SIGNER,
    )
    url = signer.generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "values/j/1/a b.json"}, ExpiresIn=60
    )
    environ = _environ(url)
    assert presigned.is_valid(environ, "local", "local")
    later = datetime.now(UTC) + timedelta(seconds=120)
    assert not presigned.is_valid(environ, "local", "local", now=later)
    assert not presigned.is_valid(environ, "local", "other secret")
    assert not presigned.is_valid(_environ(url, "PUT"), "local", "local")
    assert not presigned.is_valid({**environ, "HTTP_HOST": "evil:1"}, "local", "local")


@pytest.mark.parametrize(
    "credentials", [SIGNER, {"aws_access_key_id": "x", "aws_secret_access_key": "y"}]
)
def test_the_bucket_cannot_be_listed_or_read_through_the_gateway(
    stack: _Stack, credentials: dict[str, str]
) -> None:
    # Header-signed requests (any credentials: the embedded endpoint accepts all) are what an
    # API user would send to reach every user's objects.
    client = stack.s3(stack.gateway.base_url, **credentials)
    with pytest.raises(ClientError) as listed:
        client.list_objects_v2(Bucket=stack.bucket)
    assert listed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as read:
        client.get_object(Bucket=stack.bucket, Key="uploads/alice/1/ct.mha")
    assert read.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_the_table_cannot_be_reached_through_the_gateway(stack: _Stack) -> None:
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=stack.gateway.base_url,
        region_name="us-east-1",
        verify=str(stack.tls.ca_file),
        config=Config(retries={"max_attempts": 1}),
        **SIGNER,
    )
    with pytest.raises(ClientError) as listed:
        dynamodb.list_tables()
    assert listed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_presigned_upload_part_works_through_the_gateway(stack: _Stack) -> None:
    # gcapi's uploads: parts PUT to presigned URLs on the API's host.
    direct = stack.s3(stack.endpoint.url)
    upload = direct.create_multipart_upload(Bucket=stack.bucket, Key="uploads/bob/3/big.mha")
    url = stack.s3(stack.gateway.base_url).generate_presigned_url(
        "upload_part",
        Params={
            "Bucket": stack.bucket,
            "Key": "uploads/bob/3/big.mha",
            "UploadId": upload["UploadId"],
            "PartNumber": 1,
        },
    )
    context = ssl.create_default_context(cafile=str(stack.tls.ca_file))
    request = urllib.request.Request(
        url, data=b"part one", method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, context=context) as response:
        assert response.status == 200
    parts = direct.list_parts(
        Bucket=stack.bucket, Key="uploads/bob/3/big.mha", UploadId=upload["UploadId"]
    )
    assert [p["Size"] for p in parts["Parts"]] == [8]
