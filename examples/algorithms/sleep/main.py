"""Sleeps for /input/seconds.json seconds, then writes the number to /output/slept.json."""

import json
import os
import time
from pathlib import Path

INPUT = Path(os.environ.get("INPUT_DIR", "/input"))
OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))


def main() -> int:
    seconds = float(json.loads((INPUT / "seconds.json").read_text()))
    time.sleep(seconds)
    (OUTPUT / "slept.json").write_text(json.dumps(seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
