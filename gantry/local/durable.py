"""Durable before acknowledged: the embedded endpoint's table items and objects on disk.

moto keeps everything in memory. This module persists the *resulting state* of every write the
endpoint acknowledges, in the request path, before the response leaves: after moto has applied
a DynamoDB write, the items it touched are read back from moto's backend and stored; after an
S3 write, the object is read back and stored. Persisting results rather than replaying requests
keeps what clients saw (ids, ETags, times); a conditional write that failed changes nothing.

Where it goes:
- ``state.db``: SQLite in WAL mode with ``synchronous=FULL`` (every commit is fsync'd; an
  interrupted one is rolled back on open, so the previous state stays whole). One row per item
  (``items``) and per object (``objects``); a write costs one B-tree update whatever the count,
  so the cost per request stays flat as the table grows.
- ``uploads`` and ``parts``: multipart uploads in progress and each acknowledged part (its
  bytes in a file of ``objects/`` too), so an upload cut by a restart goes on where it was.
  Completing one makes its part files the object's *segments*, in order, in the same
  transaction that ends the upload: no byte is written again.
- ``objects/``: each object's bytes in its own file, or for a completed multipart upload in
  its segment files (the row's ``segments``, a JSON list of ``[file, size]``; a row without
  it, as every row of older state directories, names one file in ``file``). Each file is
  whole and fsync'd, under its final name, before the row that names it is committed (an
  upload part's is written under that name, others under a temporary one and renamed); a
  file no row names (a crash between the two) is removed on start. Object files are never
  changed in place, so moto serves reads from them directly (its own spooled copy is dropped
  once the file is stored), and a copy of an object is a hard link of each of its files.
- ``incoming/``: where the local runner copies or moves an output before a PutObject names
  it; the file is then moved into ``objects/`` (no byte written twice). Leftovers are
  removed on start.

Queue messages are not stored: the work they carry is re-derived from this state on start
(``gantry.pipeline.reconcile``), as it is on AWS for messages that ended in a dead-letter queue.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.local.direct import Hasher, Reader, write_direct

logger = logging.getLogger(__name__)
DATABASE = "state.db"
OBJECTS_DIR = "objects"
# Files the local runner copied its outputs to, each made an object by a PutObject that
# names it (gantry.local.persist); what a crash left here was never acknowledged.
INCOMING_DIR = "incoming"
COPY_CHUNK = 8 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    tbl TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, file TEXT NOT NULL, etag TEXT NOT NULL,
    size INTEGER NOT NULL, last_modified TEXT NOT NULL, meta TEXT NOT NULL, segments TEXT,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
-- segments: JSON [[file, size], ...] of an object kept in several files (NULL: one, ``file``).
CREATE TABLE IF NOT EXISTS uploads (
    bucket TEXT NOT NULL, upload_id TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (bucket, upload_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (
    bucket TEXT NOT NULL, upload_id TEXT NOT NULL, number INTEGER NOT NULL, file TEXT NOT NULL,
    etag TEXT NOT NULL, size INTEGER NOT NULL, last_modified TEXT NOT NULL,
    PRIMARY KEY (bucket, upload_id, number)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class StoredPart:
    number: int
    path: Path
    etag: str
    size: int
    last_modified: str


@dataclass(frozen=True)
class StoredUpload:
    bucket: str
    upload_id: str
    doc: dict[str, Any]
    parts: list[StoredPart]


@dataclass(frozen=True)
class Segment:
    """One file of an object's bytes, in order: a whole object has one."""

    path: Path
    size: int


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    segments: tuple[Segment, ...]
    etag: str
    size: int
    last_modified: str
    meta: dict[str, Any]


_OBJECT_COLUMNS = "bucket, key, file, etag, size, last_modified, meta, segments"


