"""The S3 drop folder: files dropped under ``dropbox/<algorithm-slug>/`` become jobs, and the
results of those jobs appear under ``dropbox-results/<algorithm-slug>/<case>/``.

Layout in:
  dropbox/<slug>/<file>                 a single-input algorithm; the case is the file's stem
  dropbox/<slug>/<case>/<file>          a single-input algorithm; the file is that input
  dropbox/<slug>/<case>/inputs.json     {"<interface slug>": "<file name in the case>", ...};
                                        the job starts once inputs.json and every file it
                                        names exist (whichever arrives last starts it)
Layout out (dropbox-results/<slug>/<case>/): the outputs at their relative paths, job.json,
and error.json when no job could be made or the job failed.

Work is re-derived from the bucket, not only from its notifications: ``reconcile_drops`` lists
the drop folder and hands every drop without a newer result to the same handler (a drop whose
notification was lost, or ended in a dead-letter queue, becomes its one job), and writes again
the results of finished jobs whose announcement was lost.

Jobs are made by the API's own service (``create_job``) from Upload records that point at
server-side copies of the dropped objects, so the rules for inputs live in one place.

Exactly once: S3 notifies at least once, so each job is guarded by a claim item
(``IDEMPOTENCY#dropbox#<hash>``) written with a conditional put. The claim's identity is the
object version that starts the job, read from the object itself (its versionId, or its eTag
and last-modified time): the dropped file for a single file, the inputs.json object for a
case, so the late-file event and the inputs.json event of one case claim the same item, and
the reconciling sweep (``reconcile_drops``) claims the same item as the notification would.
A claim is IN_PROGRESS (with a lease) until the job exists, then COMPLETED with the job pk;
a duplicate that finds a live lease fails its record so SQS redelivers it after the first
one finished; an expired lease (a crashed handler) is taken over. The job's pk is derived
from the claim's identity and stored only if absent, so a takeover after a crash at any
moment finds the job the first handler made instead of making a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError
from pydantic import ValidationError

from gantry import access, jsonlimits, resources, timeutil
from gantry.access import Action
from gantry.algorithms import Algorithm
from gantry.aws import copy_object
from gantry.context import Context
from gantry.errors import Conflict, GantryError, NotFound, TooManyRequests
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.kinds import spec
from gantry.messages import JobEnded
from gantry.store import keys
from gantry.store.table import MAIN_SK
from gantry.uploads import Upload, UploadCreate, UploadStatus

logger = logging.getLogger(__name__)

SOURCE = "dropbox"
INPUTS_FILE = "inputs.json"
JOB_FILE = "job.json"
ERROR_FILE = "error.json"
# Longer than any one job creation; a crashed handler's claim is taken over after it.
CLAIM_LEASE_SECONDS = 300
# Present while drops wait for a slot of the drop-folder user (start_waiting_drops).
WAITING_KEY = "DROPBOX#WAITING"
# Claims are kept long enough to absorb S3's late duplicates, then expire (table TTL).
CLAIM_TTL_SECONDS = 30 * 24 * 3600
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"


class ClaimBusy(Exception):
    """Another handler is making this job right now: retry the message later."""


# --- S3 notifications -------------------------------------------------------------------------


@dataclass(frozen=True)
class S3ObjectEvent:
    bucket: str
    key: str  # decoded
    event_name: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: str | None = None

    @property
    def created(self) -> bool:
        return self.event_name.startswith("ObjectCreated")


def s3_object_events(message: dict[str, Any]) -> list[S3ObjectEvent]:
    """The objects of an S3 notification; none for the s3:TestEvent S3 sends on setup."""
    if message.get("Event") == "s3:TestEvent":
        return []
    events = []
    for record in message.get("Records", []):
        s3 = record["s3"]
        obj = s3["object"]
        events.append(
            S3ObjectEvent(
                bucket=s3["bucket"]["name"],
                # Keys arrive form-encoded ('+' for spaces, %XX for the rest).
                key=unquote_plus(obj["key"]),
                event_name=record.get("eventName", ""),
                size=obj.get("size"),
                etag=obj.get("eTag"),
                version_id=obj.get("versionId"),
                sequencer=obj.get("sequencer"),
                event_time=record.get("eventTime"),
            )
        )
    return events


def is_s3_notification(message: dict[str, Any]) -> bool:
    records = message.get("Records")
    return message.get("Event") == "s3:TestEvent" or (
        isinstance(records, list) and all(isinstance(r, dict) and "s3" in r for r in records)
    )


# --- paths --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    slug: str
    case: str
    filename: str
    in_case_folder: bool

    @property
    def ref(self) -> str:
        return f"{self.slug}/{self.case}"

    @property
    def folder(self) -> str:
        return resources.dropbox_folder(self.slug, self.case)

    @property
    def results(self) -> str:
        return resources.dropbox_results_prefix(self.ref)


def _stem(filename: str) -> str:
    lower = filename.lower()
    for suffix in (".nii.gz", ".tar.gz"):
        if lower.endswith(suffix):
            return filename[: -len(suffix)]
    return posixpath.splitext(filename)[0] or filename


def parse_drop_key(key: str) -> Drop | None:
    """The drop a key belongs to, or None for keys that are not drops (folders, dot files)."""
    if not key.startswith(resources.PREFIX_DROPBOX) or key.endswith("/"):
        return None
    parts = key[len(resources.PREFIX_DROPBOX) :].split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[-1].startswith("."):
        return None
    if len(parts) == 2:
        return Drop(parts[0], _stem(parts[1]), parts[1], in_case_folder=False)
    if len(parts) == 3:
        return Drop(parts[0], parts[1], parts[2], in_case_folder=True)
    return None


# --- dropped files -> jobs -------------------------------------------------------------------


class DropWaiting(Exception):
    """The drop-folder user is at a limit of unfinished jobs: the drop waits, unclaimed."""


class DropError(Exception):
    """Why a drop gives no job; written to error.json for the user."""


def handle_dropped_object(ctx: Context, event: S3ObjectEvent) -> str | None:
    """Start the job a dropped object completes; the job pk, or None when none starts."""
    try:
        job_pk, made = _handle_drop(ctx, event)
    except DropWaiting:
        return None
    return job_pk if made else None


def _handle_drop(
    ctx: Context, event: S3ObjectEvent, *, orphaned: bool = False
) -> tuple[str | None, bool]:
    """(the drop's job pk if it has one, whether this call made it). ``orphaned``: no other
    handler can be alive (a restart), so a claim in progress is taken over at once."""
    drop = parse_drop_key(event.key)
    if drop is None or not event.created:
        return None, False
    try:
        algorithm = ctx.store.algorithms.get_by_slug(drop.slug)
    except NotFound:
        write_error(ctx, drop.ref, f"Unknown algorithm '{drop.slug}'")
        return None, False
    if drop.in_case_folder:
        manifest = _head(ctx, drop.folder + INPUTS_FILE)
        if manifest is not None:
            identity = _object_identity(event.bucket, drop.folder + INPUTS_FILE, manifest)
            return _start_case(ctx, algorithm, drop, identity, orphaned=orphaned)
        if drop.filename == INPUTS_FILE:
            return None, False  # deleted again before this event was handled
    single = _single_input(ctx, algorithm)
    if single is None:
        return None, False  # several inputs: wait for inputs.json
    head = _head(ctx, event.key)
    if head is None:
        return None, False  # deleted again before this event was handled
    # The object's own version: a redelivered notification and the reconciling sweep find
    # the same identity; a new drop of the same key has a new one.
    identity = _object_identity(event.bucket, event.key, head)
    return _create_once(ctx, identity, algorithm, drop, {single: drop.filename}, orphaned=orphaned)


def _single_input(ctx: Context, algorithm: Algorithm) -> str | None:
    """The input of the algorithm's only one-input socket set, if it has exactly one."""
    singles = [s.inputs[0] for s in algorithm.interfaces if len(s.inputs) == 1]
    return singles[0] if len(singles) == 1 else None


def _head(ctx: Context, key: str) -> dict[str, Any] | None:
    try:
        return ctx.clients.s3.head_object(Bucket=ctx.settings.bucket_name, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _object_identity(bucket: str, key: str, head: dict[str, Any]) -> str:
    version = head.get("VersionId")
    if version and version != "null":
        return f"{bucket}/{key}#{version}"
    # Unversioned buckets: the same content dropped again has the same eTag but a new time
    # (S3 keeps whole seconds).
    modified = head["LastModified"].astimezone(UTC).replace(microsecond=0)
    return f"{bucket}/{key}#{head.get('ETag', '')}@{modified.isoformat()}"


def _start_case(
    ctx: Context, algorithm: Algorithm, drop: Drop, identity: str, *, orphaned: bool = False
) -> tuple[str | None, bool]:
    case = dataclasses.replace(drop, filename=INPUTS_FILE)
    try:
        body = ctx.clients.s3.get_object(
            Bucket=ctx.settings.bucket_name, Key=drop.folder + INPUTS_FILE
        )["Body"].read(1024 * 1024 + 1)
        mapping = _parse_manifest(body)
    except DropError as error:
        write_error(ctx, drop.ref, str(error))
        return None, False
    for filename in mapping.values():
        if _head(ctx, drop.folder + filename) is None:
            return None, False  # not all there yet: the last file's event starts the job
    return _create_once(ctx, identity, algorithm, case, mapping, orphaned=orphaned)


def _parse_manifest(body: bytes) -> dict[str, str]:
    if len(body) > 1024 * 1024:
        raise DropError(f"{INPUTS_FILE} is larger than 1 MiB")
    try:
        mapping = jsonlimits.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        raise DropError(f"{INPUTS_FILE} is not valid JSON: {error}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DropError(f"{INPUTS_FILE} must map interface slugs to file names")
    for slug, filename in mapping.items():
        if (
            not isinstance(filename, str)
            or "/" in filename
            or filename in ("", ".", "..", INPUTS_FILE)
        ):
            raise DropError(
                f"{INPUTS_FILE}: '{slug}' must name a file in the case folder, not {filename!r}"
            )
    return mapping


# --- exactly one job per drop -----------------------------------------------------------------


def _claim_key(identity: str) -> str:
    return keys.idempotency("dropbox#" + hashlib.sha256(identity.encode()).hexdigest())


def _claim(
    ctx: Context, claim_pk: str, identity: str, *, orphaned: bool = False
) -> tuple[bool, str | None]:
    """(True, None) when this handler must make the job; (False, job pk) when it is done.
    ``orphaned``: the lease of a claim in progress counts as expired (its holder is gone)."""
    table = ctx.store.table
    now = int(time.time())
    fresh = table.item(
        claim_pk,
        MAIN_SK,
        None,
        state=IN_PROGRESS,
        identity=identity,
        lease_until=now + CLAIM_LEASE_SECONDS,
        **{resources.TTL_ATTRIBUTE: now + CLAIM_TTL_SECONDS},
    )
    if table.put_if_absent(fresh):
        return True, None
    item = table.get_item(claim_pk) or {}
    if item.get("state") == COMPLETED:
        return False, item.get("job_pk")
    if item.get("job_pk"):
        # A handler of an earlier version (which named the job on the claim as it made it,
        # under a random pk) stopped before completing the claim: that job stands.
        _complete_claim(ctx, claim_pk, job_pk=str(item["job_pk"]))
        return False, str(item["job_pk"])
    taken_at = int(item.get("lease_until", 0)) - CLAIM_LEASE_SECONDS
    if ctx.claims_orphaned_before is not None and taken_at < ctx.claims_orphaned_before:
        orphaned = True  # taken by a run of the stack that has ended (a crash)
    if int(item.get("lease_until", 0)) > now and not orphaned:
        raise ClaimBusy(f"the drop {identity} is being handled")
    # Take over an expired lease; of two takers only one passes the condition.
    taken = table.set_attributes(
        claim_pk,
        {"lease_until": now + CLAIM_LEASE_SECONDS},
        expected={"lease_until": item.get("lease_until", 0), "state": IN_PROGRESS},
    )
    if not taken:
        raise ClaimBusy(f"the drop {identity} is being handled")
    return True, None


def _complete_claim(ctx: Context, claim_pk: str, *, job_pk: str | None, error: str = "") -> None:
    values: dict[str, Any] = {"state": COMPLETED}
    if job_pk:
        values["job_pk"] = job_pk
    if error:
        values["error"] = error
    ctx.store.table.set_attributes(claim_pk, values)


def _create_once(
    ctx: Context,
    identity: str,
    algorithm: Algorithm,
    drop: Drop,
    mapping: dict[str, str],
    *,
    orphaned: bool = False,
) -> tuple[str | None, bool]:
    """The one place a drop becomes a job: (job pk or None, whether this call made it)."""
    claim_pk = _claim_key(identity)
    mine, done_job = _claim(ctx, claim_pk, identity, orphaned=orphaned)
    if not mine:
        return done_job, False  # a duplicate: the drop already has its job (or error.json)
    try:
        job = _create_job(ctx, identity, algorithm, drop, mapping)
    except DropWaiting as waiting:
        # No result and no claim: the drop starts when a slot frees (a drop-folder job's end,
        # or the reconciling sweep), through this same claim.
        logger.info("drop %s waits: %s", drop.ref, waiting)
        ctx.store.table.delete(claim_pk, MAIN_SK)
        ctx.store.table.put(ctx.store.table.item(WAITING_KEY, MAIN_SK, None, since=timeutil.iso()))
        raise
    except DropError as error:
        write_error(ctx, drop.ref, str(error))
        _complete_claim(ctx, claim_pk, job_pk=None, error=str(error))
        return None, False
    _complete_claim(ctx, claim_pk, job_pk=job.pk)
    return job.pk, True


def _create_job(
    ctx: Context,
    identity: str,
    algorithm: Algorithm,
    drop: Drop,
    mapping: dict[str, str],
) -> Job:
    from gantry.services.jobs import JobCreate, JobInput, create_job
    from gantry.urls import Urls

    owner = ctx.store.users.ensure_user(ctx.settings.dropbox_owner)
    if not access.algorithm(owner, Action.USE, algorithm):
        raise DropError(
            f"Algorithm '{algorithm.slug}' does not take drop folder jobs: add the user "
            f"'{owner.username}' to its users"
        )
    sockets = ctx.store.sockets.get_many_by_slug(sorted(mapping))
    unknown = sorted(set(mapping) - set(sockets))
    if unknown:
        raise DropError(f"Unknown interface(s) in {INPUTS_FILE}: {', '.join(unknown)}")
    inputs = []
    for slug, filename in mapping.items():
        upload = _upload_copy(ctx, owner.username, identity, slug, drop.folder, drop, filename)
        if spec(sockets[slug].kind).is_image:
            inputs.append(JobInput(interface=slug, user_uploads=[upload.pk]))
        else:
            inputs.append(JobInput(interface=slug, user_upload=upload.pk))

    # Named after the drop: a handler that takes over after a crash, whatever the moment of
    # the crash, creates the same job or finds it made, never a second one.
    pk = str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:dropbox:{identity}"))
    urls = Urls(ctx.settings.api_base_url or "https://localhost/api/v1/")
    body = JobCreate(algorithm=algorithm.pk, inputs=inputs)
    try:
        return create_job(
            ctx,
            owner,
            body,
            urls,
            pk=pk,
            source=SOURCE,
            source_ref=drop.ref,
            enforce_limits=True,
        )
    except TooManyRequests as error:
        raise DropWaiting(error.message) from None
    except Conflict:
        made = ctx.store.jobs.get(pk)
        # The crash may have come before the pipeline heard of the job; telling it again is
        # harmless (provisioning and input validation are idempotent).
        if made.status in (JobStatus.VALIDATING_INPUTS, JobStatus.PENDING):
            ctx.job_created(made)
        return made
    except GantryError as error:
        raise DropError(error.message) from None


def _upload_copy(
    ctx: Context,
    owner: str,
    identity: str,
    slug: str,
    folder: str,
    drop: Drop,
    filename: str,
) -> Upload:
    """An owner's completed upload holding a server-side copy of the dropped file."""

    try:
        UploadCreate(filename=filename)
    except ValidationError:
        raise DropError(f"The file name {filename!r} is not allowed") from None
    pk = str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:dropbox:{identity}:{slug}"))
    try:
        return ctx.store.uploads.get(pk)
    except NotFound:
        pass
    source = (folder if drop.in_case_folder else resources.dropbox_folder(drop.slug)) + filename
    key = resources.upload_key(owner, pk, filename)
    bucket = ctx.settings.bucket_name
    try:
        copy_object(ctx.clients.s3, bucket, source, key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise DropError(f"The file '{filename}' is gone") from None
        raise
    size = ctx.clients.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    upload = Upload(
        pk=pk,
        creator=owner,
        filename=filename,
        key=key,
        s3_upload_id="",
        status=UploadStatus.COMPLETED,
        created=timeutil.iso(),
        size=size,
    )
    return ctx.store.uploads.create(upload)


def write_error(ctx: Context, ref: str, reason: str, **extra: Any) -> None:
    _put_json(ctx, resources.dropbox_results_prefix(ref) + ERROR_FILE, {"reason": reason, **extra})


def _put_json(ctx: Context, key: str, body: Any) -> None:
    ctx.clients.s3.put_object(
        Bucket=ctx.settings.bucket_name,
        Key=key,
        Body=json.dumps(body, indent=2).encode(),
        ContentType="application/json",
    )


# --- job events -> results -------------------------------------------------------------------


def handle_job_event(ctx: Context, ended: JobEnded) -> bool:
    """Write a finished drop-folder job's outputs and job.json; False for other jobs.

    Every write overwrites the same keys, so a repeated event leaves the same result.
    """
    ref = ended.source_ref or ""
    if ended.source != SOURCE or not _safe_ref(ref):
        return False
    prefix = resources.dropbox_results_prefix(ref)
    bucket = ctx.settings.bucket_name
    written = []
    for output in ended.outputs:
        relative = output.relative_path or output.socket or "output"
        if not _safe_ref(relative):
            continue
        keys_out: list[str] = []
        if output.image_keys:
            for source in output.image_keys:
                target = f"{prefix}{relative}/{posixpath.basename(source)}"
                copy_object(ctx.clients.s3, bucket, source, target)
                keys_out.append(target)
        elif output.key:
            copy_object(ctx.clients.s3, bucket, output.key, prefix + relative)
            keys_out.append(prefix + relative)
        else:
            _put_json(ctx, prefix + relative, output.value)
            keys_out.append(prefix + relative)
        written.append({"socket": output.socket, "relative_path": relative, "keys": keys_out})
    job = ctx.store.jobs.find(ended.job)
    # An event without the durations (sent by an earlier version) takes them from the job.
    sent = ended.model_fields_set
    summary: dict[str, Any] = {
        "job": ended.job,
        "algorithm": ended.algorithm_slug,
        "status": ended.status,
        "error_message": ended.error_message or "",
        "exec_duration": ended.exec_duration
        if "exec_duration" in sent
        else (job.exec_duration if job else None),
        "invoke_duration": ended.invoke_duration
        if "invoke_duration" in sent
        else (job.invoke_duration if job else None),
        "created": job.created if job else None,
        "started_at": job.started_at if job else None,
        "completed_at": job.completed_at if job else None,
        "outputs": written,
    }
    _put_json(ctx, prefix + JOB_FILE, summary)
    if ended.failed:
        write_error(ctx, ref, summary["error_message"] or "The job failed", job=ended.job)
    start_waiting_drops(ctx)
    return True


def start_waiting_drops(ctx: Context) -> DropSweep | None:
    """A drop-folder job ended, so a slot may be free: start the drops that wait for one.
    Only when some wait (a marker item), so ordinary job ends list nothing."""
    if ctx.store.table.pop(WAITING_KEY) is None:
        return None
    return reconcile_drops(ctx)


def _safe_ref(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


# --- reconciling sweep ------------------------------------------------------------------------

# Claims expire after CLAIM_TTL_SECONDS: older drops are never looked at again, or a drop whose
# claim is gone would make a second job.
RECONCILE_MAX_AGE_SECONDS = CLAIM_TTL_SECONDS - 24 * 3600


@dataclass
class DropSweep:
    started: list[str] = field(default_factory=list)  # jobs made for drops nobody had handled
    announced: list[str] = field(default_factory=list)  # finished jobs whose results were lost
    busy: int = 0  # drops another handler is making a job for right now
    waiting: bool = False  # drops wait for a slot of the drop-folder user


def reconcile_drops(
    ctx: Context, *, settle_seconds: float = 0.0, orphaned: bool = False
) -> DropSweep:
    """Make the job of every drop that has none, and write the results of finished drop-folder
    jobs that have none, from the bucket's content alone.

    Each drop without a result newer than itself goes through the same handler and claim as
    its notification, so a drop that the queue also delivers still gets one job. Drops younger
    than ``settle_seconds`` are left to their notification. ``orphaned``: no handler of the
    drop folder runs (a start after a crash), so claims left in progress are taken over now
    rather than when their lease runs out."""
    from gantry.pipeline.lifecycle import job_event_detail

    report = DropSweep()
    bucket = ctx.settings.bucket_name
    now = timeutil.now()
    newest = now - timedelta(seconds=settle_seconds)
    oldest = now - timedelta(seconds=RECONCILE_MAX_AGE_SECONDS)
    results = _result_times(ctx)
    for key, modified, etag in _listing(ctx, resources.PREFIX_DROPBOX):
        drop = parse_drop_key(key)
        if drop is None or not oldest <= modified <= newest:
            continue
        result = results.get(drop.ref)
        if result is not None and result >= modified:
            continue  # handled: its job.json or error.json came after it
        event = S3ObjectEvent(bucket, key, "ObjectCreated:Put", etag=etag)
        try:
            job_pk, made = _handle_drop(ctx, event, orphaned=orphaned)
        except ClaimBusy:
            report.busy += 1
            continue
        except DropWaiting:
            # The drop-folder user is at a limit: later drops would wait too. The next end
            # of a drop-folder job (start_waiting_drops) or sweep goes on from here.
            report.waiting = True
            break
        if made and job_pk:
            logger.info("the reconciling sweep made job %s for %s", job_pk, key)
            report.started.append(job_pk)
            continue
        job = ctx.store.jobs.find(job_pk) if job_pk else None
        if job is not None and job.status.is_terminal and job.pk not in report.announced:
            # Finished, but its announcement never reached the drop folder.
            handle_job_event(ctx, job_event_detail(ctx, job))
            report.announced.append(job.pk)
    return report


def _listing(ctx: Context, prefix: str) -> Any:
    pages = ctx.clients.s3.get_paginator("list_objects_v2").paginate(
        Bucket=ctx.settings.bucket_name, Prefix=prefix
    )
    for page in pages:
        for entry in page.get("Contents", []):
            yield entry["Key"], entry["LastModified"].astimezone(UTC), entry.get("ETag")


def _result_times(ctx: Context) -> dict[str, datetime]:
    """Case ref -> when its latest job.json or error.json was written."""
    times: dict[str, datetime] = {}
    for key, modified, _etag in _listing(ctx, resources.PREFIX_DROPBOX_RESULTS):
        ref, _, name = key[len(resources.PREFIX_DROPBOX_RESULTS) :].rpartition("/")
        if name in (JOB_FILE, ERROR_FILE) and (ref not in times or times[ref] < modified):
            times[ref] = modified
    return times
