"""Persist what moto applied, in the request path, and put it back on start.

``persisting(app, store)`` wraps the embedded endpoint's WSGI app. For each write request that
moto answered with a 2xx it reads the resulting state of what the request touched from moto's
backends and stores it (``gantry.local.durable``) before the response is started: the response
leaves only once the write is on disk. Writes it covers:

- DynamoDB: PutItem, UpdateItem, DeleteItem, BatchWriteItem, TransactWriteItems (one SQLite
  transaction per request, so a transaction is all or nothing on disk too);
- S3: PutObject, CopyObject (a hard link of each of the source's files when the bytes are the
  same), DeleteObject, DeleteObjects, and tag or ACL changes of an object;
- S3 multipart uploads: each upload started and each part acknowledged (its own file), so an
  upload cut by a restart goes on where it was; CompleteMultipartUpload makes the part files
  the object's segments, in order, where moto would join every part in memory and write the
  object again (several times the object's size in RAM); a part copied from a stored object
  (UploadPartCopy) is read from that object's files, its range only.

Reads of a stored object are streamed from its files (a range may span several segments);
asked with the header ``x-gantry-local-file: 1``, the answer names those files, which the
local runner copies, one after another, instead of downloading the object
(``batch_runner.local_files``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import re
import secrets
import signal
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

from gantry.contract import LOCAL_FILE_HEADER, local_file_names
from gantry.local.durable import (
    COPY_CHUNK,
    DurableStore,
    Segment,
    StoredObject,
    StoredPart,
    item_key,
)
from gantry.local.httpserver import body_reader

logger = logging.getLogger(__name__)
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
DYNAMODB_WRITES = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)
LOCAL_FILE_ENVIRON = "HTTP_" + LOCAL_FILE_HEADER.upper().replace("-", "_")
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")


def _service(environ: dict[str, Any]) -> str:
    """The signing scope's service of a request; moto treats unsigned ones as S3 as well."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.split("_", 1)[0].split(".", 1)[0].lower()
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = _SCOPE.search(auth)
    if match:
        return match.group(1).lower()
    credential = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential")
    if credential:
        parts = credential[0].split("/")
        if len(parts) >= 4:
            return parts[3].lower()
    return "s3"


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, leaving an equal stream for moto."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


# A test hook: "<key prefix>:<n>" makes the process SIGKILL itself right after the response of
# the n-th acknowledged S3 write under that prefix has been sent (crash-recovery tests).
CRASH_AFTER_ENV = "GANTRY_LOCAL_CRASH_AFTER"


class _CrashAfter:
    def __init__(self, spec: str) -> None:
        prefix, _, count = spec.rpartition(":")
        self.prefix, self.left = prefix, int(count)
        self._lock = threading.Lock()

    def counts(self, environ: dict[str, Any]) -> bool:
        """Whether this write is the one to crash after."""
        if not environ.get("PATH_INFO", "").lstrip("/").partition("/")[2].startswith(self.prefix):
            return False
        with self._lock:
            self.left -= 1
            return self.left == 0


class _ThenCrash:
    """A response body whose ``close`` (called once it has been sent) kills the process."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class StoredFile:
    """What moto reads a stored object's (or part's) bytes from: its files (segments), one
    after another, each opened only while it is read. An open file per stored object would
    exhaust the process's file descriptors (a soft limit of 1,024 is common) once the stack
    holds a few hundred objects."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = tuple(segments)
        self.name = os.fspath(self.segments[0].path)
        self.size = sum(segment.size for segment in self.segments)
        self.closed = False
        self._position = 0

    @classmethod
    def of(cls, path: Path, size: int) -> StoredFile:
        return cls((Segment(path, size),))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence == io.SEEK_END:
            offset += self.size
        self._position = offset
        return offset

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        begin = self._position
        end = self.size if size is None or size < 0 else min(self.size, begin + size)
        chunks, first = [], 0
        for segment in self.segments:  # one file open at a time, however many segments
            last = first + segment.size
            if last > begin and first < end:
                with open(segment.path, "rb") as handle:
                    handle.seek(max(begin - first, 0))
                    chunks.append(handle.read(min(last, end) - max(begin, first)))
            first = last
        data = b"".join(chunks)
        self._position += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def persisting(app: WsgiApp, store: DurableStore) -> WsgiApp:
    """``app`` with every acknowledged DynamoDB and S3 write stored before its response."""
    crash_spec = os.environ.get(CRASH_AFTER_ENV)
    crash = _CrashAfter(crash_spec) if crash_spec else None

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET" and _service(environ) == "s3":
            served = _serve_stored(store, environ, start_response)
            return served if served is not None else app(environ, start_response)
        if method not in ("PUT", "POST", "DELETE"):
            return app(environ, start_response)
        service = _service(environ)
        if service == "dynamodb":
            operation = environ.get("HTTP_X_AMZ_TARGET", "").rsplit(".", 1)[-1]
            if operation not in DYNAMODB_WRITES:
                return app(environ, start_response)
            body = _read_body(environ)
            return _after(
                app, environ, start_response, lambda _body: _dynamodb(store, operation, body)
            )
        if service == "s3":
            upload = _upload_request(environ)
            if upload is not None and upload[0] != "complete":
                return _multipart(app, store, environ, start_response, upload)
            touched = _s3_targets(environ)
            if touched is None:
                return app(environ, start_response)
            # One writer per key at a time: what is stored is what this request made, never
            # an older version stored after a newer one.
            lock = key_locks[hash(environ.get("PATH_INFO")) % len(key_locks)]
            with lock:
                if upload is not None:
                    response = _completed_from_files(store, environ, start_response, upload[1])
                elif environ.get(LOCAL_FILE_ENVIRON):
                    response = _put_from_file(store, environ, start_response)
                else:
                    response = _link_copy(store, environ, start_response)
                if response is None:
                    response = _after(
                        app,
                        environ,
                        start_response,
                        lambda _body: _s3(store, environ, touched(), upload),
                    )
            if crash is not None and crash.counts(environ):
                return _ThenCrash(response)
            return response
        return app(environ, start_response)

    key_locks = [threading.Lock() for _ in range(64)]
    return wrapped


