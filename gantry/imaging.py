"""Medical images on disk: read header facts, convert to the stored formats, build Image records.

Grand-challenge stores images as .mha (MetaImage, compressed) or .tif; everything else a user
uploads (.nii/.nii.gz, .nrrd, .mhd+.raw/.zraw, DICOM series, .png, .jpg) is converted to .mha.
SimpleITK and tifffile are imported inside the functions: this module is used by the upload
handler and the job callback, never on the API Lambdas' cold path.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gantry.images import Image, ImageFile, ImageType
from gantry.sitk_loader import ensure_simpleitk

# Kept as they are: grand-challenge's stored formats.
STORED_SUFFIXES = (".mha", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# Read by SimpleITK and converted to .mha; the ImageIO is pinned per suffix so a file is never
# read by a reader its name did not ask for.
_SITK_IO = {
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".nii": "NiftiImageIO",
    ".nii.gz": "NiftiImageIO",
    ".nrrd": "NrrdImageIO",
    ".dcm": "GDCMImageIO",
    ".png": "PNGImageIO",
    ".jpg": "JPEGImageIO",
    ".jpeg": "JPEGImageIO",
}
# Sidecar data files of a .mhd header: never an image on their own.
DATA_SUFFIXES = (".raw", ".zraw")
# Conversion reads the whole image into memory: refuse what a handler cannot hold.
MAX_CONVERT_BYTES = 4 * 1024**3
_HEADER_BYTES = 64 * 1024

_ITK_PREFIX = re.compile(r"ITK ERROR: \w+\(0x[0-9a-f]+\):\s*")
_COLOR_SPACES = {1: "GRAY", 3: "RGB", 4: "RGBA"}
_PIXEL_BYTES = {
    "8-bit unsigned integer": 1,
    "8-bit signed integer": 1,
    "16-bit unsigned integer": 2,
    "16-bit signed integer": 2,
    "32-bit unsigned integer": 4,
    "32-bit signed integer": 4,
    "64-bit unsigned integer": 8,
    "64-bit signed integer": 8,
    "32-bit float": 4,
    "64-bit float": 8,
}


class ImageError(ValueError):
    """A file that is not a readable (or acceptable) image; the message is for the user."""


@dataclass(frozen=True)
class ImageInfo:
    """Header facts, in grand-challenge's terms (shape is [t?, z?, y, x, c?])."""

    width: int
    height: int
    depth: int | None
    timepoints: int | None
    components: int
    color_space: str
    pixel_type: str
    spacing: tuple[float, ...]
    window_center: float | None = None
    window_width: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def shape_without_color(self) -> list[int]:
        dims = [self.timepoints, self.depth, self.height, self.width]
        return [d for d in dims if d is not None]

    @property
    def shape(self) -> list[int]:
        extra = [self.components] if self.components > 1 else []
        return self.shape_without_color + extra

    @property
    def voxel_width_mm(self) -> float | None:
        return self.spacing[0] if len(self.spacing) > 0 else None

    @property
    def voxel_height_mm(self) -> float | None:
        return self.spacing[1] if len(self.spacing) > 1 else None

    @property
    def voxel_depth_mm(self) -> float | None:
        return self.spacing[2] if len(self.spacing) > 2 and self.depth is not None else None

    @property
    def voxel_count(self) -> int:
        count = self.components
        for d in self.shape_without_color:
            count *= d
        return count


def suffix_of(path: Path | str) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


# --- headers -----------------------------------------------------------------------------------


