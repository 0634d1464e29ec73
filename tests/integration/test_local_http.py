"""The local stack's HTTP servers: connections kept open between requests, and the requests
on them answered as moto's own server would (S3 metadata names, framing, restarts)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gantry.local.endpoint import EmbeddedAws
from gantry.local.gateway import Gateway
from gantry.local.httpserver import body_reader
from gantry.local.tls import ensure_certificates
from tests.waits import WAIT_SECONDS

CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


@pytest.fixture
def endpoint() -> Iterator[EmbeddedAws]:
    server = EmbeddedAws().start()
    yield server
    server.stop()


def _s3(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
        **CREDENTIALS,
    )


def _bucket(s3: Any) -> str:
    name = f"http-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def test_requests_on_one_client_connection_share_one_tcp_connection(endpoint):
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=WAIT_SECONDS)
    try:
        connection.request("GET", "/")
        first = connection.getresponse()
        first.read()
        sock = connection.sock
        connection.request("GET", "/")
        second = connection.getresponse()
        second.read()
        assert (first.status, second.status) == (200, 200)
        assert first.getheader("Connection") != "close"
        # http.client reconnects on its own when the server closed: the same socket object
        # means the second request went over the first one's connection.
        assert sock is not None and connection.sock is sock
    finally:
        connection.close()
    assert endpoint.connections_opened == 1


def test_a_boto3_client_makes_its_requests_over_one_connection(endpoint):
    s3 = _s3(endpoint.url)
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=endpoint.url, region_name="us-east-1", **CREDENTIALS
    )
    bucket = _bucket(s3)
    for n in range(10):
        s3.put_object(Bucket=bucket, Key=f"k{n}", Body=b"x" * n)
        s3.get_object(Bucket=bucket, Key=f"k{n}")["Body"].read()
        dynamodb.list_tables()
    # A HEAD (no body) and an error answer in between leave the connection usable.
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="missing")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="missing")
    assert s3.get_object(Bucket=bucket, Key="k3")["Body"].read() == b"xxx"
    assert endpoint.connections_opened == 2  # one per client


def test_s3_metadata_names_with_underscores_round_trip(endpoint):
    s3 = _s3(endpoint.url)
    bucket = _bucket(s3)
    metadata = {"signature_hmac_sha256": "abc", "content-kind": "result"}
    s3.put_object(Bucket=bucket, Key="io/result.json", Body=b"{}", Metadata=metadata)
    assert s3.head_object(Bucket=bucket, Key="io/result.json")["Metadata"] == metadata
    upload = s3.create_multipart_upload(Bucket=bucket, Key="io/big", Metadata=metadata)
    part = s3.upload_part(
        Bucket=bucket, Key="io/big", UploadId=upload["UploadId"], PartNumber=1, Body=b"y" * 10
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="io/big",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    got = s3.get_object(Bucket=bucket, Key="io/big")
    assert got["Metadata"] == metadata
    assert got["Body"].read() == b"y" * 10


def test_keys_with_encoded_slashes_and_spaces_keep_their_spelling(endpoint):
    s3 = _s3(endpoint.url)
    bucket = _bucket(s3)
    key = "uploads/a%2Fb c+d.json"
    s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"1"


def test_a_client_goes_on_after_the_endpoint_restarts_on_its_port():
    """``gantry local up`` stopped and started again: a client whose pooled connection the
    old server closed carries on against the new one."""
    first = EmbeddedAws().start()
    port = first.port
    s3 = _s3(first.url)
    s3.list_buckets()
    first.stop()
    second = EmbeddedAws(port=port).start()
    try:
        assert "Buckets" in s3.list_buckets()
    finally:
        second.stop()


def test_the_gateway_keeps_one_tls_connection_for_a_client(tmp_path: Path):
    def app(environ, start_response):
        body = json.dumps({"path": environ["PATH_INFO"], "scheme": environ["wsgi.url_scheme"]})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode()]

    tls = ensure_certificates(tmp_path / "tls")
    gateway = Gateway(tls).start(app)
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    connection = http.client.HTTPSConnection(
        gateway.host, gateway.port, context=context, timeout=WAIT_SECONDS
    )
    try:
        answers = []
        for path in ("/api/v1/one", "/two"):
            connection.request("GET", path)
            answers.append(json.loads(connection.getresponse().read()))
            sock = connection.sock
        connection.request("GET", "/three")
        connection.getresponse().read()
        assert connection.sock is sock
        assert answers == [
            {"path": "/api/v1/one", "scheme": "https"},
            {"path": "/two", "scheme": "https"},
        ]
        assert gateway.connections_opened == 1
    finally:
        connection.close()
        gateway.stop()


def _read_whole(environ: dict) -> bytes:
    stream, left, chunks = environ["wsgi.input"], int(environ["CONTENT_LENGTH"]), []
    while left > 0:
        chunk = stream.read(min(1024 * 1024, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_into_buffer(environ: dict) -> bytes:
    # As an upload part is stored: straight from the socket into the caller's buffer.
    read = body_reader(environ, int(environ["CONTENT_LENGTH"]))
    buffer, got = bytearray(int(environ["CONTENT_LENGTH"]) + 1024 * 1024), 0
    with memoryview(buffer) as view:
        while count := read(view[got : got + 1024 * 1024 + 7]):
            got += count
    return bytes(buffer[:got])


@pytest.mark.parametrize("read", [_read_whole, _read_into_buffer])
def test_large_bodies_read_a_mib_at_a_time_arrive_whole_over_tls(tmp_path: Path, read):
    # The upload path reads request bodies in reads larger than the server's buffer; what
    # each request read must be exactly its body, and the connection must go on after it.
    def app(environ, start_response):
        body = hashlib.md5(read(environ)).hexdigest().encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    tls = ensure_certificates(tmp_path / "tls")
    gateway = Gateway(tls).start(app)
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    connection = http.client.HTTPSConnection(
        gateway.host, gateway.port, context=context, timeout=WAIT_SECONDS
    )
    try:
        for size in (3 * 1024 * 1024 + 13, 5, 16 * 1024 * 1024):
            body = os.urandom(size)
            connection.request("PUT", "/bucket/key", body=body)
            assert connection.getresponse().read().decode() == hashlib.md5(body).hexdigest()
        assert gateway.connections_opened == 1
    finally:
        connection.close()
        gateway.stop()


def test_a_silent_client_does_not_hold_up_the_gateway(tmp_path: Path):
    """The TLS handshake runs in a worker: a client that connects and sends nothing leaves
    the others served."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    tls = ensure_certificates(tmp_path / "tls")
    gateway = Gateway(tls).start(app)
    silent = socket.create_connection((gateway.host, gateway.port))
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        connection = http.client.HTTPSConnection(
            gateway.host, gateway.port, context=context, timeout=WAIT_SECONDS
        )
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"ok"
        connection.close()
    finally:
        silent.close()
        gateway.stop()


