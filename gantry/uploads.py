"""User uploads: S3 multipart uploads the client fills through presigned part URLs."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_FILENAME = 255
MAX_PARTS = 10_000
_SAFE_FILENAME = re.compile(r"^[^/\\\x00-\x1f]+$")


def too_large(what: str, size: int | None, limit: int, advice: str = "") -> str | None:
    """Why ``what`` ("The model tarball") of ``size`` bytes is refused, in GB, with the
    ``advice`` that follows; None within ``limit`` or when the size is not known."""
    if size is None or size <= limit:
        return None
    problem = f"{what} is {size / 1024**3:.1f} GB; the limit is {limit // 1024**3} GB"
    return f"{problem}: {advice}" if advice else problem


class UploadStatus(StrEnum):
    INITIALIZED = "Initialized"
    COMPLETED = "Completed"
    ABORTED = "Aborted"


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    filename: str = Field(min_length=1, max_length=MAX_FILENAME)

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _SAFE_FILENAME.match(value) or value in (".", ".."):
            raise ValueError("must be a plain file name without '/' or control characters")
        # The file is saved under this name where it is checked: file systems allow 255 bytes.
        if len(value.encode("utf-8", "surrogatepass")) > MAX_FILENAME:
            raise ValueError(f"must be at most {MAX_FILENAME} bytes as UTF-8")
        return value


class Upload(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    pk: str
    creator: str
    filename: str
    key: str
    s3_upload_id: str
    status: UploadStatus = UploadStatus.INITIALIZED
    created: str
    size: int | None = None


class PartNumbers(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    part_numbers: list[int] = Field(min_length=1, max_length=1000)

    @field_validator("part_numbers")
    @classmethod
    def _in_range(cls, value: list[int]) -> list[int]:
        for number in value:
            if not 1 <= number <= MAX_PARTS:
                raise ValueError(f"part numbers must be between 1 and {MAX_PARTS}")
        return value


class CompletedPart(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    ETag: str = Field(min_length=1, max_length=256)
    PartNumber: int = Field(ge=1, le=MAX_PARTS)


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    parts: list[CompletedPart] = Field(min_length=1, max_length=MAX_PARTS)
