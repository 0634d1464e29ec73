"""Image headers, conversion to .mha and Image records, on real files made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from gantry import imaging
from gantry.images import ImageType
from tests.images_support import write_dicom_series


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def volume() -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.float32))
    image.SetSpacing((0.5, 0.75, 3.0))
    return image


@pytest.mark.parametrize("name", ["v.mha", "v.mhd", "v.nii", "v.nii.gz", "v.nrrd"])
def test_volume_headers(tmp_path: Path, name: str) -> None:
    info = imaging.read_image_info(write(volume(), tmp_path / name))
    assert (info.width, info.height, info.depth, info.timepoints) == (6, 5, 4, None)
    assert info.shape == [4, 5, 6] == info.shape_without_color
    assert info.voxel_width_mm == pytest.approx(0.5)
    assert info.voxel_height_mm == pytest.approx(0.75)
    assert info.voxel_depth_mm == pytest.approx(3.0)
    assert info.color_space == "GRAY" and info.pixel_type == "32-bit float"


def test_rgb_png_and_jpg(tmp_path: Path) -> None:
    rgb = sitk.GetImageFromArray(np.zeros((10, 12, 3), dtype=np.uint8), isVector=True)
    for name in ("p.png", "p.jpg"):
        info = imaging.read_image_info(write(rgb, tmp_path / name))
        assert info.shape == [10, 12, 3] and info.depth is None and info.color_space == "RGB"


def test_four_dimensional_image(tmp_path: Path) -> None:
    image = sitk.Image([5, 4, 3, 2], sitk.sitkUInt8)  # x, y, z, t
    info = imaging.read_image_info(write(image, tmp_path / "t.mha"))
    assert info.shape == [2, 3, 4, 5] and (info.timepoints, info.depth) == (2, 3)


def test_tiff_headers(tmp_path: Path) -> None:
    path = tmp_path / "s.tiff"
    tifffile.imwrite(
        path,
        np.zeros((20, 30, 4), dtype=np.uint8),
        photometric="rgb",
        extrasamples=["unassalpha"],
        resolution=(254, 254),
        resolutionunit="INCH",
    )
    info = imaging.read_image_info(path)
    assert info.shape == [20, 30, 4] and info.color_space == "RGBA"
    assert info.voxel_width_mm == pytest.approx(0.1)
    gray = tmp_path / "g.tif"
    tifffile.imwrite(gray, np.zeros((3, 8, 9), dtype=np.uint16), photometric="minisblack")
    info = imaging.read_image_info(gray)
    assert info.shape == [3, 8, 9] and info.pixel_type == "16-bit unsigned integer"


@pytest.mark.parametrize("name", ["x.mha", "x.nii.gz", "x.nrrd", "x.tif", "x.png"])
def test_garbage_is_an_image_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(imaging.ImageError) as caught:
        imaging.read_image_info(path)
    assert str(tmp_path) not in str(caught.value)  # no handler paths shown to users


def test_unsupported_format(tmp_path: Path) -> None:
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(imaging.ImageError, match="not a supported image format"):
        imaging.read_image_info(tmp_path / "x.bmp")


def test_detached_data_outside_the_upload_is_refused(tmp_path: Path) -> None:
    (tmp_path / "n.nrrd").write_bytes(
        b"NRRD0004\ntype: uchar\ndimension: 2\nsizes: 2 2\nencoding: raw\n"
        b"data file: /etc/hostname\n\n"
    )
    with pytest.raises(imaging.ImageError, match="detached NRRD"):
        imaging.read_image_info(tmp_path / "n.nrrd")
    (tmp_path / "m.mhd").write_bytes(
        b"ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_UCHAR\n"
        b"ElementDataFile = ../../etc/hostname\n"
    )
    with pytest.raises(imaging.ImageError, match="next to the header"):
        imaging.read_image_info(tmp_path / "m.mhd")


def test_mhd_without_its_data_file(tmp_path: Path) -> None:
    write(volume(), tmp_path / "v.mhd")
    (tmp_path / "v.raw").unlink()
    with pytest.raises(imaging.ImageError, match="was not uploaded"):
        imaging.read_image_info(tmp_path / "v.mhd")


def test_convert_keeps_pixels_and_geometry(tmp_path: Path) -> None:
    source = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    source.SetSpacing((0.4, 0.5, 1.5))
    source.SetOrigin((1.0, 2.0, 3.0))
    write(source, tmp_path / "in.nii.gz")
    out = imaging.convert_to_mha([tmp_path / "in.nii.gz"], tmp_path / "out" / "in.mha")
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(source))
    assert back.GetSpacing() == pytest.approx(source.GetSpacing())
    assert b"CompressedData = True" in out.read_bytes()[:1000]


def test_dicom_series_is_converted(tmp_path: Path) -> None:
    paths = sorted(write_dicom_series(tmp_path / "dicom"))
    prepared = imaging.prepare_image(paths, tmp_path / "out")
    assert prepared.name.endswith(".mha") and prepared.info.shape == [3, 6, 7]
    assert prepared.info.voxel_depth_mm == pytest.approx(2.5)


def test_primary_file_rules(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mha", tmp_path / "b.mha"
    with pytest.raises(imaging.ImageError, match="expected one image file"):
        imaging.primary_file([a, b])
    header, data = tmp_path / "v.mhd", tmp_path / "v.zraw"
    assert imaging.primary_file([data, header]) == (header, [])


def test_prepare_keeps_stored_formats(tmp_path: Path) -> None:
    path = write(volume(), tmp_path / "keep.mha")
    prepared = imaging.prepare_image([path], tmp_path / "out")
    assert prepared.path == path and prepared.name == "keep.mha"


def test_image_from_is_deterministic(tmp_path: Path) -> None:
    info = imaging.read_image_info(write(volume(), tmp_path / "v.mha"))
    pk = "6f1c2a1e-8a43-4f55-9a3e-1d2b3c4d5e6f"
    kwargs = {"pk": pk, "name": "v.nii.gz", "owner": "alice", "key": f"values/images/{pk}/v.mha"}
    first = imaging.image_from(info, created="2024-01-01T00:00:00Z", **kwargs)
    again = imaging.image_from(info, created="2024-01-02T00:00:00Z", **kwargs)
    assert first.files == again.files
    assert first.files[0].image_type is ImageType.MHD and first.files[0].filename == "v.mha"
    assert first.shape == [4, 5, 6] and first.voxel_depth_mm == pytest.approx(3.0)
    tif = imaging.image_from(info, created="x", **{**kwargs, "key": "values/images/x/s.tif"})
    assert tif.files[0].image_type is ImageType.TIFF


def test_segment_values(tmp_path: Path) -> None:
    mask = sitk.GetImageFromArray(np.array([[0, 2], [2, 3]], dtype=np.uint8))
    assert imaging.segment_values(write(mask, tmp_path / "m.mha")) == [0, 2, 3]
    with pytest.raises(imaging.ImageError, match="integer"):
        imaging.segment_values(write(volume(), tmp_path / "f.mha"))
