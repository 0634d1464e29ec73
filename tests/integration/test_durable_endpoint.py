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
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

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


if __name__ == "__main__":
    write_forever(Path(sys.argv[1]), sys.argv[2])
