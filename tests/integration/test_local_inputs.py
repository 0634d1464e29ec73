"""On one machine the runner copies its inputs from the endpoint's files, never sharing them.

The runner stages inputs against the embedded endpoint as the local compute backend starts it
(``GANTRY_RUNNER_LOCAL_FILES=1``): an input the durable endpoint keeps as a file is copied from
that file, not downloaded; whatever the job then does to its copy, the stored object keeps its
bytes. An endpoint without files (the in-memory one, like any other S3) gets the usual
download, as on AWS.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from batch_runner import local_files
from batch_runner.config import Limits
from batch_runner.staging import stage_inputs
from gantry.contract import LOCAL_FILES_ENV, InvocationInput
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


def _endpoint(data_dir: Path | None) -> Iterator[tuple[Any, str]]:
    endpoint = EmbeddedAws(data_dir=data_dir).start()
    try:
        client = _client(endpoint.url)
        bucket = f"gantry-inputs-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        yield client, bucket
    finally:
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
    from batch_runner.staging import StagingError

    monkeypatch.setenv(LOCAL_FILES_ENV, "1")
    client, bucket = durable
    with pytest.raises(StagingError, match="could not be downloaded"):
        stage_inputs(client, _inputs(bucket), tmp_path / "input", Limits())
