"""An image's root filesystem seen from outside: paths resolved as they would be inside it.

The runner never executes or imports anything of the image; it only reads its files: to find
the algorithm's command on the image's PATH, its USER in the image's ``/etc/passwd`` and
``/etc/group``, and whether a folder exists. Links are followed inside the root (an absolute
target starts again at the root, ``..`` stops at it), as the kernel does after ``chroot``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

_MAX_LINKS = 40
# /etc/passwd and /etc/group are read whole; real ones are kilobytes. A layer of a few
# megabytes of gzip can hold gigabytes of them, which the runner (on the host) would read.
MAX_ACCOUNT_FILE_BYTES = 16 * 1024 * 1024
# Docker's PATH when an image sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def resolve(root: Path, path: str) -> Path | None:
    """The host path of ``path`` inside ``root``, links resolved inside it; None if missing."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            info = os.lstat(candidate)
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > _MAX_LINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def which(root: Path, name: str, path_env: str | None, cwd: str = "/") -> Path | None:
    """``name`` as execvp would find it inside ``root`` (host path), or None."""
    if "/" in name:
        inside = name if name.startswith("/") else f"{cwd.rstrip('/')}/{name}"
        return resolve(root, inside)
    for directory in (path_env or DEFAULT_PATH).split(":"):
        found = resolve(root, f"{directory or '.'}/{name}")
        if found is not None and found.is_file():
            return found
    return None


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


class AccountFileTooLarge(ValueError):
    """The image's /etc/passwd or /etc/group is too large to be one."""


def _lines(root: Path, path: str) -> list[list[str]]:
    found = resolve(root, path)
    if found is None or not found.is_file():
        return []
    if found.stat().st_size > MAX_ACCOUNT_FILE_BYTES:
        raise AccountFileTooLarge(
            f"The image's {path} is larger than {MAX_ACCOUNT_FILE_BYTES // 1024**2} MiB"
        )
    with found.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n").split(":") for line in handle if not line.startswith("#")]


def passwd(root: Path) -> list[PasswdEntry]:
    entries: list[PasswdEntry] = []
    for fields in _lines(root, "/etc/passwd"):
        if len(fields) >= 6 and fields[2].isdigit() and fields[3].isdigit():
            entries.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5]))
    return entries


def groups(root: Path) -> dict[str, int]:
    return {
        fields[0]: int(fields[2])
        for fields in _lines(root, "/etc/group")
        if len(fields) >= 3 and fields[2].isdigit()
    }
