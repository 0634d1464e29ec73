"""Streams of image archives and layers, read once from the start."""

from __future__ import annotations

import tarfile
from typing import IO, Any


class Prefixed:
    """A stream with the bytes already read from it put back in front: a reader looks at an
    archive's or a layer's first bytes (its compression) on a stream that cannot seek back."""

    def __init__(self, prefix: bytes, raw: IO[bytes] | Any) -> None:
        self.prefix, self.raw = prefix, raw

    def read(self, size: int = -1) -> bytes:
        prefix = self.prefix
        if prefix and 0 <= size <= len(prefix):
            self.prefix = prefix[size:]
            return prefix[:size]
        self.prefix = b""
        return prefix + self.raw.read(-1 if size < 0 else size - len(prefix))


def forget_members(archive: tarfile.TarFile) -> None:
    """Drop the members ``archive`` read so far. TarFile keeps every TarInfo it reads, even
    as a stream (for ``getmembers``, which nothing here calls): a pass over millions of
    members would otherwise hold them all in memory."""
    archive.members = []  # type: ignore[attr-defined]
