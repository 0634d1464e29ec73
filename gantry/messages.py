"""The messages Gantry's functions send each other, as typed models.

Queue messages are JSON objects whose ``gantry`` field names the kind; the job-ended event is
the detail of the "Gantry Job Succeeded/Failed" events on the bus, read by the drop folder,
archive runs and users' own rules. A handler parses what it receives into one of these, so a
message with a missing or wrong field fails with a validation error naming it, instead of a
``KeyError`` somewhere later. Pydantic only: the API imports this module when it sends.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from gantry import resources
from gantry.job_states import JobStatus

Pk = Annotated[str, Field(min_length=1)]


class _Message(BaseModel):
    # Fields a later version adds must not make an older handler drop the message.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ValidateInputs(_Message):
    """Check a job's uploaded inputs (and import its images), then queue it."""

    gantry: Literal["validate-inputs"] = "validate-inputs"
    job: Pk


class StartJob(_Message):
    """Provision and submit a queued job (sent by the API, which must answer quickly)."""

    gantry: Literal["start-job"] = "start-job"
    job: Pk


class ImportImage(_Message):
    """Import an uploaded algorithm container image."""

    gantry: Literal["import-image"] = "import-image"
    image: Pk


class ImportModel(_Message):
    """Import an uploaded algorithm model tarball."""

    gantry: Literal["import-model"] = "import-model"
    model: Pk


class ImportItemValues(_Message):
    """Import the uploaded values of an archive item."""

    gantry: Literal["import-item-values"] = "import-item-values"
    item: Pk


class ImportUploadSession(_Message):
    """Import the medical images of an upload session."""

    gantry: Literal["import-upload-session"] = "import-upload-session"
    session: Pk


class ImportBioimageio(_Message):
    """Register an algorithm's bioimage.io model package."""

    gantry: Literal["import-bioimageio"] = "import-bioimageio"
    algorithm: Pk


UploadsQueueMessage = Annotated[
    ValidateInputs
    | StartJob
    | ImportImage
    | ImportModel
    | ImportItemValues
    | ImportUploadSession
    | ImportBioimageio,
    Field(discriminator="gantry"),
]
UPLOADS_QUEUE_MESSAGE: TypeAdapter[UploadsQueueMessage] = TypeAdapter(UploadsQueueMessage)


class EndedOutput(BaseModel):
    """One output of an ended job, and where its files are."""

    model_config = ConfigDict(extra="ignore")

    socket: str | None = None
    relative_path: str | None = None
    value: Any = None
    key: str | None = None  # a file output's object
    image: str | None = None
    image_keys: list[str] = Field(default_factory=list)  # an image output's files


class JobEnded(BaseModel):
    """The detail of a "Gantry Job Succeeded" or "Gantry Job Failed" event."""

    model_config = ConfigDict(extra="ignore")

    job: Pk
    algorithm: str | None = None
    algorithm_slug: str | None = None
    status: str  # the job's status label
    error_message: str | None = None
    source: str | None = None  # what made the job: "api", "dropbox", "archive-run"
    source_ref: str | None = None
    exec_duration: float | None = None
    invoke_duration: float | None = None
    outputs: list[EndedOutput] = Field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCESS.label

    @property
    def failed(self) -> bool:
        return self.status == JobStatus.FAILURE.label


def is_job_ended_event(message: dict[str, Any]) -> bool:
    """Is ``message`` an EventBridge event that announces the end of a Gantry job?"""
    return message.get("source") == resources.EVENT_SOURCE and message.get("detail-type") in (
        resources.DETAIL_TYPE_JOB_SUCCEEDED,
        resources.DETAIL_TYPE_JOB_FAILED,
    )
