"""Floods stdout: many MB of lines, some very long; NUL bytes too. Exits 0."""

import os
import sys

MEGABYTES = int(os.environ.get("FLOOD_MB", "20"))
out = sys.stdout.buffer
line = b"x" * 1000 + b"\n"
for _ in range(MEGABYTES * 1024):
    out.write(line)
    if _ % 1024 == 0:
        out.write(b"y" * (1024 * 1024) + b"\n")
out.write(b"nul\x00byte\n")
out.write(b"last line\n")
out.flush()
print("stderr tail", file=sys.stderr)
