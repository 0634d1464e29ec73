"""Fails like a real bug: a message on stderr, exit code 1."""

import sys

print("loading model", flush=True)
print("RuntimeError: model weights not found", file=sys.stderr)
sys.exit(1)
