"""An S3 object read as a seekable binary file, by ranged GETs, never whole.

Readers of image formats (tifffile for TIFF headers and strips, the voxel checks of
``gantry.voxels``) seek and read a file; given this instead of a downloaded copy, they fetch
only the byte ranges they read, so what validation holds in memory does not grow with the
image. Small reads (tags, IFDs) are served from one cached block, so a header parsed tag by
tag costs a few requests, not one per tag; large reads are fetched as asked, uncached.
"""

from __future__ import annotations

import io
from typing import Any

BLOCK_BYTES = 64 * 1024


class S3File(io.RawIOBase):
    """The object ``key`` of ``bucket``, opened for reading. A missing object raises S3's
    ClientError here (HeadObject); ``requests`` and ``fetched`` count what was read."""

    def __init__(self, s3: Any, bucket: str, key: str, *, block: int = BLOCK_BYTES) -> None:
        super().__init__()
        self._s3, self._bucket, self._key = s3, bucket, key
        head = s3.head_object(Bucket=bucket, Key=key)
        self.size = int(head["ContentLength"])
        # The version read first is the one read throughout: a concurrent overwrite of the
        # key fails the read instead of mixing two files' bytes.
        self._etag = head.get("ETag")
        self.name = key
        self._block = block
        self._position = 0
        self._cached_at = -1
        self._cached = b""
        self.requests = 0
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` as far as the object goes (never a short read before its end:
        tifffile reads once and expects every byte it asked for)."""
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self.size - self._position)
        done = 0
        while done < wanted:
            start = self._position
            cached = self._cached_at <= start < self._cached_at + len(self._cached)
            if not cached and wanted - done < self._block:
                self._cached_at = start
                self._cached = self._get(start, min(self.size, start + self._block))
                cached = True
            if cached:
                offset = start - self._cached_at
                data = self._cached[offset : offset + wanted - done]
            else:
                data = self._get(start, start + wanted - done)
            view[done : done + len(data)] = data
            done += len(data)
            self._position += len(data)
        return done

    def _get(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object, by one ranged GET."""
        extra = {"IfMatch": self._etag} if self._etag else {}
        response = self._s3.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end - 1}", **extra
        )
        data: bytes = response["Body"].read()
        self.requests += 1
        self.fetched += len(data)
        if len(data) != end - start:
            raise OSError(f"S3 returned {len(data)} bytes for a range of {end - start}")
        return data
