"""What durability costs the embedded endpoint: ``python -m benchmarks durable``.

Two endpoints in one run, one in memory (moto alone) and one with a data directory (every
acknowledged write fsync'd before its response, ``gantry.local.durable``), measured with the
same requests from one keep-alive client:

- DynamoDB PutItem and a two-item TransactWriteItems, small S3 PutObject, GetItem;
- PutItem again once the table holds ``GANTRY_BENCH_DURABLE_ITEMS`` items (default 100,000,
  loaded with BatchWriteItem), to show the cost per write does not grow with the state;
- a large object (``GANTRY_BENCH_DURABLE_MB``, default 600 MB): upload, server-side copy
  (CopyObject) and download, next to ``cp`` of the same file on the same disk, and the
  process's peak memory.

Tunables: ``GANTRY_BENCH_DURABLE_REQUESTS`` (default 500 of each).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.figures import percentile

REQUESTS = int(os.environ.get("GANTRY_BENCH_DURABLE_REQUESTS", "500"))
ITEMS = int(os.environ.get("GANTRY_BENCH_DURABLE_ITEMS", "100000"))
BIG_MB = int(os.environ.get("GANTRY_BENCH_DURABLE_MB", "600"))
BATCH = 25


def _clients(url: str) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {
        "endpoint_url": url,
        "region_name": "us-east-1",
        "aws_access_key_id": "local",
        "aws_secret_access_key": "local",
        "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    }
    return boto3.client("s3", **kwargs), boto3.client("dynamodb", **kwargs)


def _provision(s3: Any, dynamodb: Any, name: str) -> None:
    s3.create_bucket(Bucket=name)
    dynamodb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def _item(n: int, prefix: str = "ITEM") -> dict[str, Any]:
    return {
        "PK": {"S": f"{prefix}#{n}"},
        "SK": {"S": "A"},
        "doc": {"S": '{"status": "Succeeded", "outputs": []}' + "x" * 300},
    }


def _timed(action: Callable[[int], Any], count: int) -> list[float]:
    samples = []
    for n in range(count):
        started = time.perf_counter()
        action(n)
        samples.append(time.perf_counter() - started)
    return samples


def _load(dynamodb: Any, name: str, count: int) -> float:
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        writes = [{"PutRequest": {"Item": _item(n, "LOAD")}} for n in range(first, first + BATCH)]
        pending: dict[str, Any] = {name: writes}
        while pending:
            pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    return time.perf_counter() - started


def _measure(url: str, name: str) -> dict[str, list[float]]:
    s3, dynamodb = _clients(url)
    _provision(s3, dynamodb, name)
    figures: dict[str, list[float]] = {}
    figures["PutItem"] = _timed(
        lambda n: dynamodb.put_item(TableName=name, Item=_item(n)), REQUESTS
    )
    figures["TransactWriteItems (2 puts)"] = _timed(
        lambda n: dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": name, "Item": _item(n, "TXA")}},
                {"Put": {"TableName": name, "Item": _item(n, "TXB")}},
            ]
        ),
        REQUESTS,
    )
    figures["PutObject (2 KB)"] = _timed(
        lambda n: s3.put_object(Bucket=name, Key=f"values/{n}.json", Body=b"x" * 2048), REQUESTS
    )
    figures["GetItem"] = _timed(
        lambda n: dynamodb.get_item(
            TableName=name, Key={"PK": {"S": f"ITEM#{n}"}, "SK": {"S": "A"}}
        ),
        REQUESTS,
    )
    return figures


def _row(label: str, samples: list[float]) -> str:
    rate = len(samples) / sum(samples)
    return (
        f"  {label:<34} {rate:9.0f}/s {statistics.median(samples) * 1000:8.2f}ms "
        f"{percentile(samples, 99) * 1000:8.2f}ms"
    )


def _big_object(memory_url: str, durable_url: str, work: Path) -> list[str]:
    """Upload, server-side copy and download of one large file, on the durable endpoint,
    next to cp of the same file on the same disk."""
    from boto3.s3.transfer import TransferConfig

    s3, _ = _clients(durable_url)
    name = f"big-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    source = work / "big.raw"
    with open(source, "wb") as handle:
        block = os.urandom(1024 * 1024)
        for _ in range(BIG_MB):
            handle.write(block)
    os.sync()
    lines = []

    def clock(label: str, action: Callable[[], Any]) -> float:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
        lines.append(f"  {label:<46} {seconds:8.2f}s  ({BIG_MB / seconds:7.0f} MB/s)")
        return seconds

    cp_seconds = clock(
        "cp (the file, to the same disk)",
        lambda: subprocess.run(["cp", str(source), str(work / "cp-1.raw")], check=True),
    )
    cp_seconds += clock(
        "cp again",
        lambda: subprocess.run(["cp", str(source), str(work / "cp-2.raw")], check=True),
    )
    config = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 << 20)
    upload = clock(
        "upload (multipart, 64 MB parts) to the endpoint",
        lambda: s3.upload_file(str(source), name, "uploads/big.raw", Config=config),
    )
    copy = clock(
        "server-side copy (CopyObject: a hard link)",
        lambda: s3.copy_object(
            Bucket=name, Key="values/big.raw", CopySource={"Bucket": name, "Key": "uploads/big.raw"}
        ),
    )
    download = clock(
        "download from the endpoint",
        lambda: s3.download_file(name, "values/big.raw", str(work / "down.raw"), Config=config),
    )
    lines.append(
        f"  {'platform overhead (upload + copy) / cp twice':<46} "
        f"{(upload + copy) / cp_seconds:8.2f}x"
    )
    lines.append(f"  {'(download alone)':<46} {download:8.2f}s")
    return lines


def main() -> None:
    from gantry.local.endpoint import EmbeddedAws

    with tempfile.TemporaryDirectory(dir=os.environ.get("GANTRY_BENCH_DIR")) as tmp:
        work = Path(tmp)
        memory = EmbeddedAws().start()
        durable = EmbeddedAws(data_dir=work / "data").start()
        try:
            results = {
                "in memory": _measure(memory.url, f"mem-{uuid.uuid4().hex[:8]}"),
                "durable": _measure(durable.url, f"dur-{uuid.uuid4().hex[:8]}"),
            }
            name = f"scale-{uuid.uuid4().hex[:8]}"
            s3, dynamodb = _clients(durable.url)
            _provision(s3, dynamodb, name)
            scale: list[tuple[int, list[float]]] = []
            loaded, load_seconds = 0, 0.0
            for target in sorted({min(1000, ITEMS), ITEMS}):
                load_seconds += _load(dynamodb, name, target - loaded) if target > loaded else 0
                loaded = target
                prefix = f"AT{loaded}"
                samples = _timed(
                    lambda n, p=prefix: dynamodb.put_item(TableName=name, Item=_item(n, p)),
                    REQUESTS,
                )
                scale.append((loaded, samples))
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            big = _big_object(memory.url, durable.url, work) if BIG_MB else []
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        finally:
            memory.stop()
            durable.stop()
            shutil.rmtree(work / "data", ignore_errors=True)

    cpus = os.cpu_count()
    print(f"Embedded endpoint, one keep-alive client, {REQUESTS} requests each ({cpus} CPUs):")
    print(f"  {'request':<34} {'rate':>11} {'p50':>10} {'p99':>10}")
    for mode, figures in results.items():
        print(f" {mode}:")
        for label, samples in figures.items():
            print(_row(label, samples))
    print(
        f" durable, PutItem as the table grows (loaded with BatchWriteItem in {load_seconds:.0f}s):"
    )
    for count, samples in scale:
        print(_row(f"with {count:,} items stored", samples))
    if big:
        print(f"A {BIG_MB} MB object on the durable endpoint:")
        for line in big:
            print(line)
        print(
            f"  {'peak memory of the process (before -> after)':<46} "
            f"{rss_before / 1024:6.0f} -> {rss_after / 1024:.0f} MB"
        )


if __name__ == "__main__":
    main()
