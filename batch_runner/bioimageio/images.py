"""Image files in and out: read an image into the canonical ``(1, channel, *spatial)`` layout
(without copying the pixels) and write an output with the input's geometry."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch_runner.bioimageio.plan import InputPlan, PredictionError

IMAGE_SUFFIXES = (".mha", ".mhd", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd")


@dataclass
class Geometry:
    spacing: tuple[float, ...] = ()
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()


@dataclass
class LoadedImage:
    array: np.ndarray  # canonical (1, c, *spatial), possibly a view on ``keep``
    geometry: Geometry
    keep: Any = None  # the object owning the pixels
    file_shape: tuple[int, ...] | None = None  # the file's spatial shape, if not the array's


def read(path: Path, tensor: InputPlan) -> LoadedImage:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise PredictionError(f"{tensor.id}: cannot read '{path.name}': {error}") from None
        return _read_tiff(path, tensor)
    array = sitk.GetArrayViewFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        array = array[..., None]
    geometry = Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return LoadedImage(
        _canonical(array, tensor, path.name), geometry, image, tuple(array.shape[:-1])
    )


def _read_tiff(path: Path, tensor: InputPlan) -> LoadedImage:
    import tifffile

    array = tifffile.imread(path)
    if tensor.channels > 1 and array.shape[-1] == tensor.channels:
        pass
    else:
        array = array[..., None]
    return LoadedImage(_canonical(array, tensor, path.name), Geometry())


def _canonical(array: np.ndarray, tensor: InputPlan, name: str) -> np.ndarray:
    """(*spatial, c) → (1, c, *spatial) as a view; a 3D image of one slice fits a 2D model."""
    ndim = len(tensor.spatial)
    spatial = array.shape[:-1]
    if len(spatial) == 3 and ndim == 2 and spatial[0] == 1:
        array = array[0]
    elif len(spatial) != ndim:
        raise PredictionError(
            f"{tensor.id}: the model takes {ndim}D images, '{name}' is {len(spatial)}D"
        )
    if array.shape[-1] != tensor.channels:
        raise PredictionError(
            f"{tensor.id}: the model takes {tensor.channels} channel(s), "
            f"'{name}' has {array.shape[-1]}"
        )
    return np.moveaxis(array, -1, 0)[None]


def write(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    """Write canonical ``(1, c, *spatial)`` as an image file; channels become components."""
    import SimpleITK as sitk

    array = array[0]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    channels = array.shape[0]
    if channels == 1:
        image = sitk.GetImageFromArray(array[0])
    else:
        image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    if geometry.spacing and len(geometry.spacing) == image.GetDimension():
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=False)


_MET_TYPES = {
    "uint8": "MET_UCHAR",
    "int8": "MET_CHAR",
    "uint16": "MET_USHORT",
    "int16": "MET_SHORT",
    "uint32": "MET_UINT",
    "int32": "MET_INT",
    "uint64": "MET_ULONG_LONG",
    "int64": "MET_LONG_LONG",
    "float32": "MET_FLOAT",
    "float64": "MET_DOUBLE",
}


class MhaWriter:
    """An uncompressed .mha whose pixels are written block by block through a shared memory
    map, so a large output never has to be in memory as a whole: every ``release_bytes`` the
    written pages are dropped from the process (they stay in the page cache, which writes
    them back). ``shape`` is the spatial shape (z, y, x
    or y, x) the file gets; ``geometry`` the input's."""

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        channels: int,
        dtype: np.dtype,
        geometry: Geometry,
        release_bytes: int = 4 << 20,
    ) -> None:
        self.dtype = np.dtype(np.uint8) if dtype == np.bool_ else np.dtype(dtype)
        if self.dtype.name not in _MET_TYPES:
            raise PredictionError(f"cannot write {self.dtype} images")
        ndim = len(shape)
        spacing = geometry.spacing if len(geometry.spacing) == ndim else (1.0,) * ndim
        origin = geometry.origin if len(geometry.origin) == ndim else (0.0,) * ndim
        direction = (
            geometry.direction
            if len(geometry.direction) == ndim * ndim
            else tuple(float(i == j) for i in range(ndim) for j in range(ndim))
        )
        # MetaIO stores the direction matrix column by column.
        matrix = [direction[j * ndim + i] for i in range(ndim) for j in range(ndim)]
        header = [
            "ObjectType = Image",
            f"NDims = {ndim}",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            "TransformMatrix = " + " ".join(repr(float(v)) for v in matrix),
            "Offset = " + " ".join(repr(float(v)) for v in origin),
            "CenterOfRotation = " + " ".join("0" for _ in range(ndim)),
            "ElementSpacing = " + " ".join(repr(float(v)) for v in spacing),
            "DimSize = " + " ".join(str(n) for n in reversed(shape)),
            *([f"ElementNumberOfChannels = {channels}"] if channels > 1 else []),
            f"ElementType = {_MET_TYPES[self.dtype.name]}",
            "ElementDataFile = LOCAL",
        ]
        text = ("\n".join(header) + "\n").encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.shape = shape
        size = int(np.prod(shape)) * channels * self.dtype.itemsize
        with path.open("wb") as file:
            file.write(text)
            file.truncate(len(text) + size)
        self.pixels = np.memmap(
            path,
            dtype=self.dtype.newbyteorder("<"),
            mode="r+",
            offset=len(text),
            shape=(*shape, channels),
        )
        self.release_bytes = release_bytes
        self.pending = 0

    def write(self, target: tuple[slice, ...], block: np.ndarray) -> None:
        """Pixels of ``target`` (spatial slices) from canonical ``(1, c, *block)``; a file with
        a leading one-slice axis (a 2D model on a one-slice volume) takes 2D targets."""
        pixels = np.moveaxis(block[0], 0, -1)  # channels interleaved, as MetaIO stores them
        view = self.pixels.reshape((*self.shape[len(self.shape) - len(target) :], -1))
        view[target] = pixels
        self.pending += pixels.nbytes
        if self.pending >= self.release_bytes:
            self._release()

    def _release(self) -> None:
        mapping = getattr(self.pixels, "_mmap", None)
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            # A shared file mapping keeps the data in the page cache: only our pages go.
            mapping.madvise(mmap.MADV_DONTNEED)
        self.pending = 0

    def close(self) -> None:
        self.pixels.flush()
        self._release()
        del self.pixels