def _after(
    app: WsgiApp,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    persist: Callable[[list[bytes]], None],
) -> Iterable[bytes]:
    """Run the request; on a 2xx, ``persist`` (given the response body) before the response
    is started."""
    started: list[tuple[Any, ...]] = []

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers, exc_info))
        return lambda data: None  # moto returns its body; it never writes through this

    chunks = list(app(environ, capture))
    status, headers, exc_info = started[-1]
    if status.startswith("2"):
        try:
            persist(chunks)
        except Exception:
            logger.exception(
                "could not store the result of %s %s",
                environ["REQUEST_METHOD"],
                environ.get("PATH_INFO"),
            )
            body = b"<Error><Code>InternalError</Code><Message>not stored</Message></Error>"
            start_response("500 Internal Server Error", [("Content-Length", str(len(body)))])
            return [body]
    start_response(status, headers, exc_info)
    return chunks


# --- DynamoDB ---------------------------------------------------------------------------------


def _tables(name: str) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    for account in list(dynamodb_backends):
        for region in list(dynamodb_backends[account]):
            table = dynamodb_backends[account][region].tables.get(name)
            if table is not None:
                return table
    return None


def _key_of(table: Any, attrs: dict[str, Any]) -> tuple[str, Any, Any]:
    hash_value = attrs[table.hash_key_attr]
    range_value = attrs.get(table.range_key_attr) if table.range_key_attr else None
    return item_key(hash_value, range_value), hash_value, range_value


