"""A small MetaImage (.mha) reader and writer: a text header, then the raw voxels.

Enough for this example without SimpleITK or numpy: one file (``ElementDataFile = LOCAL``),
zlib-compressed or not, scalar voxels of the common element types, little-endian.
"""

from __future__ import annotations

import array
import sys
import zlib
from pathlib import Path

TYPES = {
    "MET_UCHAR": "B",
    "MET_CHAR": "b",
    "MET_USHORT": "H",
    "MET_SHORT": "h",
    "MET_UINT": "I",
    "MET_INT": "i",
    "MET_FLOAT": "f",
    "MET_DOUBLE": "d",
}
# Header keys that place the voxels in space; an output keeps them to overlay its input.
GEOMETRY = (
    "NDims",
    "DimSize",
    "ElementSpacing",
    "Offset",
    "TransformMatrix",
    "CenterOfRotation",
    "AnatomicalOrientation",
)


class MetaImage:
    def __init__(self, header: dict[str, str], voxels: array.array) -> None:
        self.header = header
        self.voxels = voxels

    @property
    def shape(self) -> list[int]:
        return [int(v) for v in self.header["DimSize"].split()]


def read(path: Path) -> MetaImage:
    data = path.read_bytes()
    header: dict[str, str] = {}
    position = 0
    while True:
        end = data.index(b"\n", position)
        key, _, value = data[position:end].decode().partition("=")
        header[key.strip()] = value.strip()
        position = end + 1
        if key.strip() == "ElementDataFile":
            break
    if header["ElementDataFile"] != "LOCAL":
        raise ValueError(f"{path}: only single-file .mha images are supported")
    if header.get("ElementNumberOfChannels", "1") != "1":
        raise ValueError(f"{path}: only scalar images are supported")
    raw = data[position:]
    if header.get("CompressedData", "False") == "True":
        raw = zlib.decompress(raw)
    voxels = array.array(TYPES[header["ElementType"]])
    voxels.frombytes(raw)
    if header.get("BinaryDataByteOrderMSB", "False") == "True" and sys.byteorder == "little":
        voxels.byteswap()
    return MetaImage(header, voxels)


def write(path: Path, voxels: array.array, like: MetaImage) -> None:
    """Write ``voxels`` with the geometry of ``like`` (spacing, origin, direction)."""
    element_type = next(name for name, code in TYPES.items() if code == voxels.typecode)
    lines = ["ObjectType = Image"]
    lines += [f"{key} = {like.header[key]}" for key in GEOMETRY if key in like.header]
    lines += [
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        f"ElementType = {element_type}",
        "ElementDataFile = LOCAL",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\n".join(lines).encode() + b"\n" + voxels.tobytes())
