"""A grand-challenge-style algorithm, written the way its algorithm template writes one.

- inputs: ``/input/inputs.json`` lists the job's socket values; each input is found by its
  socket slug (older templates used ``interface.slug``) and read from ``/input/<relative_path>``;
- model: weights from ``/opt/ml/model`` (the algorithm's active model tarball, extracted);
- outputs: the segmentation as an image with the input's geometry in
  ``/output/images/segmentation/``, and ``/output/results.json``.

Runs with the Python of its image (Debian's python3, no numpy or SimpleITK).
"""

from __future__ import annotations

import array
import json
import os
import pwd
import uuid
from pathlib import Path

import mha

INPUT_PATH = Path("/input")
OUTPUT_PATH = Path("/output")
MODEL_PATH = Path("/opt/ml/model")


def load_model() -> dict:
    """The weights; a real algorithm would load a network here, once."""
    return json.loads((MODEL_PATH / "weights.json").read_text())


def socket_values() -> dict[str, dict]:
    inputs = json.loads((INPUT_PATH / "inputs.json").read_text())
    by_slug = {}
    for value in inputs:
        socket = value.get("socket") or value["interface"]
        by_slug[socket["slug"]] = value
    return by_slug


def load_image(socket_value: dict) -> mha.MetaImage:
    folder = INPUT_PATH / socket_value["socket"]["relative_path"]
    (path,) = sorted(folder.glob("*.mha"))
    return mha.read(path)


def run(model: dict) -> dict:
    values = socket_values()
    image = load_image(values["ct-image"])
    threshold = model["threshold"]
    mask = array.array("B", (1 if v > threshold else 0 for v in image.voxels))
    mha.write(OUTPUT_PATH / "images" / "segmentation" / f"{uuid.uuid4()}.mha", mask, image)
    results = {
        "foreground_voxels": sum(mask),
        "threshold": threshold,
        "model_version": model.get("version"),
        "input_slugs": sorted(values),
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "uid": os.getuid(),
    }
    (OUTPUT_PATH / "results.json").write_text(json.dumps(results))
    print(f"segmented {results['foreground_voxels']} voxels", flush=True)
    return results


if __name__ == "__main__":
    run(load_model())
