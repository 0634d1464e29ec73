"""SimpleITK for the imaging Lambdas, unpacked from an S3 archive on first use.

SimpleITK's extension module (~260 MB) does not fit in a zip Lambda (250 MB with layers), so
the stack ships it as a separate asset (infra/packaging.py): the output of ``pip install
--target`` zipped by the CDK CLI, i.e. ``SimpleITK/`` and its ``.dist-info`` at the archive's
root, files only. The imaging functions get its ``s3://bucket/key`` in ``ARCHIVE_ENV``.

``ensure_simpleitk()`` runs right before ``import SimpleITK``. When the package is importable
(a local install, the runner image) it does nothing. Otherwise it downloads the archive to
disk, extracts it into a staging directory and renames that to ``<tmp>/simpleitk-<hash of the
URI>``; the rename is atomic, so concurrent processes never see a half-extracted tree, and a
runtime restarted in the same execution environment reuses the directory without touching S3.
The URI is a safe cache key: CDK names the asset object after the hash of its content.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from gantry.paths import safe_join

ARCHIVE_ENV = "SIMPLEITK_ARCHIVE_S3_URI"
MODULE = "SimpleITK"
# Bounds for a broken or hostile archive; the real one holds a few dozen files, ~270 MB.
MAX_UNPACKED_BYTES = 1024**3
MAX_MEMBERS = 10_000
_CHUNK = 1024 * 1024

log = logging.getLogger(__name__)
# Threads of one process share sys.path and the cache directory: one fetch at a time.
_lock = threading.Lock()


class SimpleItkUnavailable(ImportError):
    """SimpleITK is neither installed nor obtainable from the archive; says why."""


def archive_dir(uri: str, cache_root: Path | str | None = None) -> Path:
    """Where the archive at ``uri`` is (or will be) unpacked."""
    root = Path(cache_root) if cache_root is not None else Path(tempfile.gettempdir())
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return root / f"simpleitk-{digest}"


def _split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise SimpleItkUnavailable(f"{ARCHIVE_ENV} must be s3://bucket/key, not {uri!r}")
    return bucket, key


def fetch_archive(uri: str, *, cache_root: Path | str | None = None, client: Any = None) -> Path:
    """The directory holding the unpacked archive; downloads and extracts it if missing."""
    target = archive_dir(uri, cache_root)
    if target.is_dir():
        return target
    bucket, key = _split_uri(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=".simpleitk-", dir=target.parent))
    try:
        archive = staging / "archive.zip"
        unpacked = staging / "unpacked"
        _download(bucket, key, archive, client)
        downloaded = time.monotonic()
        _extract(archive, unpacked, uri)
        archive.unlink()
        try:
            unpacked.rename(target)
        except OSError:
            # Another process renamed its copy first; theirs is complete, use it.
            if not target.is_dir():
                raise
        log.info(
            "SimpleITK unpacked from %s: download %.1f s, extract %.1f s",
            uri,
            downloaded - started,
            time.monotonic() - downloaded,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download(bucket: str, key: str, path: Path, client: Any) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    if client is None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", config=Config(retries={"mode": "standard"}))
    try:
        # Ranged parts written straight to the file: the archive never sits in memory.
        client.download_file(bucket, key, str(path))
    except (BotoCoreError, ClientError) as error:
        raise SimpleItkUnavailable(
            f"SimpleITK could not be downloaded from s3://{bucket}/{key}: {error}"
        ) from error


def _extract(archive: Path, destination: Path, uri: str) -> None:
    """Unzip regular files only, each under ``destination``, within the size bounds."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise ValueError(f"{len(members)} members, more than {MAX_MEMBERS}")
            destination.mkdir()
            written = 0
            for member in members:
                name = member.filename
                mode = member.external_attr >> 16
                if "\\" in name or name.startswith("/") or ".." in name.split("/"):
                    raise ValueError(f"member {name!r} has an unsafe name")
                path = Path(safe_join(str(destination), name))
                if member.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                # No file type at all (archives not made on Unix) is a plain file too.
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    raise ValueError(f"member {name!r} is a link or special file")
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, path.open("wb") as dst:
                    # Counted while writing: the sizes in the zip's directory may lie.
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES:
                            raise ValueError(f"unpacks to more than {MAX_UNPACKED_BYTES} bytes")
                        dst.write(chunk)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SimpleItkUnavailable(f"{uri} is not a usable SimpleITK archive: {error}") from error


def ensure_simpleitk(
    uri: str | None = None, *, cache_root: Path | str | None = None, client: Any = None
) -> Path | None:
    """Make ``import SimpleITK`` work; returns the directory added to sys.path, if any.

    ``uri`` defaults to ``$SIMPLEITK_ARCHIVE_S3_URI``; ``cache_root`` to the temp directory
    (/tmp on Lambda).
    """
    if importlib.util.find_spec(MODULE) is not None:
        return None
    with _lock:
        if importlib.util.find_spec(MODULE) is not None:
            return None
        uri = uri or os.environ.get(ARCHIVE_ENV)
        if not uri:
            raise SimpleItkUnavailable(
                f"SimpleITK is not installed and {ARCHIVE_ENV} is not set: install "
                "gantry[imaging], or set it to the s3:// URI of the SimpleITK archive the "
                "stack deploys"
            )
        directory = fetch_archive(uri, cache_root=cache_root, client=client)
        sys.path.insert(0, str(directory))
        importlib.invalidate_caches()
        if importlib.util.find_spec(MODULE) is None:
            sys.path.remove(str(directory))
            raise SimpleItkUnavailable(f"the archive {uri} holds no {MODULE} package")
        return directory
