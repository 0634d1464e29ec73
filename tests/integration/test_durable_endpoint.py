"""The embedded endpoint with a data directory: what it acknowledged survives a SIGKILL.

A child process (this module run as a script) writes objects and items from several threads
and prints each acknowledgement; the test kills it with SIGKILL mid-stream, starts a new
endpoint on the same directory and finds every acknowledged write, whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from moto.s3.models import S3Backend

from gantry.aws import Clients
from gantry.local.durable import DurableStore
from gantry.local.endpoint import EmbeddedAws
from gantry.local.snapshot import migrate
from gantry.provision import ensure_data
from gantry.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
WRITERS = 4


def _clients(url: str) -> tuple[Any, Any]:
    kwargs = {
        "endpoint_url": url,
        "region_name": "us-east-1",
        "aws_access_key_id": "local",
        "aws_secret_access_key": "local",
    }
    return boto3.client("s3", **kwargs), boto3.client("dynamodb", **kwargs)


def _body(n: int) -> bytes:
    # Distinct, and some larger than moto's in-memory buffer (5 MiB): those moto spools to disk.
    size = 6 * 1024 * 1024 if n % 10 == 3 else 1000 + n
    return hashlib.sha256(str(n).encode()).digest() * (size // 32)


def _start(data_dir: Path, name: str) -> tuple[EmbeddedAws, Settings]:
    endpoint = EmbeddedAws(data_dir=data_dir).start()
    settings = Settings(table_name=name, bucket_name=name, endpoint_url=endpoint.url)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    ensure_data(Clients(settings), settings)
    return endpoint, settings


def write_forever(data_dir: Path, name: str) -> None:
    """The child: acknowledged writes, one line each, until killed."""
    endpoint, _settings = _start(data_dir, name)
    s3, dynamodb = _clients(endpoint.url)
    print("READY", flush=True)
    lock = threading.Lock()

    def writer(first: int) -> None:
        n = first
        while True:
            if n % 2:
                s3.put_object(Bucket=name, Key=f"values/{n}", Body=_body(n))
            else:
                dynamodb.transact_write_items(
                    TransactItems=[
                        {"Put": {"TableName": name, "Item": _item(n, "a")}},
                        {"Put": {"TableName": name, "Item": _item(n, "b")}},
                    ]
                )
            with lock:
                print(f"ACK {n}", flush=True)
            n += WRITERS

    for first in range(WRITERS):
        threading.Thread(target=writer, args=(first,), daemon=True).start()
    threading.Event().wait()


def _item(n: int, part: str) -> dict[str, Any]:
    return {"PK": {"S": f"TEST#{n}"}, "SK": {"S": part}, "n": {"N": str(n)}}


def test_every_acknowledged_write_survives_a_sigkill(tmp_path: Path) -> None:
    name = f"gantry-durable-{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_durable_endpoint", str(tmp_path), name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[int] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 120
        for line in child.stdout:
            if line.startswith("ACK"):
                acknowledged.append(int(line.split()[1]))
            if len(acknowledged) >= 60 or time.monotonic() > deadline:
                break
        # Killed mid-stream: writes are in flight in every thread.
        child.send_signal(signal.SIGKILL)
        child.wait()
        acknowledged += [int(line.split()[1]) for line in child.stdout if line.startswith("ACK")]
    finally:
        child.kill()
    assert len(acknowledged) >= 60

    endpoint, _settings = _start(tmp_path, name)
    try:
        endpoint.restore()
        s3, dynamodb = _clients(endpoint.url)
        for n in acknowledged:
            if n % 2:
                body = s3.get_object(Bucket=name, Key=f"values/{n}")["Body"].read()
                assert body == _body(n), n
            else:
                for part in ("a", "b"):
                    key = {"PK": {"S": f"TEST#{n}"}, "SK": {"S": part}}
                    item = dynamodb.get_item(TableName=name, Key=key).get("Item")
                    assert item == _item(n, part), n
        # A transaction is whole or absent, acknowledged or not; an object is whole.
        items = dynamodb.scan(TableName=name)["Items"]
        parts: dict[str, set[str]] = {}
        for item in items:
            if item["PK"]["S"].startswith("TEST#"):
                parts.setdefault(item["PK"]["S"], set()).add(item["SK"]["S"])
        assert all(found == {"a", "b"} for found in parts.values())
        for entry in s3.list_objects_v2(Bucket=name, Prefix="values/").get("Contents", []):
            n = int(entry["Key"].rsplit("/", 1)[1])
            assert s3.get_object(Bucket=name, Key=entry["Key"])["Body"].read() == _body(n)
    finally:
        endpoint.stop()


def test_an_older_snapshot_moves_into_the_store(tmp_path: Path) -> None:
    name = f"gantry-migrate-{uuid.uuid4().hex[:8]}"
    old = tmp_path / "state"
    (old / "objects").mkdir(parents=True)
    item = {"PK": {"S": "TEST#old"}, "SK": {"S": "main"}, "doc": {"S": "{}"}}
    (old / "table.jsonl").write_text(json.dumps(item) + "\n")
    key = "values/a b/report.json"
    (old / "objects" / hashlib.sha256(key.encode()).hexdigest()).write_bytes(b'{"x": 1}')
    manifest = {
        key: {
            "etag": '"e"',
            "content_type": "application/json",
            "metadata": {"signature_hmac_sha256": "abc"},
        }
    }
    (old / "objects.json").write_text(json.dumps(manifest))

    endpoint, settings = _start(tmp_path / "data", name)
    try:
        assert migrate(old, endpoint.store, settings)
        endpoint.restore()
        s3, dynamodb = _clients(endpoint.url)
        restored = s3.get_object(Bucket=name, Key=key)
        assert json.loads(restored["Body"].read()) == {"x": 1}
        assert restored["ContentType"] == "application/json"
        assert restored["Metadata"] == {"signature_hmac_sha256": "abc"}
        got = dynamodb.get_item(TableName=name, Key={"PK": item["PK"], "SK": item["SK"]})
        assert got["Item"] == item
    finally:
        endpoint.stop()
    # Moved once: the next start does not copy it again.
    assert not old.exists() and not migrate(old, DurableStore(tmp_path / "data"), settings)


def test_stored_objects_are_read_whole_or_by_range(tmp_path: Path) -> None:
    name = f"gantry-reads-{uuid.uuid4().hex[:8]}"
    endpoint, _settings = _start(tmp_path / "data", name)
    try:
        s3, _dynamodb = _clients(endpoint.url)
        body = _body(13)  # 6 MiB: boto3 downloads it in ranged parts
        s3.put_object(
            Bucket=name,
            Key="values/big",
            Body=body,
            ContentType="application/x-test",
            Metadata={"signature_hmac_sha256": "abc"},
        )
        whole = s3.get_object(Bucket=name, Key="values/big")
        assert whole["Body"].read() == body
        assert whole["ContentType"] == "application/x-test"
        assert whole["Metadata"] == {"signature_hmac_sha256": "abc"}
        assert whole["ContentLength"] == len(body)
        part = s3.get_object(Bucket=name, Key="values/big", Range="bytes=5-9")
        assert part["Body"].read() == body[5:10]
        assert part["ContentRange"] == f"bytes 5-9/{len(body)}"
        assert (
            s3.get_object(Bucket=name, Key="values/big", Range="bytes=-3")["Body"].read()
            == (body[-3:])
        )
        target = tmp_path / "down"
        s3.download_file(name, "values/big", str(target))
        assert target.read_bytes() == body
        # A copy is a hard link of the stored file: same bytes, ETag and metadata.
        s3.copy_object(
            Bucket=name, Key="values/copy", CopySource={"Bucket": name, "Key": "values/big"}
        )
        copied = s3.get_object(Bucket=name, Key="values/copy")
        assert copied["Body"].read() == body and copied["ETag"] == whole["ETag"]
        assert copied["Metadata"] == {"signature_hmac_sha256": "abc"}
        assert copied["ContentType"] == "application/x-test"
        files = list((tmp_path / "data" / "objects").iterdir())
        assert sorted(f.stat().st_nlink for f in files if f.stat().st_size == len(body)) == [2, 2]
        # Overwritten: readers get the new bytes; the copy keeps its own.
        s3.put_object(Bucket=name, Key="values/big", Body=b"new")
        assert s3.get_object(Bucket=name, Key="values/big")["Body"].read() == b"new"
        assert s3.get_object(Bucket=name, Key="values/copy")["Body"].read() == body
    finally:
        endpoint.stop()


PART = 5 * 1024 * 1024  # S3's smallest part but the last


def _part(n: int) -> bytes:
    return hashlib.sha256(f"part {n}".encode()).digest() * (PART // 32)


def upload_parts_forever(data_dir: Path, name: str) -> None:
    """The child: one multipart upload, its parts one after another, each acknowledgement
    printed, until killed."""
    endpoint, _settings = _start(data_dir, name)
    s3, _dynamodb = _clients(endpoint.url)
    upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/big")["UploadId"]
    print(f"UPLOAD {upload_id}", flush=True)
    for n in range(1, 10_000):
        etag = s3.upload_part(
            Bucket=name, Key="uploads/big", UploadId=upload_id, PartNumber=n, Body=_part(n)
        )["ETag"]
        print(f"ACK {n} {etag}", flush=True)


def test_acknowledged_parts_of_an_unfinished_upload_survive_a_sigkill(tmp_path: Path) -> None:
    name = f"gantry-parts-{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.test_durable_endpoint",
            str(tmp_path),
            name,
            "parts",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: dict[int, str] = {}
    upload_id = ""
    try:
        assert child.stdout is not None
        for line in child.stdout:
            words = line.split()
            if words[0] == "UPLOAD":
                upload_id = words[1]
            elif words[0] == "ACK":
                acknowledged[int(words[1])] = words[2]
            if len(acknowledged) >= 3:
                break
        # Killed between parts, or while one is sent or stored.
        child.send_signal(signal.SIGKILL)
        child.wait()
        for line in child.stdout:
            if line.startswith("ACK"):
                acknowledged[int(line.split()[1])] = line.split()[2]
    finally:
        child.kill()
    assert len(acknowledged) >= 3 and upload_id

    endpoint, _settings = _start(tmp_path, name)
    try:
        endpoint.restore()
        s3, _dynamodb = _clients(endpoint.url)
        listed = s3.list_parts(Bucket=name, Key="uploads/big", UploadId=upload_id)["Parts"]
        found = {part["PartNumber"]: part["ETag"] for part in listed}
        assert {n: found.get(n) for n in acknowledged} == acknowledged
        # The upload goes on where it was: parts after the last acknowledged one, then done.
        last = max(acknowledged) + 1
        tail = s3.upload_part(
            Bucket=name, Key="uploads/big", UploadId=upload_id, PartNumber=last, Body=b"end"
        )["ETag"]
        parts = [{"PartNumber": n, "ETag": acknowledged[n]} for n in sorted(acknowledged)]
        s3.complete_multipart_upload(
            Bucket=name,
            Key="uploads/big",
            UploadId=upload_id,
            MultipartUpload={"Parts": [*parts, {"PartNumber": last, "ETag": tail}]},
        )
    finally:
        endpoint.stop()
    expected = b"".join(_part(n) for n in sorted(acknowledged)) + b"end"

    # The completed object is stored whole, its part files its segments, nothing else kept.
    endpoint, _settings = _start(tmp_path, name)
    try:
        endpoint.restore()
        s3, _dynamodb = _clients(endpoint.url)
        assert s3.get_object(Bucket=name, Key="uploads/big")["Body"].read() == expected
        assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
        sizes = sorted(f.stat().st_size for f in (tmp_path / "objects").iterdir())
        assert sizes == [3] + [PART] * len(acknowledged)
    finally:
        endpoint.stop()


def test_multipart_uploads_are_completed_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed upload (with checksums), a completion retried, a part too small, an abort:
    the answers moto gives, from the part files."""
    name = f"gantry-multipart-{uuid.uuid4().hex[:8]}"
    endpoint, _settings = _start(tmp_path / "data", name)
    memory = EmbeddedAws().start()
    try:
        source = tmp_path / "source"
        source.write_bytes(b"".join(_part(n) for n in range(4)) + b"tail")
        results = []
        for url in (memory.url, endpoint.url):
            s3, _dynamodb = _clients(url)
            if url == memory.url:
                s3.create_bucket(Bucket=name)
            s3.upload_file(
                str(source), name, "uploads/file", ExtraArgs={"ChecksumAlgorithm": "SHA256"}
            )
            head = s3.head_object(Bucket=name, Key="uploads/file", ChecksumMode="ENABLED")
            results.append({k: v for k, v in head.items() if k.startswith(("Checksum", "ETag"))})
        # As moto: the same ETag and checksum.
        assert results[0] == results[1] and results[1]["ChecksumSHA256"]
        assert s3.get_object(Bucket=name, Key="uploads/file")["Body"].read() == source.read_bytes()

        upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/two")["UploadId"]
        etags = [
            s3.upload_part(
                Bucket=name, Key="uploads/two", UploadId=upload_id, PartNumber=n, Body=_part(n)
            )["ETag"]
            for n in (1, 2)
        ]
        parts = {"Parts": [{"PartNumber": n, "ETag": etags[n - 1]} for n in (1, 2)]}
        done = s3.complete_multipart_upload(
            Bucket=name, Key="uploads/two", UploadId=upload_id, MultipartUpload=parts
        )
        again = s3.complete_multipart_upload(
            Bucket=name, Key="uploads/two", UploadId=upload_id, MultipartUpload=parts
        )
        assert done["ETag"] == again["ETag"] and done["ETag"].endswith('-2"')
        assert s3.get_object(Bucket=name, Key="uploads/two")["Body"].read() == _part(1) + _part(2)

        # A part copied from a stored object (UploadPartCopy) is kept like an uploaded one.
        upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/copied")["UploadId"]
        copied = s3.upload_part_copy(
            Bucket=name,
            Key="uploads/copied",
            UploadId=upload_id,
            PartNumber=1,
            CopySource={"Bucket": name, "Key": "uploads/two"},
            CopySourceRange=f"bytes=0-{PART - 1}",
        )["CopyPartResult"]["ETag"]
        s3.complete_multipart_upload(
            Bucket=name,
            Key="uploads/copied",
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": copied}]},
        )
        assert s3.get_object(Bucket=name, Key="uploads/copied")["Body"].read() == _part(1)

        # Copied parts are read from the source's file, a range at a time: moto, which reads
        # the whole source for each part, is never asked.
        def whole_source(*_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("moto read the whole source")

        monkeypatch.setattr(S3Backend, "upload_part_copy", whole_source)
        upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/ranges")["UploadId"]
        ranges = [(1, 0, PART + 9), (2, PART + 10, 2 * PART - 1)]
        etags = [
            s3.upload_part_copy(
                Bucket=name,
                Key="uploads/ranges",
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": name, "Key": "uploads/two"},
                CopySourceRange=f"bytes={first}-{last}",
            )["CopyPartResult"]["ETag"]
            for number, first, last in ranges
        ]
        joined = _part(1) + _part(2)
        assert etags[0] == f'"{hashlib.md5(joined[: PART + 10]).hexdigest()}"'
        # The managed copy (objects over 1 GiB) does the same, its parts sent with If-Match.
        s3.copy(
            {"Bucket": name, "Key": "uploads/two"},
            name,
            "uploads/managed",
            Config=TransferConfig(multipart_threshold=PART, multipart_chunksize=PART),
        )
        assert s3.get_object(Bucket=name, Key="uploads/managed")["Body"].read() == joined
        s3.complete_multipart_upload(
            Bucket=name,
            Key="uploads/ranges",
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)]
            },
        )
        assert s3.get_object(Bucket=name, Key="uploads/ranges")["Body"].read() == joined

        # A part smaller than 5 MiB but the last is refused as S3 does.
        upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/small")["UploadId"]
        small = [
            s3.upload_part(
                Bucket=name, Key="uploads/small", UploadId=upload_id, PartNumber=n, Body=b"x"
            )["ETag"]
            for n in (1, 2)
        ]
        with pytest.raises(s3.exceptions.ClientError, match="EntityTooSmall"):
            s3.complete_multipart_upload(
                Bucket=name,
                Key="uploads/small",
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": small[n - 1]} for n in (1, 2)]
                },
            )
        s3.abort_multipart_upload(Bucket=name, Key="uploads/small", UploadId=upload_id)
        # Only the objects' files are left: no part of an aborted upload, none a completed
        # one did not use.
        files = set((tmp_path / "data" / "objects").iterdir())
        assert files == {
            segment.path for obj in endpoint.store.stored_objects() for segment in obj.segments
        }
        assert sum(f.stat().st_size for f in files) == sum(
            obj.size for obj in endpoint.store.stored_objects()
        )
    finally:
        memory.stop()
        endpoint.stop()


