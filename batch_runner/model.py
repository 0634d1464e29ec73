"""The algorithm's model: a tarball from S3, checked and extracted safely before it starts.

As grand-challenge's shim: the active model of the algorithm is extracted to
``/opt/ml/model`` before the algorithm runs, read-only to it. Extraction streams the tar
(any compression ``tarfile`` reads) and checks every member before writing it, with the same
rule the model's import applied (``gantry.tarballs``: no escapes, links outside, special
files, or more members or bytes than the limits); the byte count is checked again while
writing.

Files become 0644 (0755 if executable for the owner), folders 0755: no setuid bits, nothing
writable by the algorithm.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gantry.contract import InvocationModel
from gantry.tarballs import (
    MAX_MODEL_BYTES,
    MAX_MODEL_MEMBERS,
    ModelTarballRule,
    link_source,
    open_stream,
)
from gantry.tarballs import ModelTarballError as ModelError

_CHUNK = 1024 * 1024
# A new file, never through a link or over anything already there.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
__all__ = ["MAX_MODEL_BYTES", "MAX_MODEL_MEMBERS", "ModelError", "extract_model", "fetch_model"]


def extract_model(
    tarball: Path,
    target: Path,
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    max_members: int = MAX_MODEL_MEMBERS,
) -> int:
    """Extract ``tarball`` into the empty folder ``target``; returns the bytes written."""
    written = 0
    rule = ModelTarballRule(max_bytes=max_bytes, max_members=max_members)
    with tarball.open("rb") as stream, open_stream(stream) as archive:
        try:
            for member in archive:
                name = rule.check(member)
                if not name:
                    continue
                path = target / name
                if member.isdir():
                    # The rule refused a folder named like a link; never chmod through one.
                    if path.is_symlink():
                        raise ModelError(f"Model member {member.name!r} replaces a link")
                    path.mkdir(parents=True, exist_ok=True)
                    path.chmod(0o755)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, path)
                elif member.islnk():
                    source = target / link_source(member)
                    with (
                        open(os.open(source, os.O_RDONLY | os.O_NOFOLLOW), "rb") as copied,
                        open(os.open(path, _CREATE, 0o600), "wb") as out,
                    ):
                        shutil.copyfileobj(copied, out, _CHUNK)
                    written += source.stat().st_size
                    path.chmod(source.stat().st_mode & 0o777)
                else:
                    source_file = archive.extractfile(member)
                    assert source_file is not None
                    fd = os.open(path, _CREATE, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        while chunk := source_file.read(_CHUNK):
                            written += len(chunk)
                            if written > max_bytes:
                                raise ModelError(
                                    f"The model is larger than the limit of {max_bytes} bytes"
                                )
                            out.write(chunk)
                    path.chmod(0o755 if member.mode & 0o100 else 0o644)
        except FileExistsError as error:
            raise ModelError("The model has a member twice") from error
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ModelError("The model archive is damaged") from error
    return written


def fetch_model(client: Any, model: InvocationModel, target: Path) -> int:
    """Download the model, check its sha256, extract it into ``target`` (made 0755)."""
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    with tempfile.TemporaryDirectory(prefix="gantry-model-") as scratch:
        tarball = Path(scratch) / "model.tar"
        try:
            client.download_file(model.bucket_name, model.bucket_key, str(tarball))
        except (ClientError, BotoCoreError) as error:
            raise ModelError("The model could not be downloaded") from error
        if model.sha256:
            digest = hashlib.sha256()
            with tarball.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != model.sha256.removeprefix("sha256:"):
                raise ModelError("The model's checksum does not match the registered one")
        return extract_model(tarball, target)