def read_image_info(path: Path | str) -> ImageInfo:
    """Header facts of one image file, without reading the pixel data."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in TIFF_SUFFIXES:
        return _tiff_info(path)
    if suffix not in _SITK_IO:
        raise ImageError(f"'{suffix or path.name}' is not a supported image format")
    _check_detached_data(path, suffix)
    ensure_simpleitk()
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO(_SITK_IO[suffix])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        message = _sitk_message(error, path)
        raise ImageError(f"could not read the image header ({message})") from None
    size = [int(s) for s in reader.GetSize()]
    metadata = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    return _info(
        size,
        spacing=tuple(float(s) for s in reader.GetSpacing()),
        components=int(reader.GetNumberOfComponents()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        metadata=metadata,
    )


def _info(
    size: list[int],
    *,
    spacing: tuple[float, ...],
    components: int,
    pixel_type: str,
    metadata: dict[str, str],
    color_space: str | None = None,
) -> ImageInfo:
    if len(size) < 2 or any(s < 1 for s in size):
        raise ImageError(f"an image needs at least two dimensions of size >= 1, got {size}")
    if len(size) > 4:
        raise ImageError(f"images with {len(size)} dimensions are not supported (at most 4)")
    # A third axis of size 1 is a 2D image (PNG read as 3D, single-slice volumes).
    depth = size[2] if len(size) >= 3 and not (len(size) == 3 and size[2] == 1) else None
    return ImageInfo(
        width=size[0],
        height=size[1],
        depth=depth,
        timepoints=size[3] if len(size) == 4 else None,
        components=components,
        color_space=color_space or _COLOR_SPACES.get(components, "GRAY"),
        pixel_type=pixel_type,
        spacing=spacing,
        window_center=_float(metadata.get("WindowCenter")),
        window_width=_float(metadata.get("WindowWidth")),
        metadata=metadata,
    )


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.split("\\")[0])  # DICOM may hold several: take the first
    except ValueError:
        return None


def _sitk_message(error: RuntimeError, path: Path) -> str:
    """ITK's message without C++ noise, object addresses or the handler's scratch paths."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if not line.startswith("itk::")), "")
    detail = detail.removeprefix("Description:").strip()
    detail = _ITK_PREFIX.sub("", detail).replace(str(path.parent) + "/", "").strip()
    return detail or "unknown format"


def _check_detached_data(path: Path, suffix: str) -> None:
    """Headers may point at pixel data elsewhere on disk (ElementDataFile, 'data file'): a
    crafted upload could read any file of the handler into an image. Allow only the image's
    own file (.mha) or a plain sibling file (.mhd)."""
    if suffix not in (".mha", ".mhd", ".nrrd"):
        return
    with path.open("rb") as handle:
        head = handle.read(_HEADER_BYTES)
    if suffix == ".nrrd":
        header = head.split(b"\n\n", 1)[0].decode("latin-1").lower()
        for line in header.splitlines():
            if line.replace(" ", "").startswith(("datafile:", "data_file:")):
                raise ImageError("detached NRRD data files are not supported; upload one .nrrd")
        return
    target = None
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "ElementDataFile":
            target = value.strip()
            break
    if target is None:
        raise ImageError("not a MetaImage header (no ElementDataFile)")
    if suffix == ".mha":
        if target != "LOCAL":
            raise ImageError(".mha files must hold their own data (ElementDataFile = LOCAL)")
        return
    if target in ("LOCAL", "LIST") or "/" in target or "\\" in target or target.startswith(".."):
        raise ImageError(
            f"ElementDataFile must name a data file next to the header, not {target!r}"
        )
    if not (path.parent / target).is_file():
        raise ImageError(f"the data file '{target}' named by '{path.name}' was not uploaded")


def _tiff_info(path: Path) -> ImageInfo:
    return tiff_info(path)


def tiff_info(source: Path | BinaryIO) -> ImageInfo:
    """Header facts of a TIFF file or an open seekable file (``s3file.S3File``): its tags
    and first series, never its pixel data."""
    return _read_tiff(source, segment_limit=None)[0]


def tiff_segmentation(source: Path | BinaryIO, *, limit: int = 65) -> tuple[ImageInfo, list[int]]:
    """Header facts and distinct voxel values (the ``limit`` smallest) of a TIFF
    segmentation, from one reading of its tags; the pixels strip by strip or tile by tile."""
    info, values = _read_tiff(source, segment_limit=limit)
    assert values is not None
    return info, values