class DurableStore:
    """The SQLite database and object files of one state directory. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Every user's objects and records: only the stack's own OS user enters (the runner
        # is that user too; an algorithm reads its own copies).
        os.chmod(directory, 0o700)
        self.objects = directory / OBJECTS_DIR
        self.objects.mkdir(exist_ok=True)
        self.incoming = (directory / INCOMING_DIR).absolute()
        self.incoming.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            directory / DATABASE, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsync'd at every commit, so a committed write survives a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(objects)")}
        if "segments" not in columns:  # a state directory of an older version: all one file
            self._db.execute("ALTER TABLE objects ADD COLUMN segments TEXT")
        _fsync_dir(directory)
        self.remove_orphans()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- items ---------------------------------------------------------------------------

    def write_items(self, changes: Iterable[tuple[str, str, dict[str, Any] | None]]) -> None:
        """Apply (table, key, item or None to delete) changes in one transaction."""
        rows = list(changes)
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table, key, doc in rows:
                    if doc is None:
                        self._db.execute(
                            "DELETE FROM items WHERE tbl = ? AND key = ?", (table, key)
                        )
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                            (table, key, json.dumps(doc, separators=(",", ":"))),
                        )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT tbl, doc FROM items").fetchall()
        for table, doc in rows:
            yield table, json.loads(doc)

    def item_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM items").fetchone()[0])

    # --- objects -------------------------------------------------------------------------

    def new_object_path(self) -> Path:
        return self.objects / secrets.token_hex(16)

    def write_file(self, chunks: Iterable[bytes]) -> tuple[Path, int]:
        """Store bytes in a new, fsync'd object file; (path, size)."""
        path = self.new_object_path()
        tmp = path.with_name(f".{path.name}.tmp")
        size = 0
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                size += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.objects)
        return path, size

    def write_direct(self, read: Reader, digest: Hasher | None = None) -> tuple[Path, int]:
        """Store a large body (an upload part) in a new, fsync'd object file, written around
        the page cache where the file system allows it (``gantry.local.direct``); (path,
        size). ``read`` fills a buffer (``readinto``); ``digest`` gets every byte in order."""
        # Written under its own name, no temporary one: no row names it before it is whole
        # and fsync'd, and start-up removes files no row names. The rename a temporary name
        # needs would cost a second journal commit (the directory's fsync) on every part.
        path = self.new_object_path()
        try:
            size = write_direct(path, read, digest)
        except BaseException:
            path.unlink(missing_ok=True)  # a body cut short: nothing of it is kept
            raise
        _fsync_dir(self.objects)
        return path, size

    def adopt_file(self, name: str) -> tuple[Path, int]:
        """Make a file of the incoming folder an object file, moved (no byte is copied) and
        fsync'd; (path, size). ValueError for anything but a regular file there, with no other
        name (a link would let whoever holds the other name change the object)."""
        source = os.path.abspath(name)
        if os.path.dirname(source) != str(self.incoming) or os.path.basename(source)[:1] in "._":
            raise ValueError("not a file of the store's incoming folder")
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            raise ValueError(f"cannot open it: {error.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.getuid():
                raise ValueError("not a regular file of this user with one name")
            os.fsync(fd)
        finally:
            os.close(fd)
        path = self.new_object_path()
        os.rename(source, path)
        _fsync_dir(self.objects)
        return path, info.st_size

    def link_file(self, source: Path) -> Path:
        """A new name for an existing (immutable) object file: a copy that costs no I/O."""
        path = self.new_object_path()
        os.link(source, path)
        _fsync_dir(self.objects)
        return path

    def link_segments(self, segments: Iterable[Segment]) -> tuple[Segment, ...]:
        """New names for the (immutable) files of an object, one directory fsync for all."""
        linked = []
        for segment in segments:
            path = self.new_object_path()
            os.link(segment.path, path)
            linked.append(Segment(path, segment.size))
        _fsync_dir(self.objects)
        return tuple(linked)

    def put_object(self, obj: StoredObject) -> None:
        """Record ``obj`` (its file already durable); the file it replaces is removed."""
        with self._lock:
            replaced = self._put_object_row(obj)
        for file in replaced:
            (self.objects / file).unlink(missing_ok=True)

    def _put_object_row(self, obj: StoredObject) -> list[str]:
        """Write the row of ``obj`` (lock held); the file names it no longer uses."""
        old = self._db.execute(
            "SELECT file, segments FROM objects WHERE bucket = ? AND key = ?",
            (obj.bucket, obj.key),
        ).fetchone()
        names = [segment.path.name for segment in obj.segments]
        segments = None
        if len(obj.segments) != 1:
            segments = json.dumps(
                [[segment.path.name, segment.size] for segment in obj.segments],
                separators=(",", ":"),
            )
        self._db.execute(
            f"INSERT OR REPLACE INTO objects ({_OBJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                obj.bucket,
                obj.key,
                names[0] if names else "",
                obj.etag,
                obj.size,
                obj.last_modified,
                json.dumps(obj.meta, separators=(",", ":")),
                segments,
            ),
        )
        kept = set(names)
        return [name for name in _file_names(*old) if name not in kept] if old else []

    # --- multipart uploads in progress ----------------------------------------------------

    def put_upload(self, bucket: str, upload_id: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?)",
                (bucket, upload_id, json.dumps(doc, separators=(",", ":"))),
            )

    def put_part(self, bucket: str, upload_id: str, part: StoredPart) -> None:
        """Record an uploaded part (its file already durable); a part it replaces is removed."""
        with self._lock:
            old = self._db.execute(
                "SELECT file FROM parts WHERE bucket = ? AND upload_id = ? AND number = ?",
                (bucket, upload_id, part.number),
            ).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    bucket,
                    upload_id,
                    part.number,
                    part.path.name,
                    part.etag,
                    part.size,
                    part.last_modified,
                ),
            )
        if old and old[0] != part.path.name:
            (self.objects / old[0]).unlink(missing_ok=True)

    def uploads(self) -> Iterator[StoredUpload]:
        with self._lock:
            uploads = self._db.execute("SELECT bucket, upload_id, doc FROM uploads").fetchall()
            parts = self._db.execute(
                "SELECT bucket, upload_id, number, file, etag, size, last_modified FROM parts "
                "ORDER BY number"
            ).fetchall()
        by_upload: dict[tuple[str, str], list[StoredPart]] = {}
        for bucket, upload_id, number, file, etag, size, last_modified in parts:
            by_upload.setdefault((bucket, upload_id), []).append(
                StoredPart(int(number), self.objects / file, etag, int(size), last_modified)
            )
        for bucket, upload_id, doc in uploads:
            yield StoredUpload(
                bucket, upload_id, json.loads(doc), by_upload.get((bucket, upload_id), [])
            )

    def end_upload(self, bucket: str, upload_id: str, result: StoredObject | None = None) -> None:
        """An upload is over: completed into ``result`` (recorded in the same transaction, so
        a crash leaves either the upload or the object) or aborted. Its part files go, but
        those ``result`` keeps as its segments."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                files = [
                    row[0]
                    for row in self._db.execute(
                        "SELECT file FROM parts WHERE bucket = ? AND upload_id = ?",
                        (bucket, upload_id),
                    )
                ]
                self._db.execute(
                    "DELETE FROM parts WHERE bucket = ? AND upload_id = ?", (bucket, upload_id)
                )
                self._db.execute(
                    "DELETE FROM uploads WHERE bucket = ? AND upload_id = ?", (bucket, upload_id)
                )
                if result is not None:
                    kept = {segment.path.name for segment in result.segments}
                    files = [file for file in files if file not in kept]
                    files += self._put_object_row(result)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        for file in files:
            (self.objects / file).unlink(missing_ok=True)

    def delete_object(self, bucket: str, key: str) -> None:
        with self._lock:
            old = self._db.execute(
                "SELECT file, segments FROM objects WHERE bucket = ? AND key = ?", (bucket, key)
            ).fetchone()
            if old is None:
                return
            self._db.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
        for name in _file_names(*old):
            (self.objects / name).unlink(missing_ok=True)

    def get_object(self, bucket: str, key: str) -> StoredObject | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                (bucket, key),
            ).fetchone()
        return self._stored(row) if row else None

    def stored_objects(self) -> Iterator[StoredObject]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects").fetchall()
        for row in rows:
            yield self._stored(row)

    def _stored(self, row: tuple[Any, ...]) -> StoredObject:
        bucket, key, file, etag, size, last_modified, meta, segments = row
        if segments is None:
            files: tuple[Segment, ...] = (Segment(self.objects / file, int(size)),)
        else:
            files = tuple(Segment(self.objects / name, int(n)) for name, n in json.loads(segments))
        return StoredObject(bucket, key, files, etag, int(size), last_modified, json.loads(meta))

    def remove_orphans(self) -> int:
        """Remove object files no row names and incoming files: writes a crash interrupted."""
        with self._lock:
            named = {
                name
                for row in self._db.execute("SELECT file, segments FROM objects")
                for name in _file_names(*row)
            }
            named |= {row[0] for row in self._db.execute("SELECT file FROM parts")}
        removed = 0
        for path in self.incoming.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        for path in self.objects.iterdir():
            if path.name not in named:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def item_key(hash_value: Any, range_value: Any) -> str:
    """The stored key of an item, from its key attributes in DynamoDB's JSON."""
    return json.dumps([hash_value, range_value], sort_keys=True)


def _file_names(file: str, segments: str | None) -> list[str]:
    """The names of an object row's files."""
    if segments is None:
        return [file]
    return [name for name, _size in json.loads(segments)]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
