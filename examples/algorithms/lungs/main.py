"""Stand-ins for the algorithms of grand-challenge's "Using the API for algorithms" tutorial.

``main.py lobes``: labels the body in the CT image (any one input image) with five "lobes"
(1..5, by slice), writes /output/images/pulmonary-lobes/<uuid>.mha; with ``--screenshot``
also the middle slice as an 8-bit TIFF in /output/images/pulmonary-lobes-screenshot/.
``main.py register``: takes fixed-image, moving-image, fixed-mask and moving-mask; writes the
moving image resampled onto the fixed image's grid to /output/images/registered-moving-image/.
"""

import os
import sys
import uuid
from pathlib import Path

import numpy
import SimpleITK

INPUT = Path(os.environ.get("INPUT_DIR", "/input"))
OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))
BODY_HU = -500


def read(slug: str) -> SimpleITK.Image:
    (path,) = sorted((INPUT / "images" / slug).glob("*.mha"))
    return SimpleITK.ReadImage(str(path))


def write(image: SimpleITK.Image, slug: str, suffix: str = ".mha") -> None:
    out_dir = OUTPUT / "images" / slug
    out_dir.mkdir(parents=True, exist_ok=True)
    SimpleITK.WriteImage(image, str(out_dir / f"{uuid.uuid4()}{suffix}"), suffix == ".mha")


def lobes(screenshot: bool) -> None:
    (slug,) = [p.name for p in (INPUT / "images").iterdir()]
    ct = read(slug)
    voxels = SimpleITK.GetArrayFromImage(ct)
    depth = voxels.shape[0]
    lobe_of_slice = 1 + (numpy.arange(depth) * 5) // max(depth, 1)
    labels = numpy.where(voxels > BODY_HU, lobe_of_slice[:, None, None], 0).astype(numpy.uint8)
    segmentation = SimpleITK.GetImageFromArray(labels)
    segmentation.CopyInformation(ct)
    write(segmentation, "pulmonary-lobes")
    if screenshot:
        middle = (labels[depth // 2] * 50).astype(numpy.uint8)
        write(SimpleITK.GetImageFromArray(middle), "pulmonary-lobes-screenshot", ".tif")
    print(f"labelled {int((labels > 0).sum())} voxels of {slug}")


def register() -> None:
    fixed, moving = read("fixed-image"), read("moving-image")
    for mask in ("fixed-mask", "moving-mask"):
        if not SimpleITK.GetArrayViewFromImage(read(mask)).any():
            raise SystemExit(f"{mask} is empty")
    resampled = SimpleITK.Resample(moving, fixed, SimpleITK.Transform(), SimpleITK.sitkLinear)
    write(resampled, "registered-moving-image")
    print("registered")


if __name__ == "__main__":
    if sys.argv[1] == "register":
        register()
    else:
        lobes("--screenshot" in sys.argv)
