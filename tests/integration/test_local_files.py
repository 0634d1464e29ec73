"""On one machine the runner copies inputs and outputs from and to the endpoint's files.

The runner stages inputs against the embedded endpoint as the local compute backend starts it
(``GANTRY_RUNNER_LOCAL_FILES=1``): an input the durable endpoint keeps as a file is copied from
that file, not downloaded; whatever the job then does to its copy, the stored object keeps its
bytes. An endpoint without files (the in-memory one, like any other S3) gets the usual
download, as on AWS. Outputs go the other way (``GANTRY_RUNNER_LOCAL_INCOMING``): copied into
the endpoint's incoming folder and moved into its store by a PutObject naming the copy, stored
as durably as an upload; the endpoint takes no other file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from batch_runner import local_files
from batch_runner.config import Limits
from batch_runner.staging import StagingError, stage_inputs, upload_outputs
from gantry.contract import LOCAL_FILE_HEADER, LOCAL_FILES_ENV, LOCAL_INCOMING_ENV, InvocationInput
from gantry.local.endpoint import EmbeddedAws

pytestmark = pytest.mark.slow


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def _body() -> bytes:
    # Larger than one transfer part (8 MiB), so a download would be ranged and concurrent.
    return hashlib.sha256(b"ct").digest() * (9 * 1024 * 1024 // 32)


@pytest.fixture
def runner_on_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCAL_FILES_ENV, "1")


def _endpoint(data_dir: Path | None) -> Generator[tuple[Any, str], None, None]:
    endpoint = EmbeddedAws(data_dir=data_dir).start()
    if endpoint.store is not None:
        os.environ[LOCAL_INCOMING_ENV] = str(endpoint.store.incoming)
    try:
        client = _client(endpoint.url)
        bucket = f"gantry-inputs-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        yield client, bucket
    finally:
        os.environ.pop(LOCAL_INCOMING_ENV, None)
        endpoint.stop()


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    yield from _endpoint(tmp_path / "data")


@pytest.fixture
def in_memory() -> Iterator[tuple[Any, str]]:
    yield from _endpoint(None)


def _inputs(bucket: str) -> list[InvocationInput]:
    return [
        InvocationInput(relative_path="images/ct/ct.mha", bucket_name=bucket, bucket_key="in/ct"),
        InvocationInput(relative_path="notes.txt", bucket_name=bucket, bucket_key="in/notes"),
    ]


def _downloads(client: Any) -> list[str]:
    """Byte ranges of the GetObject requests the client sends from now on."""
    ranges: list[str] = []

    def seen(params: dict[str, Any], **_kwargs: Any) -> None:
        ranges.append(params.get("Range", "whole"))

    client.meta.events.register("provide-client-params.s3.GetObject", seen)
    return ranges


@pytest.mark.usefixtures("runner_on_one_machine")
def test_inputs_are_copied_from_the_stored_files(durable: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = durable
    body = _body()
    client.put_object(Bucket=bucket, Key="in/ct", Body=body)
    client.put_object(Bucket=bucket, Key="in/notes", Body=b"")  # nothing to copy from
    requests = _downloads(client)

    staged = stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())

    image = tmp_path / "input" / "images" / "ct" / "ct.mha"
    assert image.read_bytes() == body
    assert (tmp_path / "input" / "notes.txt").read_bytes() == b""
    assert [entry["size"] for entry in staged] == [len(body), 0]
    # The image: one byte asked for, the rest copied from the file, not downloaded in parts.
    assert requests.count("bytes=0-0") == 2
    assert len([r for r in requests if r != "bytes=0-0"]) <= 1  # the empty file downloads
    # The job's copy is its own: changed in place or replaced, the stored object is not.
    assert os.stat(image).st_nlink == 1
    with open(image, "r+b") as handle:
        handle.write(b"altered")
    assert client.get_object(Bucket=bucket, Key="in/ct")["Body"].read() == body


@pytest.mark.usefixtures("runner_on_one_machine")
def test_an_uploaded_input_is_copied_from_its_part_files(
    durable: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = durable
    parts = [hashlib.sha256(str(n).encode()).digest() * (5 * 1024 * 1024 // 32) for n in (1, 2)]
    parts.append(b"the last part")
    upload = client.create_multipart_upload(Bucket=bucket, Key="in/ct")["UploadId"]
    etags = [
        client.upload_part(Bucket=bucket, Key="in/ct", UploadId=upload, PartNumber=n, Body=body)
        for n, body in enumerate(parts, 1)
    ]
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="in/ct",
        UploadId=upload,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e["ETag"]} for n, e in enumerate(etags, 1)]
        },
    )
    requests = _downloads(client)

    # The endpoint names the three files the object is kept in; the runner joins them.
    assert local_files.copy_local(client, bucket, "in/ct", str(tmp_path / "ct"))
    assert (tmp_path / "ct").read_bytes() == b"".join(parts)
    assert requests == ["bytes=0-0"]


@pytest.mark.usefixtures("runner_on_one_machine")
def test_an_endpoint_without_files_gets_the_download(
    in_memory: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = in_memory
    body = _body()
    client.put_object(Bucket=bucket, Key="in/ct", Body=body)
    client.put_object(Bucket=bucket, Key="in/notes", Body=b"notes")

    assert not local_files.copy_local(client, bucket, "in/ct", str(tmp_path / "ct"))
    assert not (tmp_path / "ct").exists()
    stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())

    assert (tmp_path / "input" / "images" / "ct" / "ct.mha").read_bytes() == body
    assert (tmp_path / "input" / "notes.txt").read_bytes() == b"notes"


def test_without_the_local_backend_the_runner_downloads(
    durable: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOCAL_FILES_ENV, raising=False)
    client, bucket = durable
    body = _body()
    client.put_object(Bucket=bucket, Key="in/ct", Body=body)
    client.put_object(Bucket=bucket, Key="in/notes", Body=b"notes")
    requests = _downloads(client)

    stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())

    assert (tmp_path / "input" / "images" / "ct" / "ct.mha").read_bytes() == body
    assert "bytes=0-0" not in requests  # as on AWS: plain downloads only


def test_a_missing_input_is_still_a_staging_error(
    durable: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOCAL_FILES_ENV, "1")
    client, bucket = durable
    with pytest.raises(StagingError, match="could not be downloaded"):
        stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())


def _puts(client: Any) -> list[int]:
    """Body sizes of the PutObject and UploadPart requests the client sends from now on."""
    sizes: list[int] = []

    def seen(params: dict[str, Any], **_kwargs: Any) -> None:
        body = params.get("Body", b"")
        sizes.append(len(body) if isinstance(body, bytes) else -1)

    client.meta.events.register("provide-client-params.s3.PutObject", seen)
    client.meta.events.register("provide-client-params.s3.UploadPart", seen)
    return sizes


def test_outputs_are_moved_into_the_store_as_copies(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    output = tmp_path / "output"
    (output / "images" / "seg").mkdir(parents=True)
    body = _body()
    (output / "images" / "seg" / "seg.mha").write_bytes(body)
    (output / "result.json").write_text('{"score": 1}')
    files = [
        ("images/seg/seg.mha", output / "images" / "seg" / "seg.mha"),
        ("result.json", output / "result.json"),
    ]
    endpoint = _endpoint(data_dir)
    client, bucket = next(endpoint)
    puts = _puts(client)

    stored = upload_outputs(client, files, bucket, "io/job/1/output/")

    assert [o.size for o in stored] == [len(body), 12]
    assert puts == [0, 0]  # no byte sent over HTTP
    key = "io/job/1/output/images/seg/seg.mha"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert list((data_dir / "incoming").iterdir()) == []
    # The job's file and the stored object share nothing: a change to one is not the other's.
    with open(files[0][1], "r+b") as handle:
        handle.write(b"altered")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert all(f.stat().st_nlink == 1 for f in (data_dir / "objects").iterdir())
    endpoint.close()

    # Stored as any acknowledged write is: there after a restart.
    again = EmbeddedAws(data_dir=data_dir).start()
    try:
        client = _client(again.url)
        client.create_bucket(Bucket=bucket)
        again.restore()
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        result = client.get_object(Bucket=bucket, Key="io/job/1/output/result.json")
        assert result["Body"].read() == b'{"score": 1}'
    finally:
        again.stop()


def test_the_endpoint_takes_no_file_but_a_single_named_one_of_its_incoming_folder(
    durable: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = durable
    incoming = Path(os.environ[LOCAL_INCOMING_ENV])
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the store")
    linked = incoming / "linked"
    os.link(secret, linked)
    for named in (str(secret), str(incoming / ".." / "secret"), str(linked), "relative"):

        def header(request: Any, named: str = named, **_kwargs: Any) -> None:
            request.headers[LOCAL_FILE_HEADER] = named

        client.meta.events.register("before-sign.s3.PutObject", header)
        with pytest.raises(client.exceptions.ClientError, match="InvalidRequest"):
            client.put_object(Bucket=bucket, Key="values/x", Body=b"")
        client.meta.events.unregister("before-sign.s3.PutObject", header)
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)
    assert secret.read_bytes() == b"not for the store"


def test_an_endpoint_without_an_incoming_folder_gets_the_upload(
    in_memory: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Misconfigured: the folder is not the endpoint's. It stores an empty object, which the
    # upload then replaces.
    monkeypatch.setenv(LOCAL_INCOMING_ENV, str(tmp_path))
    client, bucket = in_memory
    body = _body()
    (tmp_path / "out.bin").write_bytes(body)

    upload_outputs(client, [("out.bin", tmp_path / "out.bin")], bucket, "out/")

    assert client.get_object(Bucket=bucket, Key="out/out.bin")["Body"].read() == body
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
