"""Images the tests write with SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.1"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.1.2"


def write_dicom_series(directory: Path, slices: int = 3, spacing_z: float = 2.5) -> list[Path]:
    """A CT series, one 6x7 slice per file, slice z filled with z; the files in order."""
    directory.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for z in range(slices):
        slice_ = sitk.GetImageFromArray(np.full((6, 7), z, dtype=np.int16))
        for tag, value in {
            "0020|000e": SERIES_UID,
            "0020|000d": STUDY_UID,
            "0020|0013": str(z + 1),
            "0020|0032": f"0\\0\\{z * spacing_z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0060": "CT",
        }.items():
            slice_.SetMetaData(tag, value)
        path = directory / f"slice{z}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_)
        paths.append(path)
    return paths