def test_completing_an_unknown_upload_answers_no_such_upload(tmp_path: Path) -> None:
    """As S3, in memory and on disk: an upload id never made, or aborted, is NoSuchUpload (404)
    at the first attempt, not an internal error the client retries; a completed one completes
    again with the same answer."""
    name = f"gantry-nosuch-{uuid.uuid4().hex[:8]}"
    endpoint, _settings = _start(tmp_path / "data", name)
    memory = EmbeddedAws().start()
    attempts: list[str] = []
    try:
        for url in (memory.url, endpoint.url):
            s3, _dynamodb = _clients(url)
            if url == memory.url:
                s3.create_bucket(Bucket=name)
            s3.meta.events.register(
                "before-send.s3.CompleteMultipartUpload",
                lambda request, **_: attempts.append(request.url),
            )
            aborted = s3.create_multipart_upload(Bucket=name, Key="uploads/a")["UploadId"]
            s3.abort_multipart_upload(Bucket=name, Key="uploads/a", UploadId=aborted)
            part = {"PartNumber": 1, "ETag": f'"{hashlib.md5(b"x").hexdigest()}"'}
            for upload_id in ("no-such-upload", aborted):
                attempts.clear()
                with pytest.raises(s3.exceptions.NoSuchUpload) as raised:
                    s3.complete_multipart_upload(
                        Bucket=name,
                        Key="uploads/a",
                        UploadId=upload_id,
                        MultipartUpload={"Parts": [part]},
                    )
                assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
                assert len(attempts) == 1, url

            upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/b")["UploadId"]
            etag = s3.upload_part(
                Bucket=name, Key="uploads/b", UploadId=upload_id, PartNumber=1, Body=b"x"
            )["ETag"]
            done = [
                s3.complete_multipart_upload(
                    Bucket=name,
                    Key="uploads/b",
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
                )["ETag"]
                for _ in range(2)
            ]
            # S3's ETag of an object made of parts: the MD5 of the parts' MD5s, and the count.
            part_md5 = bytes.fromhex(etag.strip('"'))
            assert done[0] == done[1] == f'"{hashlib.md5(part_md5).hexdigest()}-1"'
            assert s3.get_object(Bucket=name, Key="uploads/b")["Body"].read() == b"x"
    finally:
        memory.stop()
        endpoint.stop()


