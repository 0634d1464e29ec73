"""Keep the embedded endpoint's data across restarts, in a directory.

moto holds everything in memory. The local stack saves what Gantry keeps — every table item
and every object of the bucket — to ``<state>/`` on a timer and on shutdown, and loads it into
a fresh endpoint on start. Objects are saved incrementally (only new or changed ETags), each
file and the manifest written to a temporary name and renamed, so a crash mid-save leaves the
previous snapshot whole. Queue messages are not saved: on start the stack re-derives the work
they carried from the jobs themselves (see ``LocalStack.recover``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.aws import Clients
from gantry.settings import Settings

logger = logging.getLogger(__name__)
TABLE_FILE = "table.jsonl"
MANIFEST_FILE = "objects.json"
OBJECTS_DIR = "objects"
BATCH_WRITE_SIZE = 25


@dataclass
class SnapshotStats:
    items: int = 0
    objects: int = 0
    objects_written: int = 0
    objects_removed: int = 0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _blob_name(key: str) -> str:
    # Keys hold user file names; a digest is always a safe file name.
    return hashlib.sha256(key.encode()).hexdigest()


class Snapshot:
    def __init__(self, directory: Path, clients: Clients, settings: Settings) -> None:
        self.directory = directory
        self.clients = clients
        self.settings = settings
        self.objects = directory / OBJECTS_DIR

    @property
    def exists(self) -> bool:
        return (self.directory / TABLE_FILE).exists()

    # --- save --------------------------------------------------------------------------------

    def save(self) -> SnapshotStats:
        self.objects.mkdir(parents=True, exist_ok=True)
        stats = SnapshotStats()
        # Objects first: a table item never names an object the snapshot lacks.
        self._save_objects(stats)
        self._save_table(stats)
        return stats

    def _save_table(self, stats: SnapshotStats) -> None:
        lines = []
        paginator = self.clients.dynamodb.get_paginator("scan")
        for page in paginator.paginate(TableName=self.settings.table_name):
            for item in page.get("Items", []):
                lines.append(json.dumps(item, separators=(",", ":")))
        stats.items = len(lines)
        _atomic_write(self.directory / TABLE_FILE, ("\n".join(lines) + "\n").encode())

    def _manifest(self) -> dict[str, dict[str, Any]]:
        path = self.directory / MANIFEST_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _listing(self) -> Iterator[tuple[str, str]]:
        """(key, ETag) of every object in the bucket."""
        pages = self.clients.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket_name
        )
        for page in pages:
            for entry in page.get("Contents", []):
                yield entry["Key"], entry["ETag"]

    def _save_objects(self, stats: SnapshotStats) -> None:
        old = self._manifest()
        new: dict[str, dict[str, Any]] = {}
        for key, etag in self._listing():
            if key in old and old[key]["etag"] == etag:
                new[key] = old[key]
            else:
                new[key] = self._save_object(key, etag)
                stats.objects_written += 1
        stats.objects = len(new)
        _atomic_write(self.directory / MANIFEST_FILE, json.dumps(new).encode())
        for key in old.keys() - new.keys():
            (self.objects / _blob_name(key)).unlink(missing_ok=True)
            stats.objects_removed += 1

    def _save_object(self, key: str, etag: str) -> dict[str, Any]:
        """Stream one object to its blob; its manifest entry."""
        response = self.clients.s3.get_object(Bucket=self.settings.bucket_name, Key=key)
        blob = self.objects / _blob_name(key)
        tmp = blob.with_name(f".{blob.name}.tmp")
        with open(tmp, "wb") as handle:
            for chunk in response["Body"].iter_chunks(1024 * 1024):
                handle.write(chunk)
        os.replace(tmp, blob)
        return {
            "etag": etag,
            "content_type": response.get("ContentType") or "binary/octet-stream",
            "metadata": response.get("Metadata") or {},
        }

    # --- load --------------------------------------------------------------------------------

    def load(self) -> SnapshotStats:
        """Put the saved items and objects into the (fresh) table and bucket."""
        stats = SnapshotStats()
        s3, bucket = self.clients.s3, self.settings.bucket_name
        manifest = self._manifest()
        for key, entry in manifest.items():
            blob = self.objects / _blob_name(key)
            if not blob.exists():
                logger.warning("snapshot lacks the data of %s", key)
                continue
            with open(blob, "rb") as handle:
                s3.upload_fileobj(
                    handle,
                    bucket,
                    key,
                    ExtraArgs={"ContentType": entry["content_type"], "Metadata": entry["metadata"]},
                )
            stats.objects += 1
        # The ETags of re-uploaded objects may differ (multipart vs single); record them so the
        # next save does not copy everything again.
        self._refresh_manifest(manifest)
        items = [
            json.loads(line)
            for line in (self.directory / TABLE_FILE).read_text().splitlines()
            if line.strip()
        ]
        for start in range(0, len(items), BATCH_WRITE_SIZE):
            batch = items[start : start + BATCH_WRITE_SIZE]
            requests = [{"PutRequest": {"Item": item}} for item in batch]
            pending: dict[str, Any] = {self.settings.table_name: requests}
            while pending:
                response = self.clients.dynamodb.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
        stats.items = len(items)
        return stats

    def _refresh_manifest(self, manifest: dict[str, dict[str, Any]]) -> None:
        for key, etag in self._listing():
            if key in manifest:
                manifest[key]["etag"] = etag
        _atomic_write(self.directory / MANIFEST_FILE, json.dumps(manifest).encode())
