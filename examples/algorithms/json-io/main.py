"""Reads a Float and a 2D bounding box; writes a scaled Float and a shifted bounding box."""

import json
import os
from pathlib import Path

INPUT = Path(os.environ.get("INPUT_DIR", "/input"))
OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))


def main() -> int:
    threshold = json.loads((INPUT / "threshold.json").read_text())
    box = json.loads((INPUT / "bounding-box.json").read_text())
    # Move every corner by the threshold along x: a visible, checkable transformation.
    for corner in box["corners"]:
        corner[0] += threshold
    box["name"] = "shifted"
    (OUTPUT / "score.json").write_text(json.dumps(threshold * 2))
    (OUTPUT / "shifted-bounding-box.json").write_text(json.dumps(box))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