def test_a_completed_upload_is_kept_in_its_part_files(tmp_path: Path) -> None:
    """No byte of a multipart upload is written twice: its part files become the object's, read
    across their boundaries, copied by links, kept across a restart, removed with it."""
    name = f"gantry-segments-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    parts = [_part(1), _part(2), b"the last part"]
    whole = b"".join(parts)
    endpoint, _settings = _start(data, name)
    try:
        s3, _dynamodb = _clients(endpoint.url)
        upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/ct")["UploadId"]
        etags = [
            s3.upload_part(
                Bucket=name, Key="uploads/ct", UploadId=upload_id, PartNumber=n, Body=body
            )["ETag"]
            for n, body in enumerate(parts, 1)
        ]
        done = s3.complete_multipart_upload(
            Bucket=name,
            Key="uploads/ct",
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
            },
        )
        # S3's ETag of a multipart object: the MD5 of the parts' MD5s, and their count.
        digests = b"".join(hashlib.md5(body).digest() for body in parts)
        etag = f'"{hashlib.md5(digests).hexdigest()}-3"'
        assert done["ETag"] == etag
        files = sorted((data / "objects").iterdir(), key=lambda f: f.stat().st_size)
        assert [f.stat().st_size for f in files] == [len(parts[2]), PART, PART]

        s3.copy_object(
            Bucket=name, Key="values/ct", CopySource={"Bucket": name, "Key": "uploads/ct"}
        )
        # The copy is a link of every file: nothing read or written.
        assert all(f.stat().st_nlink == 2 for f in files)
    finally:
        endpoint.stop()

    endpoint, _settings = _start(data, name)
    try:
        endpoint.restore()
        s3, _dynamodb = _clients(endpoint.url)
        for key in ("uploads/ct", "values/ct"):
            got = s3.get_object(Bucket=name, Key=key)
            assert (got["Body"].read(), got["ETag"], got["ContentLength"]) == (
                whole,
                etag,
                len(whole),
            )
        # Ranges across a boundary of two parts and over all three; a suffix in the last.
        for first, last in ((PART - 5, PART + 4), (10, 2 * PART + 1), (0, PART - 1)):
            got = s3.get_object(Bucket=name, Key="values/ct", Range=f"bytes={first}-{last}")
            assert got["Body"].read() == whole[first : last + 1]
            assert got["ContentRange"] == f"bytes {first}-{last}/{len(whole)}"
        tail = s3.get_object(Bucket=name, Key="values/ct", Range="bytes=-20")["Body"].read()
        assert tail == whole[-20:]
        # moto answers conditional reads itself, from the same files.
        got = s3.get_object(Bucket=name, Key="values/ct", IfNoneMatch='"other"')
        assert got["Body"].read() == whole
        got = s3.get_object(
            Bucket=name, Key="values/ct", IfNoneMatch='"other"', Range=f"bytes={PART - 2}-{PART}"
        )
        assert got["Body"].read() == whole[PART - 2 : PART + 1]
        target = tmp_path / "down"
        s3.download_file(name, "values/ct", str(target))
        assert target.read_bytes() == whole
        # A part copied from the object across its boundary.
        upload_id = s3.create_multipart_upload(Bucket=name, Key="uploads/piece")["UploadId"]
        piece = s3.upload_part_copy(
            Bucket=name,
            Key="uploads/piece",
            UploadId=upload_id,
            PartNumber=1,
            CopySource={"Bucket": name, "Key": "values/ct"},
            CopySourceRange=f"bytes={PART - 3}-{PART + 2}",
        )["CopyPartResult"]["ETag"]
        assert piece == f'"{hashlib.md5(whole[PART - 3 : PART + 3]).hexdigest()}"'
        s3.abort_multipart_upload(Bucket=name, Key="uploads/piece", UploadId=upload_id)

        # Deleted, the upload leaves its copy whole; deleted too, no file is left.
        s3.delete_object(Bucket=name, Key="uploads/ct")
        assert s3.get_object(Bucket=name, Key="values/ct")["Body"].read() == whole
        assert all(f.stat().st_nlink == 1 for f in (data / "objects").iterdir())
        s3.delete_object(Bucket=name, Key="values/ct")
        assert list((data / "objects").iterdir()) == []
    finally:
        endpoint.stop()


