"""An S3 object read as a seekable binary file, by ranged GETs, never whole.

Readers of image formats (tifffile for TIFF headers and strips, the voxel checks of
``gantry.voxels``) seek and read a file; given this instead of a downloaded copy, they fetch
only the byte ranges they read, so what validation holds in memory does not grow with the
image. Small reads (tags, IFDs) are served from one cached block, so a header parsed tag by
tag costs a few requests, not one per tag; large reads are fetched as asked, uncached. The
block grows while reads move forward through the file (a TIFF's pages, each with its tags
before its pixels, are walked in one pass of a few MiB per request, not one request per
page) and shrinks back on a jump backwards. The 4 KiB pages that small reads touched are
kept (up to 16 MiB), so a second walk over the same tags (tifffile walks a TIFF's chain of
tag blocks once to find them and once more to parse them) is served without requests.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any

BLOCK_BYTES = 64 * 1024
MAX_BLOCK_BYTES = 4 * 1024 * 1024
PAGE_BYTES = 4096
MAX_PAGES = 4096  # 16 MiB of small reads' pages


class S3File(io.RawIOBase):
    """The object ``key`` of ``bucket``, opened for reading. A missing object raises S3's
    ClientError here (HeadObject); ``requests`` and ``fetched`` count what was read."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        key: str,
        *,
        block: int = BLOCK_BYTES,
        max_block: int = MAX_BLOCK_BYTES,
    ) -> None:
        super().__init__()
        self._s3, self._bucket, self._key = s3, bucket, key
        head = s3.head_object(Bucket=bucket, Key=key)
        self.size = int(head["ContentLength"])
        # The version read first is the one read throughout: a concurrent overwrite of the
        # key fails the read instead of mixing two files' bytes.
        self._etag = head.get("ETag")
        self.name = key
        # Whole pages: a block from a page boundary then holds only whole pages.
        self._base_block = self._block = max(-(-block // PAGE_BYTES), 2) * PAGE_BYTES
        self._max_block = max(self._base_block, max_block // PAGE_BYTES * PAGE_BYTES)
        self._position = 0
        self._cached_at = -1
        self._cached = b""
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._fetched_to = 0  # where the last GET ended: reads beyond it move forward
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
            small = wanted - done <= PAGE_BYTES
            data = self._from_pages(start, wanted - done) if small else None
            if data is None:
                data = self._read_at(start, wanted - done)
                if small:
                    self._keep_pages(start, len(data))
            view[done : done + len(data)] = data
            done += len(data)
            self._position += len(data)
        return done

    def _read_at(self, start: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``start``: from the cached block (fetched first for a
        small read), or one GET of their own for a large read."""
        cached = self._cached_at <= start < self._cached_at + len(self._cached)
        if not cached:
            forward = self.requests > 0 and start >= self._fetched_to
            self._block = min(2 * self._block, self._max_block) if forward else self._base_block
        if not cached and length < self._block:
            # From a page boundary, so the pages of the bytes read are whole in the block.
            self._cached_at = start - start % PAGE_BYTES
            end = min(self.size, self._cached_at + self._block)  # the rest: next round
            self._cached = self._get(self._cached_at, end)
            cached = True
        if not cached:
            return self._get(start, start + length)
        offset = start - self._cached_at
        return self._cached[offset : offset + length]

    def _keep_pages(self, start: int, length: int) -> None:
        first, last = start // PAGE_BYTES, (start + max(length, 1) - 1) // PAGE_BYTES
        for page in range(first, last + 1):
            begin = page * PAGE_BYTES - self._cached_at
            end = min(begin + PAGE_BYTES, self.size - self._cached_at)
            if begin < 0 or end > len(self._cached):
                continue  # not whole in the block
            self._pages[page] = self._cached[begin:end]
            self._pages.move_to_end(page)
            if len(self._pages) > MAX_PAGES:
                self._pages.popitem(last=False)

    def _from_pages(self, start: int, length: int) -> bytes | None:
        first, last = start // PAGE_BYTES, (start + length - 1) // PAGE_BYTES
        pages = [self._pages.get(page) for page in range(first, last + 1)]
        if any(page is None for page in pages):
            return None
        data = b"".join(pages)  # type: ignore[arg-type]
        offset = start - first * PAGE_BYTES
        return data[offset : offset + length] if len(data) >= offset + length else None

    def _get(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object, by one ranged GET."""
        extra = {"IfMatch": self._etag} if self._etag else {}
        response = self._s3.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end - 1}", **extra
        )
        data: bytes = response["Body"].read()
        self._fetched_to = end
        self.requests += 1
        self.fetched += len(data)
        if len(data) != end - start:
            raise OSError(f"S3 returned {len(data)} bytes for a range of {end - start}")
        return data
