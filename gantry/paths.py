"""Safe relative paths under /input and /output, and removing what an algorithm left there."""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import stat
from pathlib import Path

_UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)
_ALLOWED = re.compile(r"^[A-Za-z0-9._\-/]+$")
RESERVED_NAMES = frozenset({"inputs.json"})
MAX_RELATIVE_PATH = 255


def validate_relative_path(value: str, *, allow_nested_json: bool = False) -> str:
    """Return ``value`` if it is a safe, canonical relative path, else raise ValueError.

    ``allow_nested_json`` relaxes the socket-level rules (UUID, reserved names) for paths the
    platform itself builds, such as ``images/ct/<uuid>.mha`` in an invocation.
    """
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty relative path")
    if len(value) > MAX_RELATIVE_PATH:
        raise ValueError(f"must be at most {MAX_RELATIVE_PATH} characters")
    if value.startswith("/"):
        raise ValueError("must be relative, not start with '/'")
    if value.endswith("/"):
        raise ValueError("must not end with '/'")
    if not _ALLOWED.match(value):
        raise ValueError("may only contain letters, digits, '.', '_', '-' and '/'")
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("must not contain '..', '.' or empty segments")
    if posixpath.normpath(value) != value:
        raise ValueError("must already be in normal form")
    if not allow_nested_json:
        if _UUID.search(value):
            raise ValueError("must not contain a UUID")
        if value in RESERVED_NAMES:
            raise ValueError(f"'{value}' is reserved")
    return value


def safe_join(root: str, relative_path: str) -> str:
    """Join ``relative_path`` under ``root``; ValueError if the result escapes ``root``."""
    root_abs = posixpath.abspath(root)
    joined = posixpath.abspath(posixpath.join(root_abs, relative_path))
    if joined != root_abs and not joined.startswith(root_abs + "/"):
        raise ValueError(f"{relative_path!r} escapes {root!r}")
    return joined


def clear_folder(folder: Path) -> None:
    """Remove everything in ``folder`` (not a link itself), following no link, at any depth.

    An algorithm may nest folders deeper than a path may be long and than Python recurses
    (shutil.rmtree does before 3.13): the folders in each folder of ``folder`` are moved up
    into ``folder`` itself, so no more than two folders are ever open and no path is longer
    than one name. What is there when it starts is removed, as by rmtree: an entry created
    meanwhile in ``folder`` itself is left, one in a folder being removed is an OSError.
    """
    top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        pending = _entries(top)
        while pending:
            name, is_folder = pending.pop()
            if is_folder:
                pending.extend((moved, True) for moved in _empty_one_level(top, name))
                os.rmdir(name, dir_fd=top)
            else:
                os.unlink(name, dir_fd=top)
    finally:
        os.close(top)


def _entries(folder: int) -> list[tuple[str, bool]]:
    """The names in the open ``folder``, each with whether it is a folder (not a link)."""
    with os.scandir(folder) as found:
        return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in found]


def _empty_one_level(top: int, name: str) -> list[str]:
    """Unlink the files of ``top``'s folder ``name`` and move its folders up into ``top``;
    their new names there."""
    moved: list[str] = []
    inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
    try:
        for child, is_folder in _entries(inner):
            if not is_folder:
                os.unlink(child, dir_fd=inner)
                continue
            while True:
                free = f".removing-{secrets.token_hex(8)}"
                try:
                    os.stat(free, dir_fd=top, follow_symlinks=False)
                except FileNotFoundError:
                    break
            os.rename(child, free, src_dir_fd=inner, dst_dir_fd=top)
            moved.append(free)
    finally:
        os.close(inner)
    return moved


def remove_tree(path: Path) -> None:
    """Remove the folder ``path`` and everything in it (see ``clear_folder``); a link or a
    file at ``path`` is unlinked."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        clear_folder(path)
        os.rmdir(path)
    else:
        os.unlink(path)
