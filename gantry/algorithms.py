"""Algorithms (a container image plus socket sets) and their container images."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gantry.access_requests import AccessRequestHandling

MIN_TIME_LIMIT = 300
MAX_TIME_LIMIT = 86400
DEFAULT_TIME_LIMIT = 3600
MIN_MEMORY_GB = 4
MAX_MEMORY_GB = 32
DEFAULT_MEMORY_GB = 8
MAX_SOCKETS_PER_SET = 64
MAX_SOCKET_SETS = 32


class GPUType(StrEnum):
    NONE = ""
    T4 = "T4"
    A10G = "A10G"
    A100 = "A100"


# A10G and A100 are known to the model but not offered until the compute stack has them.
ENABLED_GPU_TYPES = frozenset({GPUType.NONE, GPUType.T4})


class ImportStatus(StrEnum):
    INITIALIZED = "Initialized"
    QUEUED = "Queued"
    RE_QUEUED = "Re-Queued"
    STARTED = "Started"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_finished(self) -> bool:
        """Completed, Failed or Cancelled: the import has ended, and no step of it (a message
        seen again, a retry) may change the record any more."""
        return self in _FINISHED_IMPORTS


_FINISHED_IMPORTS = frozenset({ImportStatus.COMPLETED, ImportStatus.FAILED, ImportStatus.CANCELLED})


class SocketSet(BaseModel):
    """One way to run the algorithm: these input sockets produce these output sockets."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    inputs: list[str] = Field(min_length=1, max_length=MAX_SOCKETS_PER_SET)
    outputs: list[str] = Field(min_length=1, max_length=MAX_SOCKETS_PER_SET)

    @model_validator(mode="after")
    def _distinct(self) -> SocketSet:
        for name, slugs in (("inputs", self.inputs), ("outputs", self.outputs)):
            if len(set(slugs)) != len(slugs):
                raise ValueError(f"{name}: a socket is listed twice")
        both = set(self.inputs) & set(self.outputs)
        if both:
            raise ValueError(f"sockets {sorted(both)} are both input and output")
        return self


class AlgorithmFields(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)

    title: str = Field(min_length=1, max_length=255)
    description: str = Field(default="", max_length=10_000)
    interfaces: list[SocketSet] = Field(min_length=1, max_length=MAX_SOCKET_SETS)
    time_limit: int = Field(default=DEFAULT_TIME_LIMIT, ge=MIN_TIME_LIMIT, le=MAX_TIME_LIMIT)
    requires_gpu_type: GPUType = GPUType.NONE
    requires_memory_gb: int = Field(default=DEFAULT_MEMORY_GB, ge=MIN_MEMORY_GB, le=MAX_MEMORY_GB)
    # Credits a job costs at least (see gantry.credits); grand-challenge's default and range.
    minimum_credits_per_job: int = Field(default=20, ge=20, le=1000)
    # How users' requests to use the algorithm are answered (gantry.access_requests).
    access_request_handling: AccessRequestHandling = AccessRequestHandling.MANUAL_REVIEW
    editors: list[str] = Field(default_factory=list, max_length=100)
    users: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("requires_gpu_type")
    @classmethod
    def _enabled_gpu(cls, value: GPUType) -> GPUType:
        if value not in ENABLED_GPU_TYPES:
            offered = ", ".join(repr(g.value) for g in sorted(ENABLED_GPU_TYPES))
            raise ValueError(f"GPU type {value.value!r} is not offered; choose one of {offered}")
        return value

    @model_validator(mode="after")
    def _distinct_sets(self) -> AlgorithmFields:
        seen: set[frozenset[str]] = set()
        for socket_set in self.interfaces:
            key = frozenset(socket_set.inputs)
            if key in seen:
                raise ValueError(
                    "interfaces: two socket sets have the same inputs; a job must match one"
                )
            seen.add(key)
        return self