def _read_tiff(
    source: Path | BinaryIO, *, segment_limit: int | None
) -> tuple[ImageInfo, list[int] | None]:
    import tifffile

    from gantry import voxels

    size = _size_of(source)
    if not isinstance(source, Path):
        source.seek(0)  # tifffile takes the position as the file's start
    try:
        with tifffile.TiffFile(source) as tif:
            series = tif.series[0]
            page = tif.pages.first
            axes = series.axes
            shape = dict(zip(axes, series.shape, strict=True))
            samples = int(page.samplesperpixel)
            photometric = getattr(page.photometric, "name", str(page.photometric))
            spacing = _tiff_spacing(page)
            dtype = _dtype_label(series.dtype)
            info = _tiff_facts(axes, shape, samples, photometric, spacing, dtype)
            problem = _tiff_data_problem(series, size)
            if problem:
                raise ImageError(problem)
            values = None
            if segment_limit is not None:
                _segmentation_dtype(info)
                values = voxels.tiff_values(tif, limit=segment_limit)
    except ImageError:
        raise
    except voxels.VoxelError as error:
        raise ImageError(f"could not read the image data ({error})") from None
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as error:
        raise ImageError(f"could not read the TIFF header ({error})") from None
    return info, values


def _size_of(source: Path | BinaryIO) -> int:
    if isinstance(source, Path):
        return source.stat().st_size
    return int(source.seek(0, 2))


def _tiff_data_problem(series: Any, size: int) -> str | None:
    """Why the pages of a TIFF series cannot hold the image its tags declare (strips or tiles
    missing or past the end of the file, uncompressed strips shorter than their pixels), or
    None. From the tags alone: a few bytes declaring a gigapixel image are refused here, not
    by whoever reads the pixels."""
    for page in series.pages:
        if page is None:
            return "a page of the image is missing"
        offsets, counts = page.dataoffsets, page.databytecounts
        if not offsets or len(offsets) != len(counts) or not any(counts):
            return "a page of the image has no pixel data"
        if any(o + c > size for o, c in zip(offsets, counts, strict=True)):
            return "the pixel data of a page lies beyond the end of the file"
        keyframe = page.keyframe
        if keyframe.compression == 1:
            bits = keyframe.bitspersample * keyframe.samplesperpixel
            expected = -(-keyframe.imagewidth * bits // 8) * keyframe.imagelength
            expected *= keyframe.imagedepth
            if sum(counts) < expected:
                return (
                    f"a page holds {sum(counts)} of the {expected} bytes of pixels its tags declare"
                )
    return None


def _tiff_facts(
    axes: str,
    shape: dict[str, int],
    samples: int,
    photometric: str,
    spacing: tuple[float, ...],
    dtype: str,
) -> ImageInfo:
    width, height = shape.get("X"), shape.get("Y")
    if not width or not height:
        raise ImageError(f"a TIFF image needs X and Y axes, got '{axes}'")
    # Planes beyond X/Y/S (Z, I, Q, ...) make a volume.
    depth = 1
    for axis, length in shape.items():
        if axis not in "XYS":
            depth *= int(length)
    color_space = {
        "RGB": "RGBA" if samples == 4 else "RGB",
        "YCBCR": "YCBCR",
    }.get(photometric, "GRAY")
    size = [int(width), int(height)] + ([depth] if depth > 1 else [])
    return _info(
        size,
        spacing=spacing,
        components=samples,
        pixel_type=dtype,
        metadata={},
        color_space=color_space,
    )


def _dtype_label(dtype: Any) -> str:
    """numpy's dtype in SimpleITK's words, so both readers describe pixels alike."""
    bits = dtype.itemsize * 8
    if dtype.kind == "f":
        return f"{bits}-bit float"
    if dtype.kind in "ui":
        return f"{bits}-bit {'unsigned' if dtype.kind == 'u' else 'signed'} integer"
    return str(dtype)


def _tiff_spacing(page: Any) -> tuple[float, ...]:
    tags = page.tags
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    mm_per_unit = {2: 25.4, 3: 10.0}.get(unit)
    spacing = []
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name)
        if tag is None or mm_per_unit is None:
            return ()
        numerator, denominator = tag.value
        if not numerator or not denominator:
            return ()
        spacing.append(mm_per_unit * denominator / numerator)
    return tuple(spacing)


# --- conversion ----------------------------------------------------------------------------------


