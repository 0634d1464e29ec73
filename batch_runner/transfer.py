"""Streamed S3 transfers through boto3's transfer manager (never whole files in memory).

One manager moves many files at once: its thread pool splits large objects into ranged
parts, so a few big files and many small ones both keep the network busy. Transfers take
file *names*: given a file object, s3transfer reads each upload part into memory (chunk
size x concurrency), given a name it reads parts lazily from disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber  # type: ignore[import-untyped]

MB = 1024 * 1024
POOL_CONNECTIONS = 32
# botocore's data loader with the service models already parsed (batch_runner.forkserver).
_shared_loader: Any = None
# An S3 client built ahead by the fork server, with the environment it was built from: a job
# forked from the server takes it only if its own environment says the same.
_ready_client: tuple[dict[str, str], Any] | None = None


def share_loader(loader: Any) -> None:
    """Let every S3 client of this process (and of processes forked from it) use ``loader``:
    the models are files of the installed botocore, the same whichever session reads them."""
    global _shared_loader
    _shared_loader = loader


def _new_session() -> boto3.session.Session:
    """A session reading this environment, with the shared service models if any."""
    core = botocore.session.get_session()
    if _shared_loader is not None:
        core.register_component("data_loader", _shared_loader)
    return boto3.session.Session(botocore_session=core)


def _client_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What an S3 client can depend on: the whole environment but the runner's own settings
    (credentials, endpoint, region, profile, config files, proxies, CA bundle, home...)."""
    return {k: v for k, v in environ.items() if not k.startswith("GANTRY_")}


def prepare_client() -> None:
    """Build the S3 client of the next job ahead of it (the fork server, before it forks).

    Only with credentials in the environment: resolving them otherwise may ask the network
    (instance metadata), and a job's own credentials are never known ahead. The client has
    made no request, so it holds no connection; each forked job gets its own copy.
    """
    global _ready_client
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # A session of its own: boto3's default session would keep these credentials for
        # every later client of the process.
        _ready_client = (_client_environment(os.environ), s3_client(session=_new_session()))


def _take_ready_client() -> Any | None:
    """The client built ahead, once, if this process's environment is the one it was built
    from; None otherwise (then a new client reads this environment)."""
    global _ready_client
    ready, _ready_client = _ready_client, None
    if ready is None or ready[0] != _client_environment(os.environ):
        return None
    return ready[1]


def s3_client(max_pool_connections: int = POOL_CONNECTIONS, session: Any | None = None) -> Any:
    """An S3 client; boto3 itself honours AWS_ENDPOINT_URL (moto server, LocalStack).

    ``session``: a boto3 session with the job's own credentials (batch_runner.credentials).
    """
    if session is None and max_pool_connections == POOL_CONNECTIONS:
        ready = _take_ready_client()
        if ready is not None:
            return ready
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if session is None and _shared_loader is not None:
        session = _new_session()
    return (session or boto3).client(
        "s3",
        region_name=region,
        config=Config(max_pool_connections=max_pool_connections, retries={"mode": "standard"}),
    )


def transfer_config(concurrency: int) -> TransferConfig:
    # Memory in flight is bounded by these, not by file sizes.
    return TransferConfig(
        max_concurrency=concurrency,
        multipart_threshold=8 * MB,
        multipart_chunksize=8 * MB,
        max_io_queue=64,
    )


@dataclass(frozen=True)
class Download:
    bucket: str
    key: str
    filename: str


@dataclass(frozen=True)
class Upload:
    filename: str
    bucket: str
    key: str
    # Bytes to send from the file's start; None: its size when the transfer starts. A file
    # another process may still grow is sent as it was measured, never more.
    size: int | None = None


class _KnownSize(BaseSubscriber):
    """Gives the transfer its size, which it would otherwise take from the file."""

    def __init__(self, size: int) -> None:
        self._size = size

    def on_queued(self, future: Any, **_kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)


def download_all(client: Any, items: Iterable[Download], concurrency: int = 10) -> None:
    """Download every object to its file name, concurrently; raises the first error."""
    with create_transfer_manager(client, transfer_config(concurrency)) as manager:
        futures = [manager.download(item.bucket, item.key, item.filename) for item in items]
        for future in futures:
            future.result()


def upload_all(client: Any, items: Iterable[Upload], concurrency: int = 10) -> None:
    """Upload every file, concurrently; raises the first error."""
    with create_transfer_manager(client, transfer_config(concurrency)) as manager:
        futures = [
            manager.upload(
                item.filename,
                item.bucket,
                item.key,
                subscribers=None if item.size is None else [_KnownSize(item.size)],
            )
            for item in items
        ]
        for future in futures:
            future.result()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri!r} must be s3://bucket/key")
    return bucket, key
