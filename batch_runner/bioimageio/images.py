"""Image files in and out: read an image into the canonical ``(1, channel, *spatial)`` layout
(without copying the pixels) and write an output with the input's geometry."""

from __future__ import annotations

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
    return LoadedImage(_canonical(array, tensor, path.name), geometry, image)


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