def primary_file(paths: list[Path]) -> tuple[Path, list[Path]]:
    """The file that is the image among an upload's files, and its DICOM series if it is one.

    One image per input: a single file, a .mhd with its .raw/.zraw, or a DICOM series.
    """
    if not paths:
        raise ImageError("no files were uploaded")
    suffixes = [suffix_of(p) for p in paths]
    if all(s == ".dcm" for s in suffixes):
        return sorted(paths)[0], sorted(paths)
    headers = [p for p, s in zip(paths, suffixes, strict=True) if s == ".mhd"]
    if headers:
        others = [
            p for p, s in zip(paths, suffixes, strict=True) if s not in (".mhd", *DATA_SUFFIXES)
        ]
        if len(headers) > 1 or others:
            raise ImageError("upload one .mhd header with its data file, and nothing else")
        return headers[0], []
    images = [p for p, s in zip(paths, suffixes, strict=True) if s not in DATA_SUFFIXES]
    if len(images) != 1:
        names = ", ".join(p.name for p in paths)
        raise ImageError(f"expected one image file, got {len(paths)} files ({names})")
    return images[0], []


def convert_to_mha(src_paths: list[Path], dst_path: Path) -> Path:
    """Read the image (a file, .mhd+data, or a DICOM series) and write a compressed .mha."""
    ensure_simpleitk()
    import SimpleITK as sitk

    primary, series = primary_file([Path(p) for p in src_paths])
    if len(series) > 1:
        image = _read_dicom_series(series)
    else:
        info = read_image_info(primary)
        _check_convertible(info)
        reader = sitk.ImageFileReader()
        reader.SetImageIO(_SITK_IO[suffix_of(primary)])
        reader.SetFileName(str(primary))
        try:
            image = reader.Execute()
        except RuntimeError as error:
            message = _sitk_message(error, primary)
            raise ImageError(f"could not read the image data ({message})") from None
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(dst_path), useCompression=True)
    return dst_path


