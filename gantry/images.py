"""Images: a medical image stored as .mha or .tif, with the header facts users filter on."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ImageType(StrEnum):
    MHD = "MHD"  # .mha / .mhd, as grand-challenge labels it
    TIFF = "TIFF"


class ImageFile(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    pk: str
    key: str  # S3 key
    image_type: ImageType
    filename: str


class Image(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    pk: str
    name: str
    owner: str
    created: str
    files: list[ImageFile] = Field(default_factory=list)
    width: int | None = None
    height: int | None = None
    depth: int | None = None
    color_space: str | None = None
    shape: list[int] = Field(default_factory=list)
    shape_without_color: list[int] = Field(default_factory=list)
    voxel_width_mm: float | None = None
    voxel_height_mm: float | None = None
    voxel_depth_mm: float | None = None
    window_center: float | None = None
    window_width: float | None = None
    segments: list[int] | None = None
