"""Distinct voxel values of segmentations read in bounded chunks, on real files made here."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from gantry import imaging, voxels


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch) -> None:
    # A few hundred bytes per read: every value type meets values cut across two reads.
    monkeypatch.setattr(voxels, "CHUNK_BYTES", 333)


DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]


def mask_of(dtype) -> np.ndarray:
    values = np.random.default_rng(0).integers(0, 3, size=(6, 10, 12)).astype(dtype)
    values[-1, -1, -1] = 7  # only in the last value read
    values[0, 0, 0] = -2 if np.dtype(dtype).kind == "i" else 9
    return values


def expected(dtype) -> list[int]:
    return sorted({0, 1, 2, 7, -2 if np.dtype(dtype).kind == "i" else 9})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compressed", [False, True])
def test_mha_values(tmp_path: Path, dtype, compressed: bool) -> None:
    path = tmp_path / "m.mha"
    sitk.WriteImage(sitk.GetImageFromArray(mask_of(dtype)), str(path), compressed)
    assert imaging.segment_values(path) == expected(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"contiguous": False, "rowsperstrip": 3},
        {"byteorder": ">"},
        {"compression": "zlib", "rowsperstrip": 4},
        {"tile": (16, 16), "compression": "zlib"},
    ],
)
def test_tiff_values(tmp_path: Path, dtype, layout) -> None:
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, mask_of(dtype), **layout)
    assert imaging.segment_values(path) == expected(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_written_page_by_page(tmp_path: Path, dtype, compression) -> None:
    """Pages with their tags between them: read page by page, strip by strip."""
    path = tmp_path / "p.tif"
    with tifffile.TiffWriter(path) as writer:
        for page in mask_of(dtype):
            writer.write(page, rowsperstrip=3, compression=compression, metadata=None)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dataoffset is None and len(tif.series[0].pages) == 6
    assert imaging.segment_values(path) == expected(dtype)


def test_tile_padding_is_not_voxels(tmp_path: Path) -> None:
    """Tiles reach past the image's edge; whatever the padding holds is not a voxel."""
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, np.ones((20, 20), dtype=np.uint8), tile=(16, 16))
    assert imaging.segment_values(path) == [1]


def test_big_endian_mha(tmp_path: Path) -> None:
    data = np.array([0, 1, 300, 2], dtype=">u2").tobytes()
    path = tmp_path / "b.mha"
    path.write_bytes(
        b"ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
        b"DimSize = 2 2\nElementType = MET_USHORT\nElementDataFile = LOCAL\n" + data
    )
    assert imaging.segment_values(path) == [0, 1, 2, 300]


def test_concatenated_zlib_streams(tmp_path: Path) -> None:
    first, second = bytes([0, 1] * 200), bytes([2, 3] * 200)
    path = tmp_path / "z.mha"
    path.write_bytes(
        b"NDims = 2\nDimSize = 40 20\nElementType = MET_UCHAR\nCompressedData = True\n"
        b"ElementDataFile = LOCAL\n" + zlib.compress(first) + zlib.compress(second)
    )
    assert imaging.segment_values(path) == [0, 1, 2, 3]


def test_only_the_smallest_values_are_kept(tmp_path: Path) -> None:
    for dtype in (np.uint16, np.int32):
        path = tmp_path / "many.mha"
        many = np.arange(5000, dtype=dtype)[::-1].reshape(50, 100)
        sitk.WriteImage(sitk.GetImageFromArray(many), str(path))
        assert imaging.segment_values(path, limit=65) == list(range(65))


def test_unreadable_data_is_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "c.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.uint8)), str(path), True)
    whole = path.read_bytes()
    path.write_bytes(whole[:-12] + b"x" * 12)
    with pytest.raises(imaging.ImageError, match="compressed voxel data is corrupt"):
        imaging.segment_values(path)
    path.write_bytes(whole[:-12])
    with pytest.raises(imaging.ImageError, match=r"holds \d+ of the 600 bytes"):
        imaging.segment_values(path)
    raw = tmp_path / "r.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.uint16)), str(raw))
    raw.write_bytes(raw.read_bytes()[:-1])
    with pytest.raises(imaging.ImageError, match=r"holds \d+ of the 1200 bytes"):
        imaging.segment_values(raw)


def test_a_segmentation_must_hold_integers(tmp_path: Path) -> None:
    path = tmp_path / "f.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4), np.float32)), str(path))
    with pytest.raises(imaging.ImageError, match="one integer component per voxel"):
        imaging.segment_values(path)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((4, 4, 3), np.uint8), photometric="rgb")
    with pytest.raises(imaging.ImageError, match="one integer component per voxel"):
        imaging.segment_values(rgb)
