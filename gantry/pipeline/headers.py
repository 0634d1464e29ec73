"""Image headers read from S3 without the voxels.

A .mha file with its data attached starts with its whole header as text lines, the last one
``ElementDataFile = LOCAL``; ``imaging.read_image_info`` reads nothing beyond it. So one
ranged GET of the first bytes gives the same facts as downloading the whole file, which for a
large image costs a full read and write of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Headers are a few hundred bytes; a header longer than this is read the slow way.
HEADER_LIMIT = 64 * 1024
_DATA_LINE = b"ElementDataFile"


def fetch_mha_header(s3: Any, bucket: str, key: str, target: Path) -> Path | None:
    """Write the header of the .mha object ``key`` to ``target``; None where it cannot be
    had that way (another format, an empty object, no data line within the first bytes):
    then download the file. S3's errors (a missing object) propagate."""
    if not key.lower().endswith(".mha"):
        return None
    try:
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{HEADER_LIMIT - 1}")[
            "Body"
        ].read()
    except s3.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") == "InvalidRange":
            return None  # an empty object: the download reports it
        raise
    start = 0
    while start < len(body):
        end = body.find(b"\n", start)
        if end < 0:
            return None
        if body[start:end].lstrip().startswith(_DATA_LINE):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body[: end + 1])
            return target
        start = end + 1
    return None
