"""Tries to reach the network; reports what happened in /output/network.json."""

import json
import os
import socket
import sys
from pathlib import Path

OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))
host, port = (sys.argv[1], int(sys.argv[2])) if len(sys.argv) > 2 else ("1.1.1.1", 443)
try:
    with socket.create_connection((host, port), timeout=3) as connection:
        connection.sendall(b"hello\n")
        report = {"connected": True, "error": None}
except OSError as error:
    report = {"connected": False, "error": str(error)}
(OUTPUT / "network.json").write_text(json.dumps(report))
print(json.dumps(report))
