"""Upload sessions (grand-challenge's raw image upload sessions): a set of completed uploads
turned into images off the request's path.

Each image file of a session becomes one image (a .mhd header with its .raw/.zraw is one
image, all .dcm files together one series); a file that cannot be read fails the session with
a message per file. gcapi up to 0.13 starts jobs on uploaded images through a session, and
adds cases to an archive through one (``upload_cases``).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SESSION_UPLOADS = 2048


class UploadSessionStatus(StrEnum):
    QUEUED = "Queued"
    STARTED = "Started"
    FAILED = "Failed"
    SUCCEEDED = "Succeeded"

    @property
    def is_final(self) -> bool:
        return self in (UploadSessionStatus.FAILED, UploadSessionStatus.SUCCEEDED)


class UploadSessionCreate(BaseModel):
    """The body gcapi sends: ``uploads`` (gcapi up to 0.13) or ``user_uploads`` (newer
    grand-challenge clients); the other keys come as nulls from gcapi's request model."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    uploads: list[str] | None = Field(default=None, max_length=MAX_SESSION_UPLOADS)
    user_uploads: list[str] | None = Field(default=None, max_length=MAX_SESSION_UPLOADS)
    creator: int | None = None
    error_message: str | None = None
    archive: str | None = Field(default=None, max_length=1024)
    archive_item: str | None = Field(default=None, max_length=1024)
    interface: str | None = Field(default=None, max_length=255)
    answer: str | None = Field(default=None, max_length=1024)
    display_set: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _some_uploads(self) -> UploadSessionCreate:
        if not (self.uploads or self.user_uploads):
            raise ValueError("give the uploads to import in 'uploads' or 'user_uploads'")
        return self

    @property
    def upload_refs(self) -> list[str]:
        # Both lists name uploads; a client that sends both means their union.
        return list(dict.fromkeys([*(self.user_uploads or []), *(self.uploads or [])]))


class UploadSession(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    pk: str
    creator: str
    created: str
    status: UploadSessionStatus = UploadSessionStatus.QUEUED
    uploads: list[str]  # upload pks, in the order given
    images: list[str] = Field(default_factory=list)  # image pks, once imported
    error_message: str | None = None
    # file name -> why that file is not an image
    file_errors: dict[str, str] = Field(default_factory=dict)
    # Where the images go besides their uploader: each a new item of ``archive``, or the one
    # value of ``archive_item``, under the socket ``interface``.
    archive: str | None = None
    archive_item: str | None = None
    interface: str | None = None