def _read_dicom_series(paths: list[Path]) -> Any:
    ensure_simpleitk()
    import SimpleITK as sitk

    directory = paths[0].parent
    for path in paths:
        read_image_info(path)  # each slice must be a readable DICOM file
    series_ids = tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)) or ())
    if len(series_ids) != 1:
        raise ImageError(f"expected one DICOM series, found {len(series_ids)}")
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), series_ids[0])
    if len(names) != len(paths):
        raise ImageError(
            f"{len(paths) - len(names)} of the {len(paths)} DICOM files are not in the series"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        return reader.Execute()
    except RuntimeError as error:
        message = _sitk_message(error, directory / "x")
        raise ImageError(f"could not read the DICOM series ({message})") from None


def _check_convertible(info: ImageInfo) -> None:
    bytes_per_value = _PIXEL_BYTES.get(info.pixel_type, 8)
    if info.voxel_count * bytes_per_value > MAX_CONVERT_BYTES:
        raise ImageError(
            f"the image is too large to convert ({info.shape}); upload it as .mha or .tif"
        )


@dataclass(frozen=True)
class Prepared:
    """An image ready to store: the file to upload, its stored name and its header facts."""

    path: Path
    name: str
    info: ImageInfo


def prepare_image(src_paths: list[Path], work_dir: Path) -> Prepared:
    """Check an uploaded image and give the file to store: .mha/.tif as they are, every other
    format converted to .mha (named after the upload)."""
    primary, series = primary_file([Path(p) for p in src_paths])
    suffix = suffix_of(primary)
    if suffix in STORED_SUFFIXES and not series:
        info = read_image_info(primary)
        if suffix == ".mha":
            with primary.open("rb") as handle:
                head = handle.read(_HEADER_BYTES)
            problem = mha_data_problem(head, primary.stat().st_size, info)
            if problem:
                raise ImageError(problem)
        return Prepared(path=primary, name=primary.name, info=info)
    stem = primary.name[: -len(suffix)] if suffix else primary.name
    name = f"{stem or 'image'}.mha"
    converted = convert_to_mha(src_paths, work_dir / name)
    return Prepared(path=converted, name=name, info=read_image_info(converted))


def image_type_of(name: str) -> ImageType:
    return ImageType.TIFF if suffix_of(name) in TIFF_SUFFIXES else ImageType.MHD


def image_from(
    info: ImageInfo,
    *,
    pk: str,
    name: str,
    owner: str,
    key: str,
    created: str,
    filename: str | None = None,
) -> Image:
    """The Image record of one stored file (``key``) with the header facts users filter on."""
    filename = filename or key.rsplit("/", 1)[-1]
    return Image(
        pk=pk,
        name=name,
        owner=owner,
        created=created,
        # Deterministic file pk: importing the same image again gives the same record.
        files=[
            ImageFile(
                pk=str(uuid.uuid5(uuid.UUID(pk), filename)) if _is_uuid(pk) else pk,
                key=key,
                image_type=image_type_of(filename),
                filename=filename,
            )
        ],
        width=info.width,
        height=info.height,
        depth=info.depth,
        color_space=info.color_space,
        shape=info.shape,
        shape_without_color=info.shape_without_color,
        voxel_width_mm=info.voxel_width_mm,
        voxel_height_mm=info.voxel_height_mm,
        voxel_depth_mm=info.voxel_depth_mm,
        window_center=info.window_center,
        window_width=info.window_width,
    )


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def segment_values(path: Path, *, limit: int = 65) -> list[int]:
    """The distinct voxel values of a stored segmentation file (.mha, .tif; the ``limit``
    smallest), its voxels read a few MiB at a time."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in TIFF_SUFFIXES:
        return tiff_segmentation(path, limit=limit)[1]
    if suffix != ".mha":
        raise ImageError(f"'{suffix}' is not a stored format: convert it to .mha first")
    info = read_image_info(path)
    with path.open("rb") as handle:
        return mha_segment_values(handle, info, limit=limit)


def mha_segment_values(handle: BinaryIO, info: ImageInfo, *, limit: int = 65) -> list[int]:
    """The same for an open .mha file whose header facts are ``info``: a local file or an
    object in the bucket (``s3file.S3File``), its voxels read in bounded chunks."""
    from gantry import voxels

    dtype = _segmentation_dtype(info)
    try:
        return voxels.mha_values(handle, dtype=dtype, count=info.voxel_count, limit=limit)
    except voxels.VoxelError as error:
        raise ImageError(f"could not read the image data ({error})") from None


# zlib's deflate inflates at most about 1032 to 1: compressed data smaller than this fraction
# of the voxels cannot hold them.
_MAX_INFLATE = 1032


def mha_data_problem(head: bytes, size: int, info: ImageInfo) -> str | None:
    """Why a .mha file of ``size`` bytes starting with ``head`` cannot hold the voxels its
    header declares (a few bytes claiming terabytes of voxels, a negative size wrapped round),
    or None. Read from the header and the size alone, not the voxels."""
    from gantry import voxels

    try:
        fields, data_at = voxels.mha_header(head)
    except voxels.VoxelError as error:
        return str(error)
    per_value = _PIXEL_BYTES.get(info.pixel_type.removeprefix("vector of "))
    if per_value is None:
        return None
    expected = info.voxel_count * per_value
    stored = max(size - data_at, 0)
    if fields.get("CompressedData", "False").strip().lower() in ("true", "1", "yes"):
        if stored * _MAX_INFLATE < expected:
            return (
                f"its {stored} bytes of compressed data cannot hold the {expected} bytes of "
                f"voxels its header declares ({info.shape})"
            )
        return None
    if stored < expected:
        return (
            f"the file holds {stored} of the {expected} bytes of voxel data its header "
            f"declares ({info.shape})"
        )
    return None


def _segmentation_dtype(info: ImageInfo) -> str:
    if info.components != 1 or "integer" not in info.pixel_type:
        raise ImageError(
            f"a segmentation must have one integer component per voxel, not "
            f"{info.components} x {info.pixel_type}"
        )
    kind = "u" if "unsigned" in info.pixel_type else "i"
    return f"{kind}{_PIXEL_BYTES[info.pixel_type]}"
