"""Safe relative paths under /input and /output."""

from __future__ import annotations

import posixpath
import re

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