def _touched_items(operation: str, request: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table name, key or item attributes) of every item a write request may have changed."""
    if operation == "PutItem":
        yield request["TableName"], request["Item"]
    elif operation in ("UpdateItem", "DeleteItem"):
        yield request["TableName"], request["Key"]
    elif operation == "BatchWriteItem":
        for name, writes in request.get("RequestItems", {}).items():
            for write in writes:
                if "PutRequest" in write:
                    yield name, write["PutRequest"]["Item"]
                elif "DeleteRequest" in write:
                    yield name, write["DeleteRequest"]["Key"]
    elif operation == "TransactWriteItems":
        for entry in request.get("TransactItems", []):
            for kind, field in (("Put", "Item"), ("Update", "Key"), ("Delete", "Key")):
                if kind in entry:
                    yield entry[kind]["TableName"], entry[kind][field]


def _dynamodb(store: DurableStore, operation: str, body: bytes) -> None:
    from moto.dynamodb.models.dynamo_type import DynamoType

    request = json.loads(body or b"{}")
    changes: dict[tuple[str, str], dict[str, Any] | None] = {}
    for name, attrs in _touched_items(operation, request):
        table = _tables(name)
        if table is None:
            continue
        key, hash_value, range_value = _key_of(table, attrs)
        item = table.get_item(
            DynamoType(hash_value), DynamoType(range_value) if range_value is not None else None
        )
        changes[(name, key)] = item.to_json()["Attributes"] if item is not None else None
    store.write_items((name, key, doc) for (name, key), doc in changes.items())


def restore_items(store: DurableStore) -> int:
    """Put every stored item into its (provisioned, empty) moto table; the count."""
    count = 0
    for name, doc in store.items():
        table = _tables(name)
        if table is None:
            logger.warning("no table %s for a stored item", name)
            continue
        table.put_item(doc)
        count += 1
    return count


# --- S3 ---------------------------------------------------------------------------------------


def _bucket(name: str) -> Any:
    from moto.s3.models import s3_backends

    for account in list(s3_backends):
        for partition in list(s3_backends[account]):
            bucket = s3_backends[account][partition].buckets.get(name)
            if bucket is not None:
                return bucket
    return None


def _split_path(path: str) -> tuple[str, str]:
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def _s3_targets(environ: dict[str, Any]) -> Callable[[], list[tuple[str, str]]] | None:
    """The (bucket, key) pairs an S3 write request changes, read once it has run; None for
    requests that change no object (bucket set-up, parts of an unfinished upload)."""
    method = environ["REQUEST_METHOD"]
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    bucket, key = _split_path(environ.get("PATH_INFO", ""))
    if not bucket:
        return None
    if not key:
        if method == "POST" and "delete" in query:
            body = _read_body(environ)
            keys = [
                element.text or ""
                for element in ET.fromstring(body).iter()
                if element.tag.rsplit("}", 1)[-1] == "Key"
            ]
            return lambda: [(bucket, k) for k in keys]
        return None
    if "uploadId" in query and method != "POST":
        return None  # a part, a part copy or an abort: no object changes
    if "uploads" in query:
        return None  # a multipart upload starts: nothing to keep yet
    return lambda: [(bucket, key)]


def _copy_source(environ: dict[str, Any]) -> tuple[str, str] | None:
    source = environ.get("HTTP_X_AMZ_COPY_SOURCE")
    if not source or "partNumber" in environ.get("QUERY_STRING", ""):
        return None
    return _split_path(unquote(source.split("?", 1)[0]))


def _s3(
    store: DurableStore,
    environ: dict[str, Any],
    targets: list[tuple[str, str]],
    upload: tuple[str, str] | None = None,
) -> None:
    copied_from = _copy_source(environ)
    for bucket_name, key_name in targets:
        bucket = _bucket(bucket_name)
        fake = bucket.keys.get(key_name) if bucket is not None else None
        if fake is None:
            store.delete_object(bucket_name, key_name)
            continue
        _store_key(store, bucket_name, fake, copied_from)
        if upload is not None:  # moto completed it (an upload with checksums): its parts go
            store.end_upload(bucket_name, upload[1])


def _store_key(
    store: DurableStore, bucket_name: str, fake: Any, copied_from: tuple[str, str] | None
) -> None:
    source = store.get_object(*copied_from) if copied_from else None
    with fake.lock:
        etag = fake.etag
        if source is not None and source.etag == etag and source.size == fake.size:
            segments = store.link_segments(source.segments)
        else:
            path, size = store.write_file(_chunks(fake._value_buffer))
            segments = (Segment(path, size),)
        # From now on moto reads the stored files (never changed in place) and drops its copy.
        old, fake._value_buffer = fake._value_buffer, StoredFile(segments)
        old.close()
    store.put_object(
        StoredObject(
            bucket=bucket_name,
            key=fake.name,
            segments=segments,
            etag=etag,
            size=fake.size,
            last_modified=fake.last_modified.isoformat(),
            meta={
                "metadata": dict(fake.metadata),
                "checksum_algorithm": fake.checksum_algorithm,
                "checksum_value": fake.checksum_value,
            },
        )
    )


def _chunks(buffer: Any) -> Iterator[bytes]:
    buffer.seek(0)
    while chunk := buffer.read(COPY_CHUNK):
        yield chunk


def restore_objects(store: DurableStore) -> int:
    """Put every stored object into its (provisioned) moto bucket, reading from the stored
    file: nothing is loaded into memory and no notification is sent. The count."""
    from moto.s3.models import FakeKey
    from moto.utilities.utils import LowercaseDict

    count = 0
    for obj in store.stored_objects():
        bucket = _bucket(obj.bucket)
        if bucket is None or not all(segment.path.exists() for segment in obj.segments):
            logger.warning("cannot restore %s/%s", obj.bucket, obj.key)
            continue
        fake = FakeKey(
            obj.key,
            b"",
            bucket.account_id,
            bucket.region_name,
            etag=obj.etag.strip('"'),
            bucket_name=obj.bucket,
            checksum_value=obj.meta.get("checksum_value"),
        )
        fake._value_buffer.close()
        # moto types the buffer as a SpooledTemporaryFile; it only reads and seeks it.
        fake._value_buffer = StoredFile(obj.segments)  # type: ignore[assignment]
        fake.contentsize = obj.size
        fake.last_modified = datetime.fromisoformat(obj.last_modified)
        fake._metadata = LowercaseDict(obj.meta.get("metadata") or {})
        fake.checksum_algorithm = obj.meta.get("checksum_algorithm")
        fake.checksum_type = obj.meta.get("checksum_type")
        fake.checksum_parts = obj.meta.get("checksum_parts")
        bucket.keys[obj.key] = fake
        count += 1
    return count


# --- reads at disk speed ------------------------------------------------------------------------

READ_CHUNK = 1024 * 1024
_PLAIN_QUERY = re.compile(r"^(X-Amz-[A-Za-z-]+|x-id)$")


def _serve_stored(
    store: DurableStore, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes] | None:
    """A plain GetObject (whole or one byte range) of a stored object, streamed from its file:
    moto would read the whole object into memory for every request, ranged ones included.
    None for anything else (conditional requests, parts, checksums), which moto answers."""
    bucket_name, key_name = _split_path(environ.get("PATH_INFO", ""))
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if not key_name or any(not _PLAIN_QUERY.match(name) for name in query):
        return None
    conditions = {name for name in environ if name.startswith("HTTP_IF_")}
    if conditions - {"HTTP_IF_MATCH"}:
        return None
    bucket = _bucket(bucket_name)
    fake = bucket.keys.get(key_name) if bucket is not None else None
    if fake is None:
        return None
    segments = _stored_segments(store, fake)
    if segments is None or len(segments) > MAX_SEGMENTS:
        return None
    if conditions and environ["HTTP_IF_MATCH"] not in (fake.etag, "*"):
        return None  # moto answers 412 (ranged downloads send If-Match with the ETag)
    size = int(fake.size)
    byte_range = _byte_range(environ.get("HTTP_RANGE"), size)
    if byte_range is False:
        return None  # moto answers malformed or unsatisfiable ranges as S3 does
    headers: dict[str, str] = {str(k): str(v) for k, v in fake.response_dict.items()}
    headers.update({str(k): str(v) for k, v in fake.metadata.items()})
    headers["Accept-Ranges"] = "bytes"
    if fake.version_id != "null":
        headers["x-amz-version-id"] = fake.version_id
    status = "200 OK"
    begin, end = 0, size - 1
    if byte_range:
        begin, end = byte_range
        status = "206 Partial Content"
        headers["content-range"] = f"bytes {begin}-{end}/{size}"
    elif environ.get("HTTP_X_AMZ_CHECKSUM_MODE") == "ENABLED" and fake.checksum_algorithm:
        # As moto does: the stored checksum of the whole object (none for a range).
        checksum = fake.checksum_value
        if fake.checksum_type == "COMPOSITE":
            checksum = f"{checksum}-{fake.checksum_parts}"
        headers[f"x-amz-checksum-{fake.checksum_algorithm.lower()}"] = str(checksum)
        if fake.checksum_type:
            headers["x-amz-checksum-type"] = str(fake.checksum_type)
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    headers["Content-Length"] = str(end - begin + 1)
    if environ.get(LOCAL_FILE_ENVIRON) == "1":
        # The local runner copies the object from its files rather than downloading it
        # (batch_runner.local_files); the files are never changed in place.
        headers[LOCAL_FILE_HEADER] = local_file_names(
            [os.path.abspath(segment.path) for segment in segments]
        )
    try:
        # Opened before answering: a newer version may replace (and unlink) the files later.
        pieces = _open_range(segments, begin, end - begin + 1)
    except FileNotFoundError:
        return None
    start_response(status, list(headers.items()))
    return _RangeBody(pieces)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """(first, last) of a single byte range; None for the whole object; False when moto
    should answer."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return False
    first, _, last = spec.strip().partition("-")
    try:
        if first:
            begin = int(first)
            end = min(int(last), size - 1) if last else size - 1
        else:
            suffix = int(last)
            begin, end = max(size - suffix, 0), size - 1
    except ValueError:
        return False
    if size == 0 or begin > end or begin >= size:
        return False
    return begin, end


