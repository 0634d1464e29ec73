"""Streams of image archives and layers, read once from the start."""

from __future__ import annotations

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
