"""Job creation: match the inputs to one socket set, validate values, store the job.

Inline JSON values are checked here. Uploaded files and images are only checked for
ownership, state and file type here; their content is checked (and images imported)
asynchronously, with the job in "Validating inputs" until then.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gantry import access, credits, quotas, timeutil
from gantry.access import Action
from gantry.algorithms import Algorithm, AlgorithmImage, SocketSet
from gantry.context import Context, JobCatalog
from gantry.errors import NotFound, PermissionDenied, ValidationFailed
from gantry.interfaces import MAX_JSON_BYTES, Interface, InterfaceValueError, validate_value
from gantry.job_states import JobStatus
from gantry.jobs import Job, SocketValue
from gantry.kinds import accepts_upload, spec
from gantry.services import catalog
from gantry.store.algorithm_models import DesiredModel
from gantry.uploads import UploadStatus
from gantry.urls import Urls
from gantry.users import User

MAX_INPUTS = 64
MAX_UPLOADS_PER_INPUT = 2048
MAX_VIEWERS = 100
# All inline values live in the job's record, one DynamoDB item of at most 400 KB.
MAX_INLINE_BYTES = 256 * 1024
# Each viewer added or removed is 3 writes of the job's one transaction (at most 100 items).
MAX_VIEWER_CHANGES = 33


class JobInput(BaseModel):
    """One input as gcapi sends it: all eight keys, nulls for the unused ones."""

    model_config = ConfigDict(extra="forbid")

    interface: str = Field(min_length=1, max_length=255)
    value: Any | None = None
    file: str | None = None
    image: str | None = None
    upload_session: str | None = None
    user_upload: str | None = None
    user_uploads: list[str] | None = Field(default=None, max_length=MAX_UPLOADS_PER_INPUT)
    image_name: str | None = Field(default=None, max_length=255)


class JobSharing(BaseModel):
    """Who besides the creator sees a job's data (a Gantry extension of grand-challenge's job
    viewers): each given field replaces what is stored."""

    model_config = ConfigDict(extra="forbid")

    viewers: list[str] | None = Field(
        default=None,
        max_length=MAX_VIEWERS,
        description="user names who see the job and its inputs and outputs",
    )
    share_with_editors: bool | None = Field(
        default=None, description="the algorithm's editors see the inputs and outputs too"
    )


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: str = Field(min_length=1, max_length=1024)
    inputs: list[JobInput] = Field(default_factory=list, max_length=MAX_INPUTS)


def _describe(socket_set: SocketSet) -> str:
    return "[" + ", ".join(socket_set.inputs) + "]"


def choose_socket_set(
    algorithm: Algorithm, provided: set[str], sockets: dict[str, Interface]
) -> int:
    """The one socket set these inputs fit: all given, the rest have defaults."""
    exact = [i for i, s in enumerate(algorithm.interfaces) if set(s.inputs) == provided]
    if len(exact) == 1:
        return exact[0]
    fitting = [
        i
        for i, s in enumerate(algorithm.interfaces)
        if provided <= set(s.inputs)
        and all(
            slug in provided or (slug in sockets and sockets[slug].default_value is not None)
            for slug in s.inputs
        )
    ]
    if len(fitting) == 1:
        return fitting[0]
    allowed = " or ".join(_describe(s) for s in algorithm.interfaces)
    given = "[" + ", ".join(sorted(provided)) + "]"
    if fitting:
        raise ValidationFailed(
            f"The inputs {given} fit more than one of this algorithm's interfaces "
            f"({allowed}); give all inputs of one",
            field="inputs",
        )
    raise ValidationFailed(
        f"The inputs {given} do not match any of this algorithm's interfaces; "
        f"allowed input sets: {allowed}",
        field="inputs",
    )


def create_job(
    ctx: Context,
    user: User,
    body: JobCreate,
    urls: Urls,
    *,
    pk: str | None = None,
    source: str = "api",
    source_ref: str | None = None,
    enforce_limits: bool = False,
) -> Job:
    """Check the inputs, store the job and hand it to the pipeline.

    ``pk`` lets a caller that must create a job exactly once (the drop folder) name it: a
    second create with the same pk raises Conflict and stores nothing.

    The job counts against the active-job limits; with ``enforce_limits`` a full limit
    refuses it with TooManyRequests instead (HTTP answers 429; the drop folder leaves the drop
    waiting). An API job spends the creator's monthly credits (gantry.credits); with
    ``enforce_limits`` too few left refuses it with ValidationFailed (HTTP 400, as
    grand-challenge answers; gcapi retries 429s, which would not help until next month)."""
    try:
        algorithm = catalog.referenced_algorithm(ctx, user, urls, body.algorithm)
    except NotFound as error:
        raise ValidationFailed(
            f"Algorithm '{body.algorithm}' not found", field="algorithm"
        ) from error
    from gantry.services.bioimageio import not_ready

    importing = not_ready(algorithm)
    if importing:
        raise ValidationFailed(importing, field="algorithm")
    image = ctx.store.algorithms.desired_image(algorithm.pk)
    if image is None:
        raise ValidationFailed("Algorithm image is not ready to be used", field="algorithm")
    model = ctx.store.models.desired(algorithm.pk)

    by_slug: dict[str, JobInput] = {}
    for item in body.inputs:
        if item.interface in by_slug:
            raise ValidationFailed(f"Interface '{item.interface}' is given twice", field="inputs")
        by_slug[item.interface] = item
    sockets = catalog.sockets_of(ctx, [algorithm])
    index = choose_socket_set(algorithm, set(by_slug), sockets)
    socket_set = algorithm.interfaces[index]

    drafts: list[dict[str, Any]] = []
    input_images: list[str] = []
    for slug in socket_set.inputs:
        socket = sockets[slug]
        given = by_slug.get(slug)
        if given is None:
            drafts.append({"socket": slug, "value": socket.default_value})
            continue
        draft = check_input(ctx, user, socket, given, urls)
        if draft.get("image"):
            input_images.append(draft["image"])
        drafts.append(draft)

    inline = sum(
        len(json.dumps(d["value"], separators=(",", ":")).encode()) for d in drafts if "value" in d
    )
    if inline > MAX_INLINE_BYTES:
        raise ValidationFailed(
            f"The inputs given inline are {inline} bytes as JSON, at most "
            f"{MAX_INLINE_BYTES // 1024} KiB together; upload the larger ones as files",
            field="inputs",
        )
    pks = ctx.store.table.next_ids("socket_value", len(drafts))
    values = [SocketValue(pk=pk, **draft) for pk, draft in zip(pks, drafts, strict=True)]
    now = timeutil.now()
    job = new_job(
        user,
        algorithm,
        image,
        model,
        index,
        values,
        pk=pk or str(uuid.uuid4()),
        source=source,
        source_ref=source_ref,
        moment=timeutil.iso(now),
    )
    limits = quotas.limits_for(ctx.settings, job.creator, job.algorithm)
    # Drop-folder jobs are free: writing to the bucket already takes the operator's access.
    charge = (
        None
        if source == "dropbox"
        else credits.charge_for(ctx.settings, user, algorithm, image.pk, now)
    )
    job = ctx.store.jobs.create(
        job, input_images=input_images, limits=limits, enforce=enforce_limits, charge=charge
    )
    ctx.store.sockets.mark_used([sockets[s] for s in (*socket_set.inputs, *socket_set.outputs)])
    ctx.store.algorithms.mark_set_used(algorithm.pk, index)
    ctx.job_created(job, JobCatalog(algorithm=algorithm, image=image, sockets=sockets))
    return job


def new_job(
    user: User,
    algorithm: Algorithm,
    image: AlgorithmImage,
    model: DesiredModel | None,
    index: int,
    values: list[SocketValue],
    *,
    pk: str,
    source: str,
    source_ref: str | None,
    moment: str,
) -> Job:
    """A job of ``algorithm``'s ``image`` (and model) on checked input values, not stored."""
    # Here, not at the top: the contract builds the runner's models, which the API never uses.
    from gantry.contract import new_signing_key

    pending = any(v.pending_upload or v.pending_uploads for v in values)
    return Job(
        pk=pk,
        algorithm=algorithm.pk,
        algorithm_image=image.pk,
        algorithm_image_sha256=image.sha256,
        algorithm_model=model.pk if model else None,
        algorithm_model_sha256=model.sha256 if model else None,
        socket_set=index,
        creator=user.username,
        status=JobStatus.VALIDATING_INPUTS if pending else JobStatus.PENDING,
        inputs=values,
        time_limit=algorithm.time_limit,
        requires_gpu_type=algorithm.requires_gpu_type.value,
        requires_memory_gb=algorithm.requires_memory_gb,
        signing_key=new_signing_key(),
        created=moment,
        modified=moment,
        source=source,
        source_ref=source_ref,
    )