# More files than this, and a read is left to moto: each read holds every file of its range
# open from the start (a newer version may unlink them meanwhile), and the local runner is
# given their names in one header.
MAX_SEGMENTS = 1000


def _open_range(
    segments: Sequence[Segment], begin: int, length: int
) -> list[tuple[io.BufferedReader, int, int]]:
    """(open file, offset in it, byte count) of each segment holding the ``length`` bytes from
    ``begin`` of an object kept in ``segments``, all opened before any byte is read: a newer
    version of the object may unlink them meanwhile. FileNotFoundError if one is gone."""
    pieces: list[tuple[io.BufferedReader, int, int]] = []
    first, end = 0, begin + length
    try:
        for segment in segments:
            last = first + segment.size
            if last > begin and first < end:
                offset = max(begin - first, 0)
                # A reader, never a writer, of an object file; closed by _RangeBody.
                handle = open(segment.path, "rb")  # noqa: SIM115
                pieces.append((handle, offset, min(last, end) - first - offset))
            first = last
    except BaseException:
        for handle, _offset, _count in pieces:
            handle.close()
        raise
    return pieces


class _RangeBody:
    """The bytes of opened segment ranges, 1 MiB at a time; ``close`` (werkzeug calls it once
    the response is sent, or given up) closes every file, read or not."""

    def __init__(self, pieces: list[tuple[io.BufferedReader, int, int]]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        for handle, offset, count in self.pieces:
            handle.seek(offset)
            while count > 0:
                chunk = handle.read(min(READ_CHUNK, count))
                if not chunk:
                    return  # shorter than recorded: the client sees the body cut short
                count -= len(chunk)
                yield chunk

    def close(self) -> None:
        for handle, _offset, _count in self.pieces:
            handle.close()


# --- copies at no I/O -------------------------------------------------------------------------

# Headers that make a CopyObject more than a copy of the bytes and metadata: moto handles those.
_COPY_EXTRAS = re.compile(
    r"^HTTP_X_AMZ_(METADATA_DIRECTIVE|TAGGING|STORAGE_CLASS|SERVER_SIDE|WEBSITE|OBJECT_LOCK|"
    r"COPY_SOURCE_IF|COPY_SOURCE_SERVER|CHECKSUM|META_|ACL|GRANT)"
)


def _link_copy(
    store: DurableStore, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes] | None:
    """A plain CopyObject of a stored object as a hard link of its file: moto would read the
    whole source into memory and write it again. None for any other request."""
    if environ["REQUEST_METHOD"] != "PUT" or environ.get("QUERY_STRING"):
        return None
    copied_from = _copy_source(environ)
    if copied_from is None or any(_COPY_EXTRAS.match(name) for name in environ):
        return None
    bucket_name, key_name = _split_path(environ.get("PATH_INFO", ""))
    if not key_name or copied_from == (bucket_name, key_name):
        return None
    source_bucket, target_bucket = _bucket(copied_from[0]), _bucket(bucket_name)
    source = source_bucket.keys.get(copied_from[1]) if source_bucket is not None else None
    stored = store.get_object(*copied_from)
    if target_bucket is None or source is None or stored is None or stored.etag != source.etag:
        return None
    from moto.s3 import notifications
    from moto.s3.models import s3_backends

    # Every file of the object gets a new name: objects are immutable, so a link is a copy.
    segments = store.link_segments(stored.segments)
    backend = s3_backends[target_bucket.account_id][target_bucket.partition]
    copy = backend.put_object(bucket_name, key_name, b"", disable_notification=True)
    with copy.lock:
        copy._value_buffer.close()
        # moto types the buffer as a SpooledTemporaryFile; it only reads and seeks it.
        copy._value_buffer = StoredFile(segments)  # type: ignore[assignment]
        copy.contentsize = stored.size
        copy._etag = stored.etag.strip('"')
    copy.set_metadata(dict(source.metadata))
    if source.checksum_value:
        copy.checksum_value, copy.checksum_algorithm = (
            source.checksum_value,
            source.checksum_algorithm,
        )
    store.put_object(
        StoredObject(
            bucket=bucket_name,
            key=key_name,
            segments=segments,
            etag=stored.etag,
            size=stored.size,
            last_modified=copy.last_modified.isoformat(),
            meta={
                "metadata": dict(copy.metadata),
                "checksum_algorithm": copy.checksum_algorithm,
                "checksum_value": copy.checksum_value,
            },
        )
    )
    # As S3 (and moto's own copy): an ObjectCreated:Copy notification, once the copy is stored.
    notifications.send_event(
        target_bucket.account_id,
        notifications.S3NotificationEvent.OBJECT_CREATED_COPY_EVENT,
        target_bucket,
        copy,
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<CopyObjectResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<ETag>{escape(copy.etag)}</ETag>"
        f"<LastModified>{copy.last_modified_ISO8601}</LastModified>"
        "</CopyObjectResult>"
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]


# Headers that make a PutObject more than bytes and metadata; with a local file, refused.
_PUT_EXTRAS = re.compile(
    r"^HTTP_(X_AMZ_(TAGGING|STORAGE_CLASS|SERVER_SIDE|WEBSITE|OBJECT_LOCK|ACL|GRANT|COPY_SOURCE)"
    r"|IF_)"
)


def _put_from_file(
    store: DurableStore, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """A PutObject with an empty body naming, in ``x-gantry-local-file``, a file the local
    runner copied or moved to the store's incoming folder: the file becomes the object's
    (moved, not written again). Its ETag is not an MD5 of the bytes (as S3's own for some
    objects), so nothing reads the object to make one. Any request this cannot honour is a
    400, which makes the runner upload the bytes instead; checksums sent are of the empty
    body and ignored."""
    bucket_name, key_name = _split_path(environ.get("PATH_INFO", ""))
    bucket = _bucket(bucket_name)
    if (
        environ["REQUEST_METHOD"] != "PUT"
        or environ.get("QUERY_STRING")
        or environ.get("CONTENT_LENGTH", "0") not in ("", "0")
        or not key_name
        or bucket is None
        or bucket.encryption
        or any(_PUT_EXTRAS.match(name) for name in environ)
    ):
        return _invalid(start_response, "this request cannot take its bytes from a local file")
    try:
        path, size = store.adopt_file(environ[LOCAL_FILE_ENVIRON])
    except ValueError as error:
        return _invalid(start_response, f"{LOCAL_FILE_HEADER}: {error}")
    from moto.s3 import notifications
    from moto.s3.models import s3_backends
    from moto.s3.utils import metadata_from_headers

    headers = {
        name[5:].replace("_", "-").lower(): value
        for name, value in environ.items()
        if name.startswith("HTTP_X_AMZ_META_")
    }
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    backend = s3_backends[bucket.account_id][bucket.partition]
    key = backend.put_object(bucket_name, key_name, b"", disable_notification=True)
    with key.lock:
        key._value_buffer.close()
        # moto types the buffer as a SpooledTemporaryFile; it only reads and seeks it.
        key._value_buffer = StoredFile.of(path, size)  # type: ignore[assignment]
        key.contentsize = size
        key._etag = f"{secrets.token_hex(16)}-1"
    key.set_metadata(metadata_from_headers(headers))
    store.put_object(
        StoredObject(
            bucket=bucket_name,
            key=key_name,
            segments=(Segment(path, size),),
            etag=key.etag,
            size=size,
            last_modified=key.last_modified.isoformat(),
            meta={"metadata": dict(key.metadata), "checksum_algorithm": None},
        )
    )
    notifications.send_event(
        bucket.account_id,
        notifications.S3NotificationEvent.OBJECT_CREATED_PUT_EVENT,
        bucket,
        key,
    )
    # The size stored, which the runner checks: another endpoint would store an empty object.
    answer = [("ETag", key.etag), ("Content-Length", "0"), (LOCAL_FILE_HEADER, str(size))]
    if key.version_id and key.version_id != "null":
        answer.append(("x-amz-version-id", str(key.version_id)))
    start_response("200 OK", answer)
    return [b""]


def _invalid(start_response: Callable[..., Any], message: str) -> Iterable[bytes]:
    body = (
        f"<Error><Code>InvalidRequest</Code><Message>{escape(message)}</Message></Error>"
    ).encode()
    start_response(
        "400 Bad Request", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]


# --- multipart uploads on disk ------------------------------------------------------------------


def _upload_request(environ: dict[str, Any]) -> tuple[str, str] | None:
    """("create" | "part" | "abort" | "complete", upload id) of a multipart upload request."""
    method = environ["REQUEST_METHOD"]
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    _bucket_name, key_name = _split_path(environ.get("PATH_INFO", ""))
    if not key_name:
        return None
    if method == "POST" and "uploads" in query:
        return "create", ""
    upload_id = (query.get("uploadId") or [""])[0]
    if not upload_id:
        return None
    if method == "PUT" and "partNumber" in query:
        return "part", upload_id
    if method == "DELETE":
        return "abort", upload_id
    if method == "POST":
        return "complete", upload_id
    return None


def _multipart(
    app: WsgiApp,
    store: DurableStore,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    upload: tuple[str, str],
) -> Iterable[bytes]:
    """Start, part and abort of a multipart upload, each stored before it is answered."""
    kind, upload_id = upload
    bucket_name, _key_name = _split_path(environ.get("PATH_INFO", ""))
    if kind == "create":
        return _after(
            app,
            environ,
            start_response,
            lambda body: _store_upload(store, bucket_name, _xml_text(b"".join(body), "UploadId")),
        )
    if kind == "part":
        streamed = _part_to_file(store, environ, start_response, upload_id)
        if streamed is None:
            streamed = _part_copy_to_file(store, environ, start_response, upload_id)
        if streamed is not None:
            return streamed
        number = int(parse_qs(environ.get("QUERY_STRING", ""))["partNumber"][0])
        return _after(
            app,
            environ,
            start_response,
            lambda _body: _store_part(store, bucket_name, upload_id, number),
        )
    bucket = _bucket(bucket_name)
    multipart = bucket.multiparts.get(upload_id) if bucket is not None else None

    def aborted(_body: list[bytes]) -> None:
        store.end_upload(bucket_name, upload_id)
        if multipart is not None:
            multipart.dispose()  # closes the part files

    return _after(app, environ, start_response, aborted)


def _xml_text(body: bytes, tag: str) -> str:
    for element in ET.fromstring(body).iter():
        if element.tag.rsplit("}", 1)[-1] == tag:
            return element.text or ""
    raise ValueError(f"no {tag} in the response")


def _store_upload(store: DurableStore, bucket_name: str, upload_id: str) -> None:
    multipart = _bucket(bucket_name).multiparts[upload_id]
    store.put_upload(
        bucket_name,
        upload_id,
        {
            "key": multipart.key_name,
            "metadata": dict(multipart.metadata),
            "storage": multipart.storage,
            "tags": multipart.tags,
            "sse_encryption": multipart.sse_encryption,
            "kms_key_id": multipart.kms_key_id,
        },
    )


def _store_part(store: DurableStore, bucket_name: str, upload_id: str, number: int) -> None:
    bucket = _bucket(bucket_name)
    multipart = bucket.multiparts.get(upload_id) if bucket is not None else None
    part = multipart.parts.get(number) if multipart is not None else None
    if part is None:
        return  # completed or aborted meanwhile: nothing of it is kept
    with part.lock:
        etag = part.etag
        path, size = store.write_file(_chunks(part._value_buffer))
        # moto reads the part from its file from now on; its own copy is dropped.
        old, part._value_buffer = part._value_buffer, StoredFile.of(path, size)
        old.close()
    store.put_part(
        bucket_name,
        upload_id,
        StoredPart(number, path, etag, size, part.last_modified.isoformat()),
    )


def _part_from_file(
    store: DurableStore,
    multipart: Any,
    bucket_name: str,
    upload_id: str,
    number: int,
    path: Path,
    size: int,
    md5: Any,
) -> Any:
    """Part ``number`` of ``multipart`` made of a stored file of ``size`` bytes (their MD5 in
    ``md5``): moto reads it from the file, and the store records it."""
    part = multipart.set_part(number, b"")
    with part.lock:
        part._value_buffer.close()
        part._value_buffer = StoredFile.of(path, size)
        part.contentsize = size
        part._etag = md5.hexdigest()
    store.put_part(
        bucket_name,
        upload_id,
        StoredPart(number, path, part.etag, size, part.last_modified.isoformat()),
    )
    return part


def _part_to_file(
    store: DurableStore,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    upload_id: str,
) -> Iterable[bytes] | None:
    """UploadPart streamed from the request into the part's file, 1 MiB at a time, with its
    MD5 (the ETag) computed on the way: moto would hold the part in memory several times and
    spool it to a temporary file first. None where moto answers: a part copy, a chunked or
    aws-chunked body, a checksum sent in a trailer, an unknown upload, a bad part number."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    algorithm = environ.get("HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM", "")
    checksum_header = f"x-amz-checksum-{algorithm.lower()}"
    checksum = environ.get("HTTP_" + checksum_header.upper().replace("-", "_"))
    if (
        environ.get("HTTP_X_AMZ_COPY_SOURCE")
        or "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", "")
        or environ.get("HTTP_TRANSFER_ENCODING")
        or (algorithm and not checksum)
    ):
        return None
    try:
        number = int(query["partNumber"][0])
        length = int(environ["CONTENT_LENGTH"])
    except (KeyError, ValueError):
        return None
    bucket_name, _key_name = _split_path(environ.get("PATH_INFO", ""))
    bucket = _bucket(bucket_name)
    multipart = bucket.multiparts.get(upload_id) if bucket is not None else None
    if multipart is None or not 1 <= number <= 10_000:
        return None
    md5 = hashlib.md5()
    path, size = store.write_direct(body_reader(environ, length), md5)
    if size != length:
        path.unlink(missing_ok=True)
        error = b"<Error><Code>IncompleteBody</Code><Message>body cut short</Message></Error>"
        start_response("400 Bad Request", [("Content-Length", str(len(error)))])
        return [error]
    part = _part_from_file(store, multipart, bucket_name, upload_id, number, path, size, md5)
    headers = [("ETag", part.etag), ("Content-Length", "0")]
    if checksum:
        headers.append((checksum_header, checksum))  # as moto: echoed, not checked
    start_response("200 OK", headers)
    return [b""]


_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


def _part_copy_to_file(
    store: DurableStore,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    upload_id: str,
) -> Iterable[bytes] | None:
    """UploadPartCopy of a stored object: the range read from the source's file once, 1 MiB
    at a time, into the part's file, its MD5 (the ETag) computed on the way; moto would read
    the whole source into memory for every part. None where moto answers: a versioned source,
    conditions other than a matching If-Match, encryption, a range beyond the object, a
    source not kept as a file."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    copied_from = environ.get("HTTP_X_AMZ_COPY_SOURCE", "")
    if (
        not copied_from
        or "?" in copied_from
        or any(
            name.startswith(("HTTP_X_AMZ_COPY_SOURCE_IF", "HTTP_X_AMZ_COPY_SOURCE_SERVER"))
            or name.startswith("HTTP_X_AMZ_SERVER_SIDE")
            for name in environ
            # If-Match (the managed copy sends the source's ETag with every part) is checked.
            if name != "HTTP_X_AMZ_COPY_SOURCE_IF_MATCH"
        )
    ):
        return None
    try:
        number = int(query["partNumber"][0])
    except (KeyError, ValueError):
        return None
    bucket_name, _key_name = _split_path(environ.get("PATH_INFO", ""))
    bucket = _bucket(bucket_name)
    multipart = bucket.multiparts.get(upload_id) if bucket is not None else None
    source_bucket_name, source_key = _split_path(unquote(copied_from))
    source_bucket = _bucket(source_bucket_name)
    source = source_bucket.keys.get(source_key) if source_bucket is not None else None
    segments = _stored_segments(store, source) if source is not None else None
    if multipart is None or not 1 <= number <= 10_000 or source is None or segments is None:
        return None
    if_match = environ.get("HTTP_X_AMZ_COPY_SOURCE_IF_MATCH")
    if if_match is not None and if_match not in (source.etag, source.etag.strip('"')):
        return None  # moto answers 412
    size = int(source.size)
    begin, end = 0, size - 1
    requested = environ.get("HTTP_X_AMZ_COPY_SOURCE_RANGE")
    if requested is not None:
        matched = _COPY_RANGE.match(requested)
        if matched is None:
            return None
        begin, end = int(matched.group(1)), int(matched.group(2))
    if not 0 <= begin <= end < size or len(segments) > MAX_SEGMENTS:
        return None  # moto answers (S3 refuses such a range)
    md5 = hashlib.md5()
    try:
        # Opened before reading: a newer version may replace (and unlink) the files meanwhile.
        pieces = _open_range(segments, begin, end - begin + 1)
    except FileNotFoundError:
        return None

    def body() -> Iterator[bytes]:
        chunks = _RangeBody(pieces)
        try:
            for chunk in chunks:
                md5.update(chunk)
                yield chunk
        finally:
            chunks.close()

    part_path, part_size = store.write_file(body())
    if part_size != end - begin + 1:  # never for an immutable file; moto answers then
        part_path.unlink(missing_ok=True)
        return None
    part = _part_from_file(
        store, multipart, bucket_name, upload_id, number, part_path, part_size, md5
    )
    answer = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<CopyPartResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<LastModified>{part.last_modified_ISO8601}</LastModified>"
        f"<ETag>{escape(part.etag)}</ETag>"
        "</CopyPartResult>"
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/xml"), ("Content-Length", str(len(answer)))]
    )
    return [answer]


def _stored_segments(store: DurableStore, fake: Any) -> tuple[Segment, ...] | None:
    """The files moto reads a key or part from, where they are the store's."""
    buffer = getattr(fake, "_value_buffer", None)
    if not isinstance(buffer, StoredFile) or any(
        segment.path.parent != store.objects for segment in buffer.segments
    ):
        return None
    return buffer.segments


def _requested_parts(body: bytes) -> list[tuple[int, str]] | None:
    """(part number, ETag) of a CompleteMultipartUpload body; None where moto should answer."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    parts: list[tuple[int, str]] = []
    for element in root:
        if element.tag.rsplit("}", 1)[-1] != "Part":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in element}
        try:
            number = int(fields["PartNumber"])
        except (KeyError, ValueError):
            return None
        if "ETag" not in fields or (parts and number <= parts[-1][0]):
            return None
        parts.append((number, fields["ETag"].strip().strip('"')))
    return parts or None


def _completed_from_files(
    store: DurableStore,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    upload_id: str,
) -> Iterable[bytes] | None:
    """CompleteMultipartUpload with the stored part files as the object's segments, in order:
    no byte is read or written again (moto would join the parts in memory, and a single file
    would cost a second write of every byte). None where moto answers: an unknown upload or
    part, a part too small, encryption or conditions."""
    from moto.s3 import notifications
    from moto.s3.models import s3_backends
    from moto.settings import S3_UPLOAD_PART_MIN_SIZE

    bucket_name, key_name = _split_path(environ.get("PATH_INFO", ""))
    bucket = _bucket(bucket_name)
    multipart = bucket.multiparts.get(upload_id) if bucket is not None else None
    if (
        multipart is None
        or multipart.key_name != key_name
        or multipart.sse_encryption
        or multipart.kms_key_id
        or bucket.encryption
        or any(name.startswith("HTTP_IF_") for name in environ)
    ):
        return None
    requested = _requested_parts(_read_body(environ))
    if requested is None:
        return None
    parts: list[Any] = []
    segments: list[Segment] = []
    for index, (number, etag) in enumerate(requested):
        part = multipart.parts.get(number)
        stored = _stored_segments(store, part) if part is not None else None
        if part is None or stored is None or part.etag.strip('"') != etag:
            return None
        if index < len(requested) - 1 and part.contentsize < S3_UPLOAD_PART_MIN_SIZE:
            return None
        parts.append(part)
        segments.extend(stored)
    files = [segment.path for segment in segments]
    size = sum(segment.size for segment in segments)
    # S3's ETag of a multipart object: the MD5 of the parts' MD5s, and the part count.
    digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in parts))
    etag = f"{digest.hexdigest()}-{len(parts)}"
    backend = s3_backends[bucket.account_id][bucket.partition]
    del bucket.multiparts[upload_id]
    key = backend.put_object(
        bucket_name,
        key_name,
        b"",
        storage=multipart.storage,
        etag=etag,
        multipart=multipart,
        disable_notification=True,
    )
    with key.lock:
        key._value_buffer.close()
        # moto types the buffer as a SpooledTemporaryFile; it only reads and seeks it.
        key._value_buffer = StoredFile(segments)  # type: ignore[assignment]
        key.contentsize = size
    key.set_metadata(multipart.metadata)
    algorithm = multipart.metadata.get("x-amz-checksum-algorithm")
    if algorithm:
        # As moto (and S3): the checksum of the part checksums, or of the whole object.
        kind = multipart.metadata.get("x-amz-checksum-type") or (
            "FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE"
        )
        key.checksum_algorithm, key.checksum_type = algorithm, kind
        key.checksum_value, key.checksum_parts = _multipart_checksum(files, algorithm, kind)
    backend.put_object_tagging(key, multipart.tags)
    backend.put_object_acl(bucket_name, key.name, multipart.acl, disable_notification=True)
    multipart.dispose()  # closes the parts; their files are the object's from now on
    store.end_upload(
        bucket_name,
        upload_id,
        StoredObject(
            bucket=bucket_name,
            key=key_name,
            segments=tuple(segments),
            etag=key.etag,
            size=size,
            last_modified=key.last_modified.isoformat(),
            meta={
                "metadata": dict(key.metadata),
                "checksum_algorithm": key.checksum_algorithm,
                "checksum_value": key.checksum_value,
                "checksum_type": key.checksum_type,
                "checksum_parts": key.checksum_parts,
            },
        ),
    )
    notifications.send_event(
        bucket.account_id,
        notifications.S3NotificationEvent.OBJECT_CREATED_COMPLETE_MULTIPART_UPLOAD_EVENT,
        bucket,
        key,
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Location>http://{escape(bucket_name)}.s3.amazonaws.com/{escape(key_name)}</Location>"
        f"<Bucket>{escape(bucket_name)}</Bucket><Key>{escape(key_name)}</Key>"
        f"<ETag>{escape(key.etag)}</ETag>"
        "</CompleteMultipartUploadResult>"
    ).encode()
    headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    if key.version_id and key.version_id != "null":
        headers.append(("x-amz-version-id", str(key.version_id)))
    start_response("200 OK", headers)
    return [body]


def _multipart_checksum(files: list[Path], algorithm: str, kind: str) -> tuple[str, int]:
    """(base64 value, part count) of a completed upload's checksum, read from the part files
    a chunk at a time: COMPOSITE is the checksum of the parts' checksums, FULL_OBJECT the
    checksum of all the bytes."""
    if kind == "COMPOSITE":
        joined = b"".join(_digest([path], algorithm) for path in files)
        return base64.b64encode(_digest_bytes(joined, algorithm)).decode(), len(files)
    return base64.b64encode(_digest(files, algorithm)).decode(), 1


def _digest_bytes(data: bytes, algorithm: str) -> bytes:
    from moto.s3.utils import compute_checksum

    return bytes(compute_checksum(data, algorithm, encode_base64=False))


def _digest(files: list[Path], algorithm: str) -> bytes:
    """The raw checksum of the files' bytes one after another, as moto computes it (CRC32
    where the library of CRC32C or CRC64NVME is missing)."""
    from moto.s3.utils import HAS_CRT

    if algorithm in ("SHA1", "SHA256") or algorithm not in ("CRC32", "CRC32C", "CRC64NVME"):
        hasher = hashlib.sha1() if algorithm == "SHA1" else hashlib.sha256()
        for chunk in _file_data(files):
            hasher.update(chunk)
        return hasher.digest()
    if algorithm == "CRC64NVME" and HAS_CRT:
        from awscrt import checksums

        crc64 = 0
        for chunk in _file_data(files):
            crc64 = checksums.crc64nvme(chunk, crc64)
        return crc64.to_bytes(8, "big")
    update: Callable[[bytes, int], int] = binascii.crc32
    if algorithm == "CRC32C":
        try:
            import crc32c

            update = crc32c.crc32c
        except ImportError:
            pass
    crc = 0
    for chunk in _file_data(files):
        crc = update(chunk, crc)
    return crc.to_bytes(4, "big")


def _file_data(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(COPY_CHUNK):
                yield chunk


def restore_uploads(store: DurableStore) -> int:
    """Put every stored multipart upload in progress, with its parts (read from their files),
    back into its bucket; the count."""
    from moto.s3.models import FakeMultipart
    from moto.utilities.utils import CaseInsensitiveDict

    count = 0
    for upload in store.uploads():
        bucket = _bucket(upload.bucket)
        if bucket is None:
            logger.warning("no bucket %s for a stored upload", upload.bucket)
            continue
        doc = upload.doc
        multipart = FakeMultipart(
            doc["key"],
            CaseInsensitiveDict(doc.get("metadata") or {}),
            bucket.account_id,
            bucket.region_name,
            storage=doc.get("storage"),
            tags=doc.get("tags"),
            sse_encryption=doc.get("sse_encryption"),
            kms_key_id=doc.get("kms_key_id"),
        )
        multipart.id = upload.upload_id
        for part in upload.parts:
            fake = multipart.set_part(part.number, b"")
            fake._value_buffer.close()
            # moto types the buffer as a SpooledTemporaryFile; it only reads and seeks it.
            fake._value_buffer = StoredFile.of(part.path, part.size)  # type: ignore[assignment]
            fake.contentsize = part.size
            fake._etag = part.etag.strip('"')
            fake.last_modified = datetime.fromisoformat(part.last_modified)
        bucket.multiparts[upload.upload_id] = multipart
        count += 1
    return count