class AlgorithmUpdate(BaseModel):
    """A PATCH of an algorithm: the fields given replace the stored ones. ``interfaces`` is
    the whole new list: socket sets may be added, and removed only while no job used them."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)

    title: str | None = Field(default=None, min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=10_000)
    interfaces: list[SocketSet] | None = Field(
        default=None, min_length=1, max_length=MAX_SOCKET_SETS
    )
    time_limit: int | None = Field(default=None, ge=MIN_TIME_LIMIT, le=MAX_TIME_LIMIT)
    requires_gpu_type: GPUType | None = None
    requires_memory_gb: int | None = Field(default=None, ge=MIN_MEMORY_GB, le=MAX_MEMORY_GB)
    minimum_credits_per_job: int | None = Field(default=None, ge=20, le=1000)
    access_request_handling: AccessRequestHandling | None = None
    editors: list[str] | None = Field(default=None, max_length=100)
    users: list[str] | None = Field(default=None, max_length=1000)


class AlgorithmCreate(AlgorithmFields):
    """``POST algorithms/``: the fields, with the socket sets given, or a bioimage.io model
    package whose import (gantry.pipeline.bioimageio_import) creates them (one or the other:
    ``catalog.create_algorithm`` and ``services.bioimageio.register`` check)."""

    interfaces: list[SocketSet] = Field(default_factory=list, max_length=MAX_SOCKET_SETS)
    bioimageio_package: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="a bioimage.io model package zip: the api_url or pk of a completed "
        "upload, or (admins) s3://<the deployment's bucket>/<key>",
    )


class BioimageioImport(BaseModel):
    """The registration of an algorithm from a bioimage.io model package: where the package
    is, how its import stands, and what it made (the algorithm's model and image)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    import_status: ImportStatus = ImportStatus.QUEUED
    status_message: str = ""
    # The package: a user upload's pk, or an object of the deployment's bucket.
    user_upload: str | None = None
    key: str | None = None
    filename: str = ""
    # What the validation found.
    name: str = ""
    format_version: str = ""
    weights_format: str = ""
    # What the import made: the model (the package, extracted to /opt/ml/model) and image.
    model: str | None = None
    image: str | None = None


class Algorithm(AlgorithmFields):
    # Stored documents may hold fields of earlier versions (a "models" list): ignored.
    model_config = ConfigDict(extra="ignore")

    # Empty only while a bioimage.io package's import has not completed.
    interfaces: list[SocketSet] = Field(default_factory=list, max_length=MAX_SOCKET_SETS)
    bioimageio: BioimageioImport | None = None
    pk: str
    slug: str
    creator: str
    created: str
    modified: str


# An image's fields as a request may give them (the API's AlgorithmImageCreate uses the same).
# A registry URI (ECR, ...) the compute backend pulls, or "local" for the local executor.
ImageUri = Annotated[str, Field(min_length=1, max_length=1024)]
# The image's original ENTRYPOINT/CMD; the runner starts these inside the container.
Entrypoint = Annotated[list[str], Field(max_length=64)]
Command = Annotated[list[str], Field(max_length=256)]
# Local executor only: the algorithm's code directory, bound read-only in the sandbox.
Workdir = Annotated[str, Field(max_length=1024)]
ImageSha256 = Annotated[str, Field(pattern=r"^(sha256:)?[0-9a-f]{64}$")]


class AlgorithmImageFields(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)

    image: ImageUri
    entrypoint: Entrypoint | None = None
    command: Command | None = None
    workdir: Workdir | None = None
    sha256: ImageSha256 | None = None
    is_desired_version: bool = True

    @model_validator(mode="after")
    def _runnable(self) -> AlgorithmImageFields:
        if not (self.entrypoint or self.command):
            raise ValueError("command: give the image's command or entrypoint to run")
        return self


# grand-challenge's limit on an uploaded container image archive.
MAX_IMAGE_ARCHIVE_BYTES = 10 * 1024**3


class AlgorithmImage(AlgorithmImageFields):
    pk: str
    algorithm: str
    creator: str
    created: str
    import_status: ImportStatus = ImportStatus.COMPLETED
    status_message: str = ""
    # An imported image: the upload it came from, and what the import found.
    user_upload: str | None = None
    is_manifest_valid: bool | None = None
    is_in_registry: bool = False

    @model_validator(mode="after")
    def _runnable(self) -> AlgorithmImage:
        # An image still being imported has no command yet; the import fills it in.
        if self.import_status is ImportStatus.COMPLETED and not (self.entrypoint or self.command):
            raise ValueError("command: give the image's command or entrypoint to run")
        return self


# grand-challenge accepts a model as a gzipped tarball only.
MODEL_SUFFIXES = (".tar.gz", ".tgz")


class AlgorithmModel(BaseModel):
    """A model tarball of an algorithm (grand-challenge's AlgorithmModel), imported from a
    user upload; the desired one is extracted to /opt/ml/model for the algorithm's jobs.
    Which one is desired is kept apart (one pointer per algorithm), so switching is one write.
    """

    model_config = ConfigDict(extra="ignore", defer_build=True)

    pk: str
    algorithm: str
    creator: str
    created: str
    import_status: ImportStatus = ImportStatus.QUEUED
    status_message: str = ""
    user_upload: str | None = None
    comment: str = ""
    # Filled in by the import: "sha256:<hex>" of the tarball's bytes, its size, its S3 key.
    sha256: str | None = None
    size_in_storage: int = 0
    key: str | None = None
