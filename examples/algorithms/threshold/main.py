"""Threshold a CT image at 0 HU: writes a segmentation and results.json.

Reads /input/images/ct-image/*.mha, writes /output/images/segmentation/<uuid>.mha.
"""

import json
import os
import uuid
from pathlib import Path

import numpy
import SimpleITK

INPUT = Path(os.environ.get("INPUT_DIR", "/input"))
OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))
THRESHOLD_HU = 0


def main() -> int:
    (image_path,) = sorted((INPUT / "images" / "ct-image").glob("*.mha"))
    image = SimpleITK.ReadImage(str(image_path))
    mask = (SimpleITK.GetArrayViewFromImage(image) > THRESHOLD_HU).astype(numpy.uint8)
    segmentation = SimpleITK.GetImageFromArray(mask)
    # Keep spacing, origin and direction so the overlay lands on the input.
    segmentation.CopyInformation(image)
    out_dir = OUTPUT / "images" / "segmentation"
    out_dir.mkdir(parents=True, exist_ok=True)
    SimpleITK.WriteImage(segmentation, str(out_dir / f"{uuid.uuid4()}.mha"), True)
    results = {"threshold_hu": THRESHOLD_HU, "foreground_voxels": int(mask.sum())}
    (OUTPUT / "results.json").write_text(json.dumps(results))
    print(f"segmented {results['foreground_voxels']} voxels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
