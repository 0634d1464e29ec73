"""Writes a JSON output that is not JSON."""

import os
from pathlib import Path

OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))
(OUTPUT / "score.json").write_text("{not json")
