"""Where a running Gantry API is and how to talk to it, for the CLI and for clients.

``gantry local up`` writes ``<state dir>/local.json`` (owner-only: it holds a token); the
other commands read their API URL, token and CA file from options, then ``GANTRY_API_URL`` /
``GANTRY_TOKEN`` / ``GANTRY_CA_FILE``, then that file. The file also names the stack's AWS
endpoint and bucket, for commands that write to S3 directly (the drop folder); files written
before those fields existed still read, with both None.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path(".gantry")
CONNECTION_FILE = "local.json"
IMAGES_DIR = "images"


def image_store_dir(state_dir: Path) -> Path:
    """Where the local stack keeps unpacked OCI images (``gantry.oci.ImageStore``)."""
    return state_dir / IMAGES_DIR


@dataclass(frozen=True)
class Connection:
    api_url: str
    token: str
    ca_file: str | None = None
    # None: boto3's own resolution (a real account), as the stack itself does.
    aws_endpoint_url: str | None = None
    bucket: str | None = None

    def write(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / CONNECTION_FILE
        # Written aside and renamed: a reader (or a start after a crash mid-write) sees the
        # previous file or the new one, never a partial one.
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, state_dir: Path) -> Connection | None:
        path = state_dir / CONNECTION_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(
            api_url=data["api_url"],
            token=data["token"],
            ca_file=data.get("ca_file"),
            aws_endpoint_url=data.get("aws_endpoint_url"),
            bucket=data.get("bucket"),
        )


def resolve(
    *,
    api_url: str | None = None,
    token: str | None = None,
    ca_file: str | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
) -> Connection:
    """Options first, then the environment, then the local stack's file."""
    saved = Connection.read(state_dir)
    api_url = api_url or os.environ.get("GANTRY_API_URL") or (saved.api_url if saved else None)
    token = token or os.environ.get("GANTRY_TOKEN") or (saved.token if saved else None)
    ca_file = ca_file or os.environ.get("GANTRY_CA_FILE") or (saved.ca_file if saved else None)
    if not api_url or not token:
        raise LookupError(
            "No Gantry API to talk to: start one with `gantry local up`, or give --api-url "
            "and --token (or GANTRY_API_URL and GANTRY_TOKEN)"
        )
    if not api_url.endswith("/"):
        api_url += "/"
    return Connection(api_url=api_url, token=token, ca_file=ca_file)
