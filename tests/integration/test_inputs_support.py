"""Helpers of the input-validation and drop-folder tests (no tests here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gantry.algorithms import Algorithm, AlgorithmFields, AlgorithmImage, AlgorithmImageFields
from gantry.context import Context
from gantry.interfaces import Interface, InterfaceFields
from gantry.jobs import Job
from gantry.resources import upload_key
from gantry.services.jobs import JobCreate, JobInput, create_job
from gantry.uploads import Upload, UploadStatus
from gantry.urls import Urls

ALICE = "alice"


class RecordingCompute:
    """A compute backend (Gantry's own interface) that records what it was asked to start."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, job: Job, image: AlgorithmImage, invocation_uri: str) -> str:
        self.submitted.append(job.pk)
        return f"compute-{job.pk}-{job.attempt}"

    def cancel(self, compute_job_id: str) -> None:
        return None

    def describe(self, compute_job_id: str) -> None:
        return None


def make_socket(ctx: Context, title: str, kind: str, relative_path: str, **extra: Any) -> Interface:
    fields = InterfaceFields(title=title, kind=kind, relative_path=relative_path, **extra)
    return ctx.store.sockets.create(fields, creator=ALICE)


def make_algorithm(
    ctx: Context,
    title: str,
    inputs: list[str],
    outputs: list[str],
    *,
    users: list[str] | None = None,
    more_sets: list[tuple[list[str], list[str]]] = (),  # type: ignore[assignment]
) -> Algorithm:
    sets = [{"inputs": inputs, "outputs": outputs}]
    sets += [{"inputs": i, "outputs": o} for i, o in more_sets]
    fields = AlgorithmFields(title=title, interfaces=sets, users=users or [])
    algorithm = ctx.store.algorithms.create(fields, creator=ALICE)
    ctx.store.algorithms.create_image(
        algorithm, AlgorithmImageFields(image="local", command=["run"]), creator=ALICE
    )
    return algorithm


def put_upload(ctx: Context, filename: str, body: bytes | Path, owner: str = ALICE) -> Upload:
    """A completed upload, as the uploads API leaves it."""
    import uuid

    from gantry import timeutil

    pk = str(uuid.uuid4())
    key = upload_key(owner, pk, filename)
    data = body.read_bytes() if isinstance(body, Path) else body
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=key, Body=data)
    upload = Upload(
        pk=pk,
        creator=owner,
        filename=filename,
        key=key,
        s3_upload_id="test",
        status=UploadStatus.COMPLETED,
        created=timeutil.iso(),
        size=len(data),
    )
    return ctx.store.uploads.create(upload)


def new_job(ctx: Context, algorithm: Algorithm, inputs: list[JobInput], owner: str = ALICE) -> Job:
    user = ctx.store.users.ensure_user(owner)
    body = JobCreate(algorithm=algorithm.pk, inputs=inputs)
    return create_job(ctx, user, body, Urls(ctx.settings.api_base_url))


def read_key(ctx: Context, key: str) -> bytes:
    return ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=key)["Body"].read()
