"""The deployed publisher of imported images: the archive, with Gantry's runner layer, pushed to
the deployment's ECR repository; what jobs run is the pushed manifest's digest.

``import_image`` has validated the archive; this pushes it with ``gantry.oci.push``: each layer
streams from the S3 object to the registry one chunk at a time (never the whole archive in
memory or on the function's disk), blobs the repository already holds are not sent, the runner
layer comes from the file the import function carries (a Lambda layer, ``/opt``), then the new
config and manifest go up. Credentials come from ``ecr.get_authorization_token`` through boto3,
so the function's role decides what it may push (docs/deploy.md "Importing an algorithm image").

Every image is tagged ``image-<image pk>`` (``IMAGE_TAG_PREFIX``; the repository's tags are
immutable): the repository's lifecycle policy expires untagged manifests only, so no image an
algorithm can use is ever expired. A retried import (the handler that pushed died before it
recorded the result) finds its tag and answers the manifest already there.

The import runs inside the function's time limit: past ``deadline`` (set by the handler from
the time the invocation has left) the push stops between two chunks and the import fails with
a message saying so, instead of the function being killed mid-push and the queue retrying an
import that cannot finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from gantry.algorithms import AlgorithmImage
from gantry.aws import Clients
from gantry.context import Context
from gantry.oci.errors import ImageError
from gantry.oci.mutate import LayerFile
from gantry.oci.registry import Registry, RegistryError
from gantry.pipeline.image_import import MAKE_IT_SMALLER
from gantry.settings import Settings

if TYPE_CHECKING:
    from gantry.oci.archive import ArchiveImage

IMAGE_TAG_PREFIX = "image-"
NO_RUNNER_LAYER = (
    "This deployment's import function has no runner layer ({path}), so the image cannot be "
    "made runnable; ask its operator to build it ('make runner') and deploy again"
)
TOO_LONG = (
    "The import did not finish within the import function's time limit: the image is too "
    "large to import here (about {pushed:.1f} GB of its layers were sent); " + MAKE_IT_SMALLER
)


def image_tag(image_pk: str) -> str:
    """The tag an imported image carries in the repository (kept by the lifecycle policy)."""
    return f"{IMAGE_TAG_PREFIX}{image_pk}"


class ImportTimedOut(ImageError):
    """The push ran past the handler's deadline."""


@dataclass
class RegistryPublisher:
    """``(ctx, image, archive) -> reference`` (``gantry.pipeline.image_import.Publisher``)."""

    repository: str
    runner_layer_path: Path
    # A registry with credentials, made per import (ECR tokens last 12 hours; warm functions
    # live longer).
    registry: Callable[[], Registry]
    # time.monotonic() after which the push stops; None: no limit.
    deadline: float | None = None
    _runner: LayerFile | None = field(default=None, repr=False)

    def __call__(self, ctx: Context, image: AlgorithmImage, archive: Any) -> str:
        from gantry.oci.push import push_with_runner

        runner = self.runner_layer()
        registry = self.registry()
        tag = image_tag(image.pk)
        existing = _manifest_digest(registry, self.repository, tag)
        if existing is not None:
            return f"{registry.host}/{self.repository}@{existing}"
        sent = _Counter()
        # push_with_runner reads only config, config_blob and layer_streams of the archive.
        source = cast("ArchiveImage", _TimedArchive(archive, self.deadline, sent))
        try:
            pushed = push_with_runner(source, runner, registry, self.repository, tag)
        except ImportTimedOut:
            raise ImportTimedOut(TOO_LONG.format(pushed=sent.bytes / 1024**3)) from None
        return pushed.reference

    def runner_layer(self) -> LayerFile:
        """The runner layer file, hashed once per process."""
        if self._runner is None:
            if not self.runner_layer_path.is_file():
                raise ImageError(NO_RUNNER_LAYER.format(path=self.runner_layer_path))
            self._runner = LayerFile.read(self.runner_layer_path)
        return self._runner

    def time_left(self, seconds: float) -> None:
        """Stop pushing ``seconds`` from now (the handler's remaining time, less a margin)."""
        self.deadline = time.monotonic() + seconds


def ecr_publisher(settings: Settings, clients: Clients) -> RegistryPublisher:
    """The publisher of a deployment: its ECR repository, the account's registry (the ECR
    client is made on the first import, off the API's cold start)."""
    return RegistryPublisher(
        repository=settings.image_repository,
        runner_layer_path=Path(settings.runner_layer_path),
        registry=lambda: Registry.ecr(clients.client("ecr")),
    )


def ensure_publisher(ctx: Context) -> RegistryPublisher | None:
    """The deployment's publisher on ``ctx`` (made once, when the settings name a repository);
    None where images are published otherwise (the local stack) or not at all. Only the import
    function makes it: the API never pushes and its cold start does not import this."""
    if ctx.image_publisher is None and ctx.settings.image_repository:
        ctx.image_publisher = ecr_publisher(ctx.settings, ctx.clients)
    publisher = ctx.image_publisher
    return publisher if isinstance(publisher, RegistryPublisher) else None


