"""Jobs: one run of an algorithm image on one set of socket values."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gantry.job_states import JobStatus

MAX_ERROR_MESSAGE = 1024
STREAM_TAIL_LINES = 100


class SocketValue(BaseModel):
    """A value of one socket: inline JSON, a file in S3, or an image."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    pk: int
    socket: str
    value: Any | None = None
    file: str | None = None  # S3 key
    image: str | None = None  # image pk
    # Set while an uploaded file or image still has to be checked or imported.
    pending_upload: str | None = None
    pending_uploads: list[str] | None = None


class Job(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    pk: str
    algorithm: str
    algorithm_image: str
    # Provenance, fixed when the job is created: what it runs with, whatever the algorithm's
    # desired versions are later (the image's config sha256; the model tarball's pk, sha256).
    algorithm_image_sha256: str | None = None
    algorithm_model: str | None = None
    algorithm_model_sha256: str | None = None
    socket_set: int = 0
    creator: str
    status: JobStatus = JobStatus.VALIDATING_INPUTS
    attempt: int = 1
    inputs: list[SocketValue] = Field(default_factory=list)
    outputs: list[SocketValue] = Field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    error_message: str = ""
    detailed_error_message: dict[str, str] = Field(default_factory=dict)
    exec_duration: float | None = None
    invoke_duration: float | None = None
    runtime_metrics: dict[str, Any] = Field(default_factory=dict)
    time_limit: int
    requires_gpu_type: str = ""
    requires_memory_gb: int = 8
    signing_key: str = ""
    compute_job_id: str | None = None
    created: str
    modified: str
    started_at: str | None = None
    completed_at: str | None = None
    source: str = "api"
    source_ref: str | None = None
    # Provisioning back-off: not submitted again before this time (ISO), after capacity errors.
    not_before: str | None = None
    capacity_retries: int = 0
    # The attempt whose runner redeemed its credentials claim (gantry.job_credentials).
    credentials_claimed: int = 0
    # Credits it spent when created (0: a drop-folder job, or one of an editor's free jobs).
    credits_consumed: int = 0
    is_complimentary: bool = False
    # Shared data (gantry.access.job_data): users besides the creator who see the inputs and
    # outputs, and whether the algorithm's editors do.
    viewers: list[str] = Field(default_factory=list)
    share_with_editors: bool = False

    @field_validator("error_message")
    @classmethod
    def _short_error(cls, value: str) -> str:
        return truncate_error(value)


def truncate_error(message: str) -> str:
    if len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[: MAX_ERROR_MESSAGE - 1] + "…"
