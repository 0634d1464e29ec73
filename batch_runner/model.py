"""The algorithm's model: a tarball from S3, checked and extracted safely before it starts.

As grand-challenge's shim: the active model of the algorithm is extracted to
``/opt/ml/model`` before the algorithm runs, read-only to it. Extraction streams the tar
(any compression ``tarfile`` reads) and refuses, before writing the member:

- absolute names, ``..`` and backslashes or NUL in names;
- devices, fifos and other special members;
- symbolic links that are absolute or point outside the model, hard links to anything but
  an earlier file of the tarball, and any member below a link;
- more than ``max_model_members`` members or more than ``max_model_bytes`` in total (counted
  while writing, so a lying header does not help).

Files become 0644 (0755 if executable for the owner), folders 0755: no setuid bits, nothing
writable by the algorithm.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gantry.contract import InvocationModel

_CHUNK = 1024 * 1024
MAX_MODEL_BYTES = 64 * 1024**3
MAX_MODEL_MEMBERS = 100_000


class ModelError(Exception):
    """The model could not be set up; the message is safe to show to users."""


def _clean(name: str) -> str:
    if "\\" in name or "\x00" in name:
        raise ModelError(f"Model member {name!r} has an invalid name")
    if name.startswith("/"):
        raise ModelError(f"Model member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ModelError(f"Model member {name!r} is outside the model directory")
    return "/".join(parts)


def _below_link(name: str, links: set[str]) -> bool:
    parts = name.split("/")
    return any("/".join(parts[:i]) in links for i in range(1, len(parts)))


def extract_model(
    tarball: Path,
    target: Path,
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    max_members: int = MAX_MODEL_MEMBERS,
) -> int:
    """Extract ``tarball`` into the empty folder ``target``; returns the bytes written."""
    written = 0
    members = 0
    links: set[str] = set()
    files: set[str] = set()
    try:
        archive = tarfile.open(tarball, "r|*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as error:
        raise ModelError("The model is not a tar archive") from error
    with archive:
        try:
            for member in archive:
                members += 1
                if members > max_members:
                    raise ModelError(f"The model has more than {max_members} members")
                name = _clean(member.name)
                if not name:
                    continue
                if _below_link(name, links):
                    raise ModelError(f"Model member {member.name!r} is below a link")
                path = target / name
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    path.chmod(0o755)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    resolved = posixpath.normpath(
                        posixpath.join(posixpath.dirname(name), member.linkname)
                    )
                    if member.linkname.startswith("/") or resolved.split("/")[0] == "..":
                        raise ModelError(
                            f"Model member {member.name!r} links outside the model directory"
                        )
                    os.symlink(member.linkname, path)
                    links.add(name)
                elif member.islnk():
                    source = _clean(member.linkname)
                    if source not in files:
                        raise ModelError(f"Model member {member.name!r} is a link to no file")
                    shutil.copyfile(target / source, path, follow_symlinks=False)
                    written += (target / source).stat().st_size
                    files.add(name)
                elif member.isfile():
                    source_file = archive.extractfile(member)
                    assert source_file is not None
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        while chunk := source_file.read(_CHUNK):
                            written += len(chunk)
                            if written > max_bytes:
                                raise ModelError(
                                    f"The model is larger than the limit of {max_bytes} bytes"
                                )
                            out.write(chunk)
                    path.chmod(0o755 if member.mode & 0o100 else 0o644)
                    files.add(name)
                else:
                    raise ModelError(f"Model member {member.name!r} is not a file or folder")
        except FileExistsError as error:
            raise ModelError("The model has a member twice") from error
        except (tarfile.TarError, EOFError, OSError) as error:
            if isinstance(error, ModelError):
                raise
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
