"""The messages Gantry's functions send each other, as typed models.

Queue messages are JSON objects whose ``gantry`` field names the kind; the job-ended event is
the detail of the "Gantry Job Succeeded/Failed" events on the bus, read by the drop folder,
archive runs and users' own rules. A sender builds one of these models and sends its JSON; a
handler parses what it receives with ``parse`` and the adapter of its queue, so a message of a
kind the queue does not take, or with a missing or wrong field, fails its record with a
``MalformedMessage`` naming the kind and the field, instead of a ``KeyError`` somewhere later.
Pydantic only: the API imports this module when it sends.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from gantry import resources
from gantry.job_states import JobStatus

Pk = Annotated[str, Field(min_length=1)]
T = TypeVar("T")


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


class DeleteImage(_Message):
    """Delete a removed algorithm image from the deployment's repository (only the import
    function may)."""

    gantry: Literal["delete-image"] = "delete-image"
    reference: Pk  # <registry>/<repository>@sha256:…
    tag: str | None = None  # only this tag (the removed image's image-<pk>), not the manifest


class DeleteModel(_Message):
    """Delete a removed model's tarball (only the import function may write ``models/``)."""

    gantry: Literal["delete-model"] = "delete-model"
    key: str

    @field_validator("key")
    @classmethod
    def _a_model_tarball(cls, key: str) -> str:
        if not key.startswith(resources.PREFIX_MODELS):
            raise ValueError(f"not under {resources.PREFIX_MODELS}")
        return key


# The imports queue: the imports that may take minutes, and deletions only its function may do.
ImportsQueueMessage = Annotated[
    ImportImage | ImportModel | ImportBioimageio | DeleteImage | DeleteModel,
    Field(discriminator="gantry"),
]
IMPORTS_QUEUE_MESSAGE: TypeAdapter[ImportsQueueMessage] = TypeAdapter(ImportsQueueMessage)


class ArchiveRunPage(_Message):
    """Make the jobs of one page of an archive run's items, then queue the next page."""

    gantry: Literal["archive-run-page"] = "archive-run-page"
    run: Pk
    cursor: dict[str, Any] | None = None  # where the page starts; None: the first page


class ArchiveRunCancel(_Message):
    """Cancel the jobs of one page of a cancelled archive run's records."""

    gantry: Literal["archive-run-cancel"] = "archive-run-cancel"
    run: Pk
    cursor: dict[str, Any] | None = None


ArchiveRunsQueueMessage = Annotated[
    ArchiveRunPage | ArchiveRunCancel, Field(discriminator="gantry")
]
ARCHIVE_RUNS_QUEUE_MESSAGE: TypeAdapter[ArchiveRunsQueueMessage] = TypeAdapter(
    ArchiveRunsQueueMessage
)


class MalformedMessage(ValueError):
    """A queue message of a kind its queue does not take, or with a field missing or wrong.
    Its record fails (and ends in the queue's DLQ), with this text in the log."""


def parse(adapter: TypeAdapter[T], message: dict[str, Any]) -> T:
    """``message`` as the model its ``gantry`` kind names; ``MalformedMessage`` saying what is
    wrong with it otherwise ("import-model message: model: Field required")."""
    try:
        return adapter.validate_python(message)
    except ValidationError as error:
        raise MalformedMessage(_describe(message, error)) from error


def _describe(message: dict[str, Any], error: ValidationError) -> str:
    kind = message.get("gantry")
    problems = []
    for problem in error.errors(include_url=False):
        if problem["type"] in ("union_tag_invalid", "union_tag_not_found"):
            return f"unknown message kind {kind!r} (fields: {sorted(message)[:10]})"
        # The first item of the location is the kind's model (the union's tag).
        field = ".".join(str(part) for part in problem["loc"][1:])
        problems.append(f"{field}: {problem['msg']}" if field else problem["msg"])
    return f"{kind} message: {'; '.join(problems)}"


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