def delete_image_message(reference: str, tag: str | None = None) -> str:
    """The imports queue's message that deletes an image from the repository (only the import
    function may, the repository's policy says so)."""
    from gantry.messages import DeleteImage

    return DeleteImage(reference=reference, tag=tag).model_dump_json()


def in_repository(settings: Settings, reference: str) -> bool:
    """Whether ``<registry>/<repository>[:tag][@digest]`` names an image of this deployment's
    repository, whatever host name it gives the registry (ECR answers to several)."""
    if not settings.image_repository:
        return False
    return repository_named(reference).lower() == settings.image_repository.lower()


def repository_named(reference: str) -> str:
    """The repository of ``<registry>/<repository>[:tag][@digest]`` (no tag, no digest)."""
    name = reference.partition("@")[0]
    path = name.partition("/")[2]
    head, _, last = path.rpartition("/")
    return f"{head}/{last.partition(':')[0]}" if head else last.partition(":")[0]


def repository_digest(settings: Settings, reference: str) -> str | None:
    """The digest of ``<registry>/<repository>@sha256:…`` when it is an image of this
    deployment's repository; None for anything else (an image registered by reference)."""
    if "@" not in reference or not in_repository(settings, reference):
        return None
    digest = reference.partition("@")[2]
    return digest if digest.startswith("sha256:") else None


def queue_deletion(ctx: Context, image: AlgorithmImage) -> bool:
    """Ask the import function to delete ``image`` from the repository (its record is being
    removed); False when the image is not in this deployment's repository."""
    if repository_digest(ctx.settings, image.image) is None:
        return False
    from gantry.pipeline.imports import queue_import

    queue_import(ctx, delete_image_message(image.image, image_tag(image.pk)))
    return True


def delete_image(ctx: Context, reference: str, tag: str | None = None) -> bool:
    """Delete the image ``reference`` names from the repository, through ECR's API; False
    when it is not this repository's or was already gone. With ``tag`` (the removed image's
    ``image-<pk>``) only that tag goes: the same archive imported into another algorithm is
    the same manifest under that image's tag, and stays; ECR deletes the manifest with its
    last tag, and its layers once no image uses them."""
    digest = repository_digest(ctx.settings, reference)
    if digest is None:
        return False
    image_id = {"imageTag": tag} if tag else {"imageDigest": digest}
    answer = ctx.clients.client("ecr").batch_delete_image(
        repositoryName=ctx.settings.image_repository, imageIds=[image_id]
    )
    for failure in answer.get("failures", []):
        if failure.get("failureCode") != "ImageNotFound":
            raise RegistryError(
                f"ECR could not delete {reference}: {failure.get('failureCode')} "
                f"{failure.get('failureReason', '')}"
            )
    return bool(answer.get("imageIds"))


def _manifest_digest(registry: Registry, repository: str, tag: str) -> str | None:
    """The digest of ``repository:tag`` when the registry holds it."""
    from gantry.oci.mutate import sha256_digest

    try:
        raw, _ = registry.get_manifest(repository, tag)
    except RegistryError as error:
        if "has no image" in str(error):
            return None
        raise
    return sha256_digest(raw)


@dataclass
class _Counter:
    bytes: int = 0


class _TimedStream:
    """A stream that raises ``ImportTimedOut`` once the deadline has passed."""

    def __init__(
        self, stream: IO[bytes], deadline: float | None, sent: _Counter, message: str
    ) -> None:
        self._stream, self._deadline, self._sent = stream, deadline, sent
        self._message = message

    def read(self, size: int = -1) -> bytes:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise ImportTimedOut(self._message)
        data = self._stream.read(size)
        self._sent.bytes += len(data)
        return data

    def __enter__(self) -> _TimedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


def timed_stream(stream: IO[bytes], deadline: float | None, message: str) -> IO[bytes]:
    """``stream``, raising ``ImportTimedOut(message)`` on a read past ``deadline``."""
    return cast("IO[bytes]", _TimedStream(stream, deadline, _Counter(), message))


@dataclass
class _TimedArchive:
    """The archive as ``push_with_runner`` reads it, each layer stream under the deadline."""

    archive: Any
    deadline: float | None
    sent: _Counter

    @property
    def config(self) -> Any:
        return self.archive.config

    @property
    def config_blob(self) -> bytes:
        return bytes(self.archive.config_blob)

    def layer_streams(self, wanted: set[str]) -> Iterator[tuple[Any, IO[bytes]]]:
        for layer, stream in self.archive.layer_streams(wanted):
            timed = _TimedStream(stream, self.deadline, self.sent, "deadline passed")
            yield layer, timed  # type: ignore[misc]
