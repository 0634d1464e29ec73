"""Tries to exfiltrate a host file: a symbolic link in /output pointing at /etc/passwd."""

import os
from pathlib import Path

OUTPUT = Path(os.environ.get("OUTPUT_DIR", "/output"))
os.symlink("/etc/passwd", OUTPUT / "passwd.txt")