def share_job(ctx: Context, user: User, job: Job, body: JobSharing) -> Job:
    """Change who sees ``job``'s data; only its creator and admins may (403 otherwise)."""
    if not access.share_job(user, job):
        raise PermissionDenied("Only the job's creator can share its data")
    update: dict[str, Any] = {}
    if body.viewers is not None:
        viewers = list(dict.fromkeys(name for name in body.viewers if name != job.creator))
        unknown = [name for name in viewers if ctx.store.users.find_user(name) is None]
        if unknown:
            raise ValidationFailed(f"Unknown users: {', '.join(unknown)}", field="viewers")
        changes = len(set(viewers) ^ set(job.viewers))
        if changes > MAX_VIEWER_CHANGES:
            raise ValidationFailed(
                f"Add or remove at most {MAX_VIEWER_CHANGES} viewers at once (got {changes})",
                field="viewers",
            )
        update["viewers"] = viewers
    if body.share_with_editors is not None:
        update["share_with_editors"] = body.share_with_editors
    if not update:
        return job
    return ctx.store.jobs.share(job.pk, update)


def check_input(
    ctx: Context, user: User, socket: Interface, given: JobInput, urls: Urls
) -> dict[str, Any]:
    kind = spec(socket.kind)
    sources = [
        name
        for name in ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
        if getattr(given, name) is not None
    ]
    # A JSON null is a real value for some kinds, so "value" counts when nothing else is given.
    if not sources:
        sources = ["value"]
    if len(sources) > 1:
        raise ValidationFailed(
            f"Input '{socket.slug}': give exactly one of value, image, upload_session, "
            f"user_upload or user_uploads (got {', '.join(sources)})",
            field="inputs",
        )
    source = sources[0]
    if kind.is_json and source == "value":
        try:
            validate_value(socket, given.value)
        except InterfaceValueError as error:
            raise ValidationFailed(str(error), field="inputs") from error
        # Kept in the job's (or item's) record, a DynamoDB item of at most 400 KB: the limit
        # a value given as a file must keep in the database too.
        size = len(json.dumps(given.value, separators=(",", ":")).encode())
        if size > MAX_JSON_BYTES:
            raise ValidationFailed(
                f"Input '{socket.slug}': the value is {size} bytes as JSON; a value given "
                f"inline may be at most {MAX_JSON_BYTES // 1024} KiB (upload a larger one as "
                "a file)",
                field="inputs",
            )
        return {"socket": socket.slug, "value": given.value}
    if kind.is_image and source == "image":
        try:
            image_pk = urls.pk_from(given.image or "", "cases/images/")
            image = ctx.store.images.get(image_pk)
        except (ValueError, NotFound) as error:
            raise ValidationFailed(
                f"Input '{socket.slug}': image '{given.image}' not found", field="inputs"
            ) from error
        # Images of an archive are usable by its members (looked up only for others' images).
        holding = ctx.store.archives.holding(image.pk)
        if not access.image(user, Action.USE, image, holding):
            raise ValidationFailed(
                f"Input '{socket.slug}': image '{given.image}' not found", field="inputs"
            )
        return {"socket": socket.slug, "image": image.pk}
    if kind.is_image and source == "upload_session":
        return _from_upload_session(ctx, user, socket, given.upload_session or "", urls)
    if kind.is_image and source == "user_uploads":
        uploads = [
            _own_completed_upload(ctx, user, socket, ref, urls) for ref in given.user_uploads or []
        ]
        if not uploads:
            raise ValidationFailed(f"Input '{socket.slug}': no uploads given", field="inputs")
        return {"socket": socket.slug, "pending_uploads": uploads}
    if (
        kind.is_file or (kind.is_json and not socket.store_in_database)
    ) and source == "user_upload":
        upload_pk = _own_completed_upload(ctx, user, socket, given.user_upload or "", urls)
        return {"socket": socket.slug, "pending_upload": upload_pk}
    if kind.is_json and source == "user_upload":
        upload_pk = _own_completed_upload(ctx, user, socket, given.user_upload or "", urls)
        return {"socket": socket.slug, "pending_upload": upload_pk}
    expected = (
        "value"
        if kind.is_json
        else ("image, upload_session or user_uploads" if kind.is_image else "user_upload")
    )
    raise ValidationFailed(
        f"Input '{socket.slug}' is a {kind.label}: give {expected}, not {source}", field="inputs"
    )


