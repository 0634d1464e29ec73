"""The distinct voxel values of a segmentation, read in bounded chunks.

A segmentation's every voxel must be one of its interface's overlay segments, so its voxels
are read: from any seekable binary file (a local file, or ``gantry.s3file.S3File`` over an
object in the bucket), a few MiB at a time, so memory stays flat in the image's size. Formats:

- MetaImage (.mha, ``ElementDataFile = LOCAL``): the data after the header, raw or zlib
  compressed (``CompressedData = True``), in the header's byte order;
- TIFF: uncompressed strips (or a series tifffile wrote contiguously) read as raw bytes in
  chunks; anything else (compressed strips, tiles) decoded by tifffile one strip or tile at a
  time, so memory is bounded by the largest strip.

numpy and tifffile are imported inside the functions: never on the API Lambdas' path.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

CHUNK_BYTES = 4 * 1024 * 1024
_BINCOUNT_SLICE = 256 * 1024
_HEADER_LIMIT = 64 * 1024
_TRUE = ("true", "1", "yes")
# Bytes per value of MetaIO's integer element types whose size is fixed on every platform.
_MET_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
}


class VoxelError(ValueError):
    """Voxel data that cannot be read; the message is for the user."""


class Distinct:
    """The ``limit`` smallest distinct values among the arrays given to ``add``; bounded
    memory whatever the number of voxels or of distinct values."""

    def __init__(self, dtype: Any, limit: int) -> None:
        import numpy as np

        self._dtype = np.dtype(dtype).newbyteorder("=")
        self._limit = limit
        # 8- and 16-bit values: one flag per possible bit pattern, faster than sorting.
        size = self._dtype.itemsize
        self._seen = np.zeros(256**size, dtype=bool) if size <= 2 else None
        self._values = np.empty(0, dtype=self._dtype)

    def add(self, array: Any) -> None:
        import numpy as np

        array = np.asarray(array).astype(self._dtype, copy=False).ravel()
        if array.size == 0:
            return
        if self._seen is not None:
            patterns = array.view(np.uint8 if self._dtype.itemsize == 1 else np.uint16)
            # bincount counts in 8-byte integers: in slices, so its copy stays small.
            for start in range(0, patterns.size, _BINCOUNT_SLICE):
                counts = np.bincount(
                    patterns[start : start + _BINCOUNT_SLICE], minlength=self._seen.size
                )
                self._seen |= counts.astype(bool)
        else:
            values = np.union1d(self._values, np.unique(array))
            self._values = values[: self._limit]

    def values(self) -> list[int]:
        import numpy as np

        if self._seen is not None:
            unsigned = np.uint8 if self._dtype.itemsize == 1 else np.uint16
            patterns = np.flatnonzero(self._seen).astype(unsigned)
            found = np.sort(patterns.view(self._dtype))
        else:
            found = self._values
        return [int(v) for v in found[: self._limit]]


# --- MetaImage ---------------------------------------------------------------------------------


def mha_values(handle: BinaryIO, *, dtype: Any, count: int, limit: int) -> list[int]:
    """Distinct values (the ``limit`` smallest) of the ``count`` voxels of type ``dtype``
    (numpy's, native order) stored in the .mha ``handle`` after its header."""
    import numpy as np

    handle.seek(0)
    head = handle.read(_HEADER_LIMIT)
    fields, data_at = mha_header(head)
    if fields.get("HeaderSize", "0").strip() not in ("0", ""):
        raise VoxelError("a HeaderSize in a .mha file with its own data is not supported")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False"))
    order = ">" if msb.strip().lower() in _TRUE else "<"
    stored = np.dtype(dtype).newbyteorder(order)
    expected = count * stored.itemsize
    element = _MET_SIZES.get(fields.get("ElementType", ""))
    if element is not None and element != stored.itemsize:
        raise VoxelError(f"ElementType {fields['ElementType']} does not match the image's header")
    handle.seek(data_at)
    if fields.get("CompressedData", "False").strip().lower() in _TRUE:
        raw = _inflate(_chunks(handle, None))
    else:
        raw = _chunks(handle, expected)
    distinct = Distinct(dtype, limit)
    got = 0
    for chunk in _aligned(_exactly(raw, expected), stored.itemsize):
        distinct.add(np.frombuffer(chunk, dtype=stored))
        got += len(chunk)
    if got < expected:
        raise VoxelError(f"the file holds {got} of the {expected} bytes of its voxel data")
    return distinct.values()


def mha_header(head: bytes) -> tuple[dict[str, str], int]:
    """The header's fields and the offset of the data after it."""
    fields: dict[str, str] = {}
    start = 0
    while start < len(head):
        end = head.find(b"\n", start)
        if end < 0:
            break
        name, _, value = head[start:end].decode("latin-1").partition("=")
        fields[name.strip()] = value.strip()
        if name.strip() == "ElementDataFile":
            return fields, end + 1
        start = end + 1
    raise VoxelError("not a MetaImage header (no ElementDataFile)")


def _chunks(handle: Any, length: int | None) -> Iterator[bytes]:
    """Up to ``length`` bytes (None: to the end) from the handle's position, in chunks."""
    left = length
    while left is None or left > 0:
        chunk = handle.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


def _inflate(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """zlib streams (one, or several one after the other) inflated, each piece at most
    CHUNK_BYTES: a small compressed chunk of a constant mask inflates a thousandfold."""
    inflater = zlib.decompressobj()
    try:
        for chunk in chunks:
            data = chunk
            while data:
                yield inflater.decompress(data, CHUNK_BYTES)
                data = inflater.unconsumed_tail
                if inflater.eof and inflater.unused_data:
                    data = inflater.unused_data
                    inflater = zlib.decompressobj()
        while not inflater.eof:
            piece = inflater.decompress(b"", CHUNK_BYTES)
            if not piece:
                break
            yield piece
    except zlib.error as error:
        raise VoxelError(f"the compressed voxel data is corrupt ({error})") from None


def _exactly(chunks: Iterator[bytes], length: int) -> Iterator[bytes]:
    """At most ``length`` bytes of the chunks; what follows is not read (as ITK ignores it)."""
    left = length
    for chunk in chunks:
        yield chunk[:left]
        left -= len(chunk)
        if left <= 0:
            return


def _aligned(chunks: Iterator[bytes], itemsize: int) -> Iterator[bytes]:
    """The chunks cut at whole values (a value may straddle two reads)."""
    rest = b""
    for chunk in chunks:
        if rest:
            chunk = rest + chunk
        cut = len(chunk) - len(chunk) % itemsize
        rest = chunk[cut:]
        if cut:
            yield chunk[:cut]


# --- TIFF --------------------------------------------------------------------------------------


def tiff_values(tif: Any, *, limit: int) -> list[int]:
    """Distinct values (the ``limit`` smallest) of the first series of the open
    ``tifffile.TiffFile`` ``tif`` (the one ``imaging`` reads the header facts of)."""
    import numpy as np
    import tifffile

    handle = tif.filehandle
    try:
        series = tif.series[0]
        distinct = Distinct(series.dtype, limit)
        stored = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        if series.dataoffset is not None:
            # Contiguous, uncompressed: one run of bytes.
            handle.seek(series.dataoffset)
            _raw(handle, series.size * stored.itemsize, stored, distinct)
            return distinct.values()
        strips: list[tuple[int, int]] = []
        for page in series.pages:
            if page is None:
                raise VoxelError("a page of the image is missing")
            if _is_raw(page.keyframe, stored):
                strips.extend(_raw_strips(page, stored))
            else:
                _decoded(page, distinct)
        # In file order, strips that follow each other joined: a few large forward reads.
        for offset, count in _runs(sorted(strips)):
            handle.seek(offset)
            _raw(handle, count, stored, distinct)
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as error:
        if isinstance(error, VoxelError):
            raise
        raise VoxelError(f"could not read the TIFF voxel data ({error})") from None
    return distinct.values()


def _is_raw(keyframe: Any, stored: Any) -> bool:
    """Strips of plain values, read as bytes (no decoder, no strip held whole)."""
    return bool(
        keyframe.compression == 1
        and not keyframe.is_tiled
        and keyframe.imagedepth == 1
        and keyframe.bitspersample == stored.itemsize * 8
    )


def _raw_strips(page: Any, stored: Any) -> Iterator[tuple[int, int]]:
    """(offset, bytes) of each strip's voxels; bytes past a strip's rows are not voxels."""
    keyframe = page.keyframe
    row = keyframe.imagewidth * keyframe.samplesperpixel * stored.itemsize
    per_strip = keyframe.rowsperstrip or keyframe.imagelength
    rows_left = keyframe.imagelength
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
        if rows_left <= 0:
            return
        rows = min(per_strip, rows_left)
        if count < rows * row:
            raise VoxelError(f"a strip holds {count} of the {rows * row} bytes of its rows")
        yield offset, rows * row
        rows_left -= rows
    if rows_left > 0:
        raise VoxelError(f"a page lacks the strips of its last {rows_left} rows")


def _decoded(page: Any, distinct: Distinct) -> None:
    """Compressed strips or tiles, decoded by tifffile one at a time."""
    keyframe = page.keyframe
    length, width = keyframe.imagelength, keyframe.imagewidth
    for segment, index, _shape in page.segments(maxworkers=1, buffersize=CHUNK_BYTES):
        if segment is None:
            raise VoxelError("a strip or tile of the image is missing")
        # Tiles reach past the image's edges: the padding is not voxels.
        y, x = index[2], index[3]
        distinct.add(segment[:, : length - y, : width - x])


def _runs(strips: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Strips (sorted by offset) that follow each other in the file joined into runs."""
    start, length = 0, 0
    for offset, count in strips:
        if length and offset == start + length:
            length += count
            continue
        if length:
            yield start, length
        start, length = offset, count
    if length:
        yield start, length


def _raw(handle: Any, length: int, stored: Any, distinct: Distinct) -> int:
    import numpy as np

    got = 0
    for chunk in _aligned(_chunks(handle, length), stored.itemsize):
        distinct.add(np.frombuffer(chunk, dtype=stored))
        got += len(chunk)
    if got < length:
        raise VoxelError(f"the file holds {got} of the {length} bytes of its voxel data")
    return got
