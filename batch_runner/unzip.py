"""Safe extraction of zip inputs: no escapes, no links, no bombs.

Checks happen on the central directory before anything is written, and the byte count is
enforced again while streaming because a member's declared size can lie.
"""

from __future__ import annotations

import os
import posixpath
import stat
import zipfile
from pathlib import Path

from batch_runner.config import Limits
from gantry.paths import safe_join

_COPY_CHUNK = 1024 * 1024


class UnsafeZipError(Exception):
    """The archive cannot be extracted safely; the message is safe to show to users."""


def _check_name(name: str) -> str:
    if "\\" in name or "\x00" in name:
        raise UnsafeZipError(f"Zip member {name!r} has an invalid name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeZipError(f"Zip member {name!r} has an absolute path")
    parts = [p for p in name.rstrip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeZipError(f"Zip member {name!r} is outside the target directory")
    return posixpath.join(*parts)


def check_members(archive: zipfile.ZipFile, limits: Limits) -> list[tuple[zipfile.ZipInfo, str]]:
    infos = archive.infolist()
    if len(infos) > limits.max_zip_members:
        raise UnsafeZipError(f"Zip file has more than {limits.max_zip_members} members")
    total = 0
    checked: list[tuple[zipfile.ZipInfo, str]] = []
    for info in infos:
        name = _check_name(info.filename)
        mode = info.external_attr >> 16
        # The file type is only present when the archive was made on Unix; 0 is a plain entry.
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise UnsafeZipError(f"Zip member {info.filename!r} is {kind}")
        total += info.file_size
        if total > limits.max_unzipped_bytes:
            raise UnsafeZipError(
                f"Zip file contents exceed the limit of {limits.max_unzipped_bytes} bytes"
            )
        if (
            info.file_size >= limits.ratio_check_min_bytes
            and info.file_size / max(info.compress_size, 1) > limits.max_compression_ratio
        ):
            raise UnsafeZipError(f"Zip member {info.filename!r} has a suspicious compression ratio")
        checked.append((info, name))
    return checked


def safe_extract(src: Path, dest: Path, limits: Limits) -> list[Path]:
    """Extract ``src`` under ``dest``; returns the files written. Raises UnsafeZipError."""
    try:
        archive = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as error:
        raise UnsafeZipError("Input zip file could not be extracted") from error
    written: list[Path] = []
    budget = limits.max_unzipped_bytes
    with archive:
        for info, name in check_members(archive, limits):
            target = Path(safe_join(str(dest), name))
            left = info.file_size
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # O_EXCL|O_NOFOLLOW: a duplicate member never overwrites or follows anything.
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out, archive.open(info) as member:
                    while chunk := member.read(_COPY_CHUNK):
                        left -= len(chunk)
                        budget -= len(chunk)
                        if left < 0 or budget < 0:
                            raise UnsafeZipError(
                                f"Zip member {info.filename!r} is larger than it declares"
                            )
                        out.write(chunk)
            except FileExistsError as error:
                raise UnsafeZipError(f"Zip member {info.filename!r} is duplicated") from error
            except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
                raise UnsafeZipError("Input zip file could not be extracted") from error
            except OSError as error:
                # A member inside what another member made a file ('a', then 'a/b'), or a
                # name longer than the file system allows: the archive's fault, not the
                # runner's.
                raise UnsafeZipError(
                    f"Zip member {info.filename!r} could not be written ({error.strerror})"
                ) from error
            written.append(target)
    return written
