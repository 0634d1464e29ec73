"""Archive runs: one algorithm over the items of an archive, a job per item.

Fan-out through SQS, a page of items per message: the handler of a page makes that page's
jobs (a Lambda makes 100 jobs in seconds, whatever the archive's size), then moves the run's
cursor on and queues the next page. A chain of small messages rather than one long loop, so no
handler runs into its time limit, a failed page is retried alone (and ends in the queue's DLQ
after its receive count), and the queue absorbs many runs at once. (Step Functions would give
the same with a Map state, at a price per state transition and with a second way to express
what the handler already does; a message per page is all the coordination this needs.)

Exactly one job per item: the job's pk derives from the run and the item, so a page handled
twice (SQS delivers at least once; the sweeper resends the page of a run that seems stuck)
finds the job made (Conflict) instead of making a second one. Only the handler that finds
the run's cursor still at its page moves it on (a versioned write), so duplicates do not
multiply down the chain.

Limits and credits: jobs are made as their creator's, through the API's own service, with
the limits enforced. An item over a limit of unfinished jobs waits, as a drop-folder job
does: the run stops at that page (state "Waiting for a free job slot") and goes on from it
when one of its jobs ends (its "Gantry Job …" event reaches this queue) or at the sweeper's
next pass. Too few credits stop the run, saying so; its jobs made so far go on.

An item whose inputs already gave a successful job of the same algorithm image, for the same
user, is skipped (that job is its result) unless the run asks to re-run. With
``write_back``, each successful job's outputs become values of its item, under the output
sockets, replacing earlier ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from typing import Any

from gantry import access, credits, quotas, resources, timeutil
from gantry.access import Action
from gantry.algorithms import Algorithm, AlgorithmImage
from gantry.archives import Archive, ArchiveItem, ArchiveRun, RunState
from gantry.aws import copy_object
from gantry.context import Context
from gantry.errors import NotFound, TooManyRequests, ValidationFailed
from gantry.images import Image
from gantry.interfaces import Interface
from gantry.job_states import JobStatus
from gantry.jobs import SocketValue
from gantry.messages import ArchiveRunCancel, ArchiveRunPage, JobEnded
from gantry.store.archive_runs import IMPORTING, NOT_RUN, SKIPPED
from gantry.urls import Urls
from gantry.users import User

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
# Records of a cancelled run whose jobs are cancelled per message.
CANCEL_PAGE = 200
# Values of archive items are checked as job inputs; only images need URLs (as pks).
_URLS = Urls("https://localhost/api/v1/")
SOURCE = resources.JOB_SOURCE_ARCHIVE_RUN


class _Waiting(Exception):
    """The run's creator is at a limit of unfinished jobs."""


class _Stop(Exception):
    """The run cannot go on (too few credits)."""


def page_message(run_pk: str, cursor: dict[str, Any] | None) -> str:
    return ArchiveRunPage(run=run_pk, cursor=cursor).model_dump_json()


def cancel_message(run_pk: str, cursor: dict[str, Any] | None) -> str:
    return ArchiveRunCancel(run=run_pk, cursor=cursor).model_dump_json()


def send_page(ctx: Context, run_pk: str, cursor: dict[str, Any] | None) -> None:
    ctx.clients.sqs.send_message(
        QueueUrl=ctx.settings.archive_runs_queue_url, MessageBody=page_message(run_pk, cursor)
    )


def send_cancel(ctx: Context, run_pk: str, cursor: dict[str, Any] | None) -> None:
    ctx.clients.sqs.send_message(
        QueueUrl=ctx.settings.archive_runs_queue_url, MessageBody=cancel_message(run_pk, cursor)
    )