def _from_upload_session(
    ctx: Context, user: User, socket: Interface, ref: str, urls: Urls
) -> dict[str, Any]:
    """An image input given as an upload session (gcapi up to 0.13): its one image once
    imported; while the session is still importing, the job imports the same uploads itself
    (so it never waits on the session)."""
    from gantry.services import upload_sessions
    from gantry.upload_sessions import UploadSessionStatus

    try:
        session_pk = urls.pk_from(ref, "cases/upload-sessions/")
        session = upload_sessions.get_visible(ctx, user, session_pk)
    except (ValueError, NotFound) as error:
        raise ValidationFailed(
            f"Input '{socket.slug}': upload session '{ref}' not found", field="inputs"
        ) from error
    if session.creator != user.username:
        raise ValidationFailed(
            f"Input '{socket.slug}': upload session '{ref}' not found", field="inputs"
        )
    if session.status is UploadSessionStatus.FAILED:
        raise ValidationFailed(
            f"Input '{socket.slug}': the upload session failed: {session.error_message}",
            field="inputs",
        )
    if session.status is UploadSessionStatus.SUCCEEDED:
        if len(session.images) != 1:
            raise ValidationFailed(
                f"Input '{socket.slug}': the upload session holds {len(session.images)} "
                "images; an image input takes one",
                field="inputs",
            )
        return {"socket": socket.slug, "image": session.images[0]}
    uploads = [_own_completed_upload(ctx, user, socket, pk, urls) for pk in session.uploads]
    return {"socket": socket.slug, "pending_uploads": uploads}


def _own_completed_upload(ctx: Context, user: User, socket: Interface, ref: str, urls: Urls) -> str:
    try:
        upload_pk = urls.pk_from(ref, "uploads/")
        upload = ctx.store.uploads.get(upload_pk)
    except (ValueError, NotFound) as error:
        raise ValidationFailed(
            f"Input '{socket.slug}': upload '{ref}' not found", field="inputs"
        ) from error
    if not access.upload(user, Action.USE, upload):
        raise ValidationFailed(f"Input '{socket.slug}': upload '{ref}' not found", field="inputs")
    if upload.status is not UploadStatus.COMPLETED:
        raise ValidationFailed(
            f"Input '{socket.slug}': upload '{upload.filename}' is not completed", field="inputs"
        )
    kind = spec(socket.kind)
    if not kind.is_json and not accepts_upload(socket.kind, upload.filename):
        allowed = ", ".join(kind.upload_types)
        raise ValidationFailed(
            f"Input '{socket.slug}': '{upload.filename}' is not a valid {kind.label} file "
            f"(allowed: {allowed})",
            field="inputs",
        )
    return upload.pk