def test_a_state_directory_of_an_older_version_is_read(tmp_path: Path) -> None:
    """Its objects table has no segments: every row names one file, as before."""
    name = f"gantry-older-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    (data / "objects").mkdir(parents=True)
    (data / "objects" / "0a1b").write_bytes(b"stored before")
    database = sqlite3.connect(data / "state.db")
    database.execute(
        "CREATE TABLE objects (bucket TEXT NOT NULL, key TEXT NOT NULL, file TEXT NOT NULL, "
        "etag TEXT NOT NULL, size INTEGER NOT NULL, last_modified TEXT NOT NULL, "
        "meta TEXT NOT NULL, PRIMARY KEY (bucket, key)) WITHOUT ROWID"
    )
    database.execute(
        "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, "values/old", "0a1b", '"e"', 13, "2026-01-01T00:00:00+00:00", '{"metadata":{}}'),
    )
    database.commit()
    database.close()
    endpoint, _settings = _start(data, name)
    try:
        endpoint.restore()
        s3, _dynamodb = _clients(endpoint.url)
        assert s3.get_object(Bucket=name, Key="values/old")["Body"].read() == b"stored before"
        s3.copy_object(
            Bucket=name, Key="values/new", CopySource={"Bucket": name, "Key": "values/old"}
        )
        s3.delete_object(Bucket=name, Key="values/old")
        assert s3.get_object(Bucket=name, Key="values/new")["Body"].read() == b"stored before"
        assert [f.stat().st_size for f in (data / "objects").iterdir()] == [13]
    finally:
        endpoint.stop()


if __name__ == "__main__":
    if sys.argv[3:] == ["parts"]:
        upload_parts_forever(Path(sys.argv[1]), sys.argv[2])
    else:
        write_forever(Path(sys.argv[1]), sys.argv[2])


def test_stored_objects_hold_no_open_file(tmp_path: Path) -> None:
    # A file descriptor per stored object would stop a stack that holds a few hundred objects
    # on a machine with the common soft limit of 1,024 open files.
    name = f"gantry-fds-{uuid.uuid4().hex[:8]}"
    endpoint, _settings = _start(tmp_path / "data", name)
    try:
        s3, _dynamodb = _clients(endpoint.url)
        s3.put_object(Bucket=name, Key="warm-up", Body=b"x")
        before = len(os.listdir("/proc/self/fd"))
        for n in range(60):
            s3.put_object(Bucket=name, Key=f"values/{n}", Body=f"value {n}".encode())
        assert len(os.listdir("/proc/self/fd")) - before < 20
        assert s3.get_object(Bucket=name, Key="values/7")["Body"].read() == b"value 7"
    finally:
        endpoint.stop()