def job_pk_for(run_pk: str, item_pk: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:archive-run:{run_pk}:{item_pk}"))


def source_ref(run_pk: str, item_pk: str) -> str:
    return f"{run_pk}/{item_pk}"


def fingerprint(creator: str, image_pk: str, values: list[SocketValue]) -> str:
    """The identity of a job's work: who, which algorithm image, which input values."""
    inputs = sorted(
        (v.socket, v.image or "", json.dumps(v.value, sort_keys=True), v.file or "") for v in values
    )
    text = json.dumps([creator, image_pk, inputs], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --- pages of items -> jobs -------------------------------------------------------------------


def handle_page(ctx: Context, run_pk: str, cursor: dict[str, Any] | None) -> None:
    runs = ctx.store.archive_runs
    run = runs.get(run_pk)
    if run.state.makes_no_more_jobs or run.cursor != cursor:
        return  # finished, or a duplicate of a page already handled
    items, next_cursor = _page(ctx, run)
    waiting, stopped = False, ""
    try:
        _start_items(ctx, run, items)
    except _Waiting:
        waiting = True
    except _Stop as stop:
        stopped = str(stop)
    if runs.get(run_pk).state is RunState.CANCELLED:
        # Cancelled while this page made its jobs: cancel those too.
        send_cancel(ctx, run_pk, None)
        return
    if waiting:
        _set_state(ctx, run_pk, cursor, RunState.WAITING)
        return
    if stopped:
        _set_state(ctx, run_pk, cursor, RunState.STOPPED, reason=stopped)
        runs.unmark_active(run_pk)
        return
    last = next_cursor is None
    moved: list[ArchiveRun] = []

    def advance(current: ArchiveRun) -> ArchiveRun | None:
        moved.clear()
        if current.cursor != cursor or current.state.makes_no_more_jobs:
            return None
        new = current.model_copy(
            update={
                "cursor": next_cursor,
                "pages": current.pages + 1,
                "state": RunState.CREATED if last else RunState.CREATING,
            }
        )
        moved.append(new)
        return new

    runs.update(run_pk, advance)
    if not moved:
        return
    if last:
        runs.unmark_active(run_pk)
    else:
        send_page(ctx, run_pk, next_cursor)


def _set_state(
    ctx: Context, run_pk: str, cursor: dict[str, Any] | None, state: RunState, reason: str = ""
) -> None:
    def change(current: ArchiveRun) -> ArchiveRun | None:
        if current.cursor != cursor or current.state.makes_no_more_jobs:
            return None
        return current.model_copy(update={"state": state, "stopped_reason": reason})

    ctx.store.archive_runs.update(run_pk, change)


def _page(ctx: Context, run: ArchiveRun) -> tuple[list[ArchiveItem], dict[str, Any] | None]:
    if run.items is None:
        return ctx.store.archives.items_after(run.archive, run.cursor, limit=PAGE_SIZE)
    start = int((run.cursor or {}).get("index", 0))
    pks = run.items[start : start + PAGE_SIZE]
    found = ctx.store.archives.get_items(pks)
    for pk in pks:
        if pk not in found:
            ctx.store.archive_runs.record(
                run.pk, pk, job=None, outcome=NOT_RUN, reason="the item no longer exists"
            )
    items = [found[pk] for pk in pks if pk in found and found[pk].archive == run.archive]
    end = start + PAGE_SIZE
    return items, ({"index": end} if end < len(run.items) else None)


def _start_items(ctx: Context, run: ArchiveRun, items: list[ArchiveItem]) -> None:
    """Make the jobs of a page of items: what is read once per page is read once (the
    algorithm, its sockets, image and model, the items' images, earlier jobs of the same
    inputs), and the jobs are written many per transaction with their records
    (``JobStore.create_many``), the limits and credits checked there for all at once."""
    from gantry.services import catalog

    if not items:
        return
    runs = ctx.store.archive_runs
    done = runs.outcomes(run.pk, [i.pk for i in items])
    items = [item for item in items if item.pk not in done]
    if not items:
        return
    algorithm = ctx.store.algorithms.get(run.algorithm)
    image = ctx.store.algorithms.desired_image(algorithm.pk)
    if image is None:
        reason = "Algorithm image is not ready to be used"
        runs.record_many([_not_run(ctx, run, item, reason) for item in items])
        return
    sockets = catalog.sockets_of(ctx, [algorithm])
    user = User(username=run.creator, is_admin=run.creator_is_admin)
    planner = _Planner(ctx, run, user, algorithm, sockets)
    planner.prefetch_images(items)
    plans: list[_Plan] = []
    records: list[dict[str, Any]] = []
    for item in items:
        planned = planner.plan(item, image.pk)
        if isinstance(planned, _NoJob):
            records.append(
                runs.record_item(
                    run.pk, item.pk, job=None, outcome=planned.outcome, reason=planned.reason
                )
            )
        else:
            plans.append(planned)
    if not run.rerun and plans:
        plans = _skip_done(ctx, run, plans, records)
    runs.record_many(records)
    if plans:
        _create_jobs(ctx, run, user, algorithm, sockets, image, plans)


def _not_run(ctx: Context, run: ArchiveRun, item: ArchiveItem, reason: str) -> dict[str, Any]:
    return ctx.store.archive_runs.record_item(
        run.pk, item.pk, job=None, outcome=NOT_RUN, reason=reason
    )


class _NoJob:
    """Why an item gets no job: not run (and why), or still importing a value."""

    def __init__(self, reason: str, outcome: str = NOT_RUN) -> None:
        self.reason = reason
        self.outcome = outcome


class _Plan:
    """An item's job to be: the socket set, its checked inputs and their fingerprint."""

    def __init__(self, item: ArchiveItem, index: int, drafts: list[dict[str, Any]], fp: str):
        self.item = item
        self.index = index
        self.drafts = drafts
        self.fingerprint = fp


class _Planner:
    """Checks items' values as job inputs, as ``services.jobs.create_job`` does, reading the
    page's images in one request."""

    def __init__(
        self,
        ctx: Context,
        run: ArchiveRun,
        user: User,
        algorithm: Algorithm,
        sockets: dict[str, Interface],
    ) -> None:
        self.ctx, self.run, self.user = ctx, run, user
        self.algorithm, self.sockets = algorithm, sockets
        self.wanted = {slug for socket_set in algorithm.interfaces for slug in socket_set.inputs}
        self._archive: Archive | None = None
        self._images: dict[str, Image] = {}

    def prefetch_images(self, items: list[ArchiveItem]) -> None:
        pks = [
            v.image for item in items for v in item.values if v.image and v.socket in self.wanted
        ]
        self._images = self.ctx.store.images.get_many(list(dict.fromkeys(pks)))

    def plan(self, item: ArchiveItem, image_pk: str) -> _Plan | _NoJob:
        """The item's job to be, or why it has none."""
        from gantry.services.jobs import JobInput, check_input, choose_socket_set

        importing = sorted(
            v.socket
            for v in item.values
            if v.socket in self.wanted and (v.pending_upload or v.pending_uploads)
        )
        if importing:
            reason = f"still importing the uploaded value of {', '.join(importing)}"
            return _NoJob(reason, IMPORTING)
        given = {
            v.socket: v
            for v in item.values
            if v.socket in self.wanted and not (v.pending_upload or v.pending_uploads)
        }
        try:
            index = choose_socket_set(self.algorithm, set(given), self.sockets)
        except ValidationFailed as error:
            return _NoJob(error.message)
        slugs = self.algorithm.interfaces[index].inputs
        files = [slug for slug in slugs if slug in given and given[slug].file]
        if files:
            reason = f"file values of archive items cannot be job inputs yet ({', '.join(files)})"
            return _NoJob(reason)
        drafts: list[dict[str, Any]] = []
        for slug in slugs:
            socket, value = self.sockets[slug], given.get(slug)
            if value is None:
                drafts.append({"socket": slug, "value": socket.default_value})
            elif value.image:
                if not self._usable(value.image):
                    return _NoJob(f"Input '{slug}': image '{value.image}' not found")
                drafts.append({"socket": slug, "image": value.image})
            else:
                try:
                    check_input(
                        self.ctx,
                        self.user,
                        socket,
                        JobInput(interface=slug, value=value.value),
                        _URLS,
                    )
                except ValidationFailed as error:
                    return _NoJob(error.message)
                drafts.append({"socket": slug, "value": value.value})
        values = [given[slug] for slug in slugs if slug in given]
        return _Plan(item, index, drafts, fingerprint(self.run.creator, image_pk, values))

    def _usable(self, image_pk: str) -> bool:
        """The run's creator may use the image (as a job input): an archive image's members
        may; otherwise as the API decides for any image."""
        image = self._images.get(image_pk)
        if image is None:
            return False
        if self._archive is None:
            self._archive = self.ctx.store.archives.get(self.run.archive)
        if access.image(self.user, Action.USE, image, [self._archive]):
            return True
        holding = self.ctx.store.archives.holding(image.pk)
        return access.image(self.user, Action.USE, image, holding)


def _skip_done(
    ctx: Context, run: ArchiveRun, plans: list[_Plan], records: list[dict[str, Any]]
) -> list[_Plan]:
    """Items whose inputs already gave a successful job of this image are skipped (that job
    is their result, written back if the run asks); the others remain."""
    runs = ctx.store.archive_runs
    earlier = runs.jobs_with_inputs([p.fingerprint for p in plans])
    statuses = runs.job_statuses([job for jobs in earlier.values() for job in jobs])
    remaining = []
    for plan in plans:
        succeeded = [
            job
            for job in earlier.get(plan.fingerprint, [])
            if statuses.get(job) is JobStatus.SUCCESS
        ]
        if not succeeded:
            remaining.append(plan)
            continue
        records.append(runs.record_item(run.pk, plan.item.pk, job=succeeded[0], outcome=SKIPPED))
        if run.write_back:
            write_back(ctx, plan.item.pk, succeeded[0])
    return remaining


def _create_jobs(
    ctx: Context,
    run: ArchiveRun,
    user: User,
    algorithm: Algorithm,
    sockets: dict[str, Interface],
    image: AlgorithmImage,
    plans: list[_Plan],
) -> None:
    from gantry.services.jobs import new_job
    from gantry.store.jobs import NewJob

    runs = ctx.store.archive_runs
    model = ctx.store.models.desired(algorithm.pk)
    pks = iter(ctx.store.table.next_ids("socket_value", sum(len(p.drafts) for p in plans)))
    now = timeutil.now()
    moment = timeutil.iso(now)
    new: list[NewJob] = []
    for plan in plans:
        values = [SocketValue(pk=next(pks), **draft) for draft in plan.drafts]
        job_pk = job_pk_for(run.pk, plan.item.pk)
        job = new_job(
            user,
            algorithm,
            image,
            model,
            plan.index,
            values,
            pk=job_pk,
            source=SOURCE,
            source_ref=source_ref(run.pk, plan.item.pk),
            moment=moment,
        )
        new.append(
            NewJob(
                job,
                input_images=[v.image for v in values if v.image],
                puts=[runs.record_item(run.pk, plan.item.pk, job=job_pk)],
                updates=[runs.remember_inputs(plan.fingerprint, job_pk)],
            )
        )
    limits = quotas.limits_for(ctx.settings, run.creator, algorithm.pk)
    charge = credits.charge_for(ctx.settings, user, algorithm, image.pk, now)
    made, refusal = ctx.store.jobs.create_many(new, limits=limits, charge=charge)
    if made:
        used = {slug for p in plans for slug in _set_slugs(algorithm, p.index)}
        ctx.store.sockets.mark_used([sockets[slug] for slug in sorted(used)])
        for index in sorted({p.index for p in plans}):
            ctx.store.algorithms.mark_set_used(algorithm.pk, index)
    for job in made:
        ctx.job_created(job)
    if isinstance(refusal, TooManyRequests):
        raise _Waiting(refusal.message)
    if refusal is not None:
        raise _Stop(refusal.message)


def _set_slugs(algorithm: Algorithm, index: int) -> list[str]:
    socket_set = algorithm.interfaces[index]
    return [*socket_set.inputs, *socket_set.outputs]


# --- cancelling ------------------------------------------------------------------------------


def handle_cancel(ctx: Context, run_pk: str, cursor: dict[str, Any] | None) -> None:
    """Cancel the unfinished jobs of a cancelled run, a page of its records per message (the
    next page is queued); repeating a page cancels nothing twice."""
    from gantry.pipeline.cancel import cancel_job

    runs = ctx.store.archive_runs
    run = runs.get(run_pk)
    if run.state is not RunState.CANCELLED:
        return
    records, next_cursor = runs.records_page(run_pk, cursor, CANCEL_PAGE)
    unfinished = [
        r["job"]
        for r in records
        if r.get("job") and r.get("outcome") != SKIPPED and not r.get("ended")
    ]
    for job_pk, status in runs.job_statuses(unfinished).items():
        if not status.is_terminal:
            cancel_job(ctx, job_pk, by=run.creator)
    if next_cursor is not None:
        send_cancel(ctx, run_pk, next_cursor)


# --- job ends ---------------------------------------------------------------------------------


def handle_job_event(ctx: Context, ended: JobEnded) -> bool:
    """A job of an archive run ended: write its outputs back (if the run asks), and let runs
    that wait for a slot go on. False for other jobs."""
    if ended.source != SOURCE:
        return False
    run_pk, _, item_pk = (ended.source_ref or "").partition("/")
    try:
        run = ctx.store.archive_runs.get(run_pk)
    except NotFound:
        run = None
    if run is not None and item_pk:
        # Progress reads ended jobs from the run's records, not from every job.
        ctx.store.archive_runs.record_end(run_pk, item_pk, ended.status)
        if run.write_back and ended.succeeded:
            write_back(ctx, item_pk, ended.job)
    resume_waiting(ctx)
    return True


def resume_waiting(ctx: Context, *, stale_before: str | None = None) -> list[str]:
    """Queue the next page of every run that waits for a slot (and, with ``stale_before``, of
    runs still making jobs that have not moved since then: their message was lost)."""
    runs = ctx.store.archive_runs
    resumed = []
    for run_pk in runs.active():
        try:
            run = runs.get(run_pk)
        except NotFound:
            runs.unmark_active(run_pk)
            continue
        if run.state.makes_no_more_jobs:
            runs.unmark_active(run_pk)
            continue
        stuck = stale_before is not None and run.modified < stale_before
        if run.state is RunState.CREATING and not stuck:
            continue
        if run.state is RunState.WAITING:

            def going_on(current: ArchiveRun, at: Any = run.cursor) -> ArchiveRun | None:
                if current.state is not RunState.WAITING or current.cursor != at:
                    return None
                return current.model_copy(update={"state": RunState.CREATING})

            if runs.update(run_pk, going_on).state is not RunState.CREATING:
                continue
        send_page(ctx, run_pk, run.cursor)
        resumed.append(run_pk)
    return resumed


def redo_write_backs(ctx: Context) -> list[str]:
    """For runs that write back: the outputs of their ended jobs whose end event never came
    (after the rule's retries and the DLQ) are written into the items, and the end recorded.
    A run leaves this pass once it makes no more jobs and all its jobs ended. The pks of the
    items written into."""
    runs = ctx.store.archive_runs
    written: list[str] = []
    for run_pk in runs.writing_back():
        try:
            run = runs.get(run_pk)
        except NotFound:
            runs.unmark_writing_back(run_pk)
            continue
        unfinished = False
        cursor: dict[str, Any] | None = None
        while True:
            records, cursor = runs.records_page(run_pk, cursor, 500)
            open_records = [
                r
                for r in records
                if r.get("job") and r.get("outcome") != SKIPPED and not r.get("ended")
            ]
            statuses = runs.job_statuses([r["job"] for r in open_records])
            for record in open_records:
                status = statuses.get(record["job"])
                if status is None or not status.is_terminal:
                    unfinished = True
                    continue
                if status is JobStatus.SUCCESS:
                    write_back(ctx, record["item"], record["job"])
                    written.append(str(record["item"]))
                runs.record_end(run_pk, record["item"], status.label)
            if cursor is None:
                break
        if run.state.makes_no_more_jobs and not unfinished:
            runs.unmark_writing_back(run_pk)
    return written


# --- outputs -> items -------------------------------------------------------------------------


def write_back(ctx: Context, item_pk: str, job_pk: str) -> None:
    """The job's outputs become the item's values under the output sockets; repeating it
    changes nothing."""
    from gantry.services.archives import with_values

    job = ctx.store.jobs.find(job_pk)
    if job is None or job.status is not JobStatus.SUCCESS or not job.outputs:
        return
    try:
        item = ctx.store.archives.get_item(item_pk)
    except NotFound:
        return
    wanted = [_written(item_pk, job_pk, out) for out in job.outputs]
    if all(_holds(item, value) for value in wanted):
        return
    for out, value in zip(job.outputs, wanted, strict=True):
        if out.file and value.file:
            copy_object(ctx.clients.s3, ctx.settings.bucket_name, out.file, value.file)
    pks = ctx.store.table.next_ids("socket_value", len(wanted))
    values = [value.model_copy(update={"pk": pk}) for pk, value in zip(pks, wanted, strict=True)]
    ctx.store.archives.update_item(
        item_pk,
        lambda current: (
            None
            if all(_holds(current, value) for value in wanted)
            else with_values(current, values)
        ),
    )


def _written(item_pk: str, job_pk: str, output: SocketValue) -> SocketValue:
    """An output as the item keeps it: a file is copied to a key of its own (one per job)."""
    if output.file:
        name = posixpath.basename(output.file)
        key = resources.archive_value_key(item_pk, job_pk, output.socket, name)
        return SocketValue(pk=0, socket=output.socket, file=key)
    return SocketValue(pk=0, socket=output.socket, value=output.value, image=output.image)


def _holds(item: ArchiveItem, wanted: SocketValue) -> bool:
    current = item.value_of(wanted.socket)
    return current is not None and (current.value, current.image, current.file) == (
        wanted.value,
        wanted.image,
        wanted.file,
    )
