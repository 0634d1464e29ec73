"""Three kinds of input at once: an image, a JSON value and a file.

Reads /input/images/ct-image/*.mha, /input/threshold.json (a number) and /input/labels.csv
(``voxel_value,name`` rows); writes /output/images/segmentation/<uuid>.mha (1 above the
threshold), /output/summary.json and /output/report.csv (voxels per label).
"""

import csv
import json
import os
import uuid
from pathlib import Path

import numpy
import SimpleITK

INPUT = Path(os.environ.get("INPUT_DIR", "/input"))
OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))


def main() -> int:
    (image_path,) = sorted((INPUT / "images" / "ct-image").glob("*.mha"))
    image = SimpleITK.ReadImage(str(image_path))
    threshold = float(json.loads((INPUT / "threshold.json").read_text()))
    with (INPUT / "labels.csv").open(newline="") as handle:
        labels = {int(row["voxel_value"]): row["name"] for row in csv.DictReader(handle)}

    mask = (SimpleITK.GetArrayViewFromImage(image) > threshold).astype(numpy.uint8)
    segmentation = SimpleITK.GetImageFromArray(mask)
    # Keep spacing, origin and direction so the overlay lands on the input.
    segmentation.CopyInformation(image)
    out_dir = OUTPUT / "images" / "segmentation"
    out_dir.mkdir(parents=True, exist_ok=True)
    SimpleITK.WriteImage(segmentation, str(out_dir / f"{uuid.uuid4()}.mha"), True)

    counts = {name: int((mask == value).sum()) for value, name in sorted(labels.items())}
    summary = {"threshold": threshold, "input": image_path.name, "voxels": counts}
    (OUTPUT / "summary.json").write_text(json.dumps(summary))
    with (OUTPUT / "report.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "voxels"])
        writer.writerows(counts.items())
    print(f"threshold {threshold}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