def test_the_endpoint_sends_each_request_to_the_backend_moto_would(endpoint):
    """The endpoint remembers which moto backend serves a host; moto's own dispatcher, asked
    about the same real requests, picks the same backends."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    from gantry.local.endpoint import moto_app

    recorded: list[tuple[dict[str, Any], bytes]] = []
    app = endpoint.app

    def record(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        recorded.append(({k: v for k, v in environ.items() if isinstance(v, str)}, body))
        return app(environ, start_response)

    endpoint.app = record
    kwargs = {"endpoint_url": endpoint.url, "region_name": "us-east-1", **CREDENTIALS}
    s3 = _s3(endpoint.url)
    bucket = _bucket(s3)
    s3.put_object(Bucket=bucket, Key="a/b.json", Body=b"{}")
    s3.get_object(Bucket=bucket, Key="a/b.json")["Body"].read()
    s3.list_objects_v2(Bucket=bucket)
    dynamodb = boto3.client("dynamodb", **kwargs)
    dynamodb.list_tables()
    sqs = boto3.client("sqs", **kwargs)
    queue = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="m")
    sqs.receive_message(QueueUrl=queue)
    boto3.client("events", **kwargs).list_rules()
    boto3.client("batch", **kwargs).describe_job_queues()
    boto3.client("sts", **kwargs).get_caller_identity()
    ours, theirs = moto_app(), DomainDispatcherApplication(create_backend_app)

    def backend(dispatcher: Any, environ: dict[str, Any], body: bytes) -> str:
        chosen = dispatcher.get_application({**environ, "wsgi.input": io.BytesIO(body)})
        return next(name for name, app in dispatcher.app_instances.items() if app is chosen)

    expected = [backend(theirs, environ, body) for environ, body in recorded]
    assert {"s3", "dynamodb", "sqs", "events", "batch", "sts"} <= set(expected)
    for _ in range(2):  # the second time from what it remembered
        assert [backend(ours, environ, body) for environ, body in recorded] == expected
