"""Starting an algorithm over an archive, and what became of it (``gantry.pipeline.
archive_runs`` makes the jobs)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gantry import access, credits, timeutil
from gantry.access import Action
from gantry.archives import ArchiveRun, RunState
from gantry.context import Context
from gantry.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from gantry.services import catalog
from gantry.services.archives import referenced_archive
from gantry.store.archive_runs import IMPORTING, NOT_RUN, SKIPPED
from gantry.urls import Urls
from gantry.users import User

# The chosen items are kept in the run's own item (at most 400 KB in DynamoDB): 5,000 pks
# are ~190 KB. A whole archive, of any size, is walked by key instead.
MAX_ITEMS = 5_000


class ArchiveRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    archive: str = Field(min_length=1, max_length=1024, description="api_url, pk or slug")
    items: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ITEMS,
        description="only these items (pks or api_urls); default: every item of the archive",
    )
    rerun: bool = Field(
        default=False,
        description="run items again that already have a successful job of this image",
    )
    write_back: bool = Field(
        default=False, description="add each job's outputs to its item (editors, uploaders)"
    )


def start_run(
    ctx: Context, user: User, algorithm_ref: str, body: ArchiveRunCreate, urls: Urls
) -> ArchiveRun:
    from gantry.pipeline.archive_runs import send_page

    algorithm = catalog.referenced_algorithm(ctx, user, urls, algorithm_ref)
    image = ctx.store.algorithms.desired_image(algorithm.pk)
    if image is None:
        raise ValidationFailed("Algorithm image is not ready to be used", field="algorithm")
    archive = referenced_archive(ctx, user, urls, body.archive)
    if body.write_back and not access.archive_item(user, Action.CHANGE, archive):
        raise ValidationFailed(
            f"Only the editors and uploaders of the archive '{archive.slug}' may write "
            "outputs into its items",
            field="write_back",
        )
    items = None
    if body.items is not None:
        try:
            items = list(dict.fromkeys(urls.pk_from(ref, "archives/items/") for ref in body.items))
        except ValueError as error:
            raise ValidationFailed(str(error), field="items") from None
        found = ctx.store.archives.get_items(items)
        strangers = [pk for pk in items if pk not in found or found[pk].archive != archive.pk]
        if strangers:
            raise ValidationFailed(
                f"Item '{strangers[0]}' is not an item of the archive '{archive.slug}'",
                field="items",
            )
    # Refused at once when not even one job is affordable; later jobs stop the run instead.
    charge = credits.charge_for(ctx.settings, user, algorithm, image.pk, timeutil.now())
    free = charge.complimentary_image is not None and (
        ctx.store.jobs.complimentary_jobs_taken(charge.complimentary_image)
        < charge.complimentary_jobs
    )
    if charge.cost and not free:
        spent = ctx.store.jobs.credits_spent(charge.user, charge.month)
        if spent + charge.cost > charge.monthly:
            raise charge.refusal(spent)
    moment = timeutil.iso()
    run = ArchiveRun(
        pk=str(uuid.uuid4()),
        algorithm=algorithm.pk,
        algorithm_image=image.pk,
        archive=archive.pk,
        creator=user.username,
        creator_is_admin=user.is_admin,
        items=items,
        rerun=body.rerun,
        write_back=body.write_back,
        total=len(items) if items is not None else ctx.store.archives.count_items(archive.pk),
        created=moment,
        modified=moment,
    )
    ctx.store.archive_runs.create(run)
    ctx.store.archive_runs.mark_active(run.pk)
    if run.write_back:
        ctx.store.archive_runs.mark_writing_back(run.pk)
    send_page(ctx, run.pk, None)
    return run


def cancel_run(ctx: Context, user: User, algorithm_pk: str, pk: str) -> ArchiveRun:
    """No new jobs for the run, and its unfinished jobs cancelled (by the archive-runs queue's
    handler, a page of records at a time). Cancelling a cancelled run again only repeats the
    jobs' cancel; a run whose jobs all ended is not cancelled (409)."""
    from gantry.pipeline.archive_runs import send_cancel

    run = visible_run(ctx, user, algorithm_pk, pk)
    if not access.archive_run(user, Action.CHANGE, run.creator):
        raise PermissionDenied("Only the run's creator can cancel it")

    def cancel(current: ArchiveRun) -> ArchiveRun | None:
        if current.state is RunState.CANCELLED:
            return None
        if current.final_counts is not None:
            raise Conflict(f"Archive run {pk} has ended: all its jobs finished")
        return current.model_copy(
            update={"state": RunState.CANCELLED, "stopped_reason": f"Cancelled by {user.username}"}
        )

    run = ctx.store.archive_runs.update(run.pk, cancel)
    ctx.store.archive_runs.unmark_active(run.pk)
    send_cancel(ctx, run.pk, None)
    return run


def visible_run(ctx: Context, user: User, algorithm_pk: str, pk: str) -> ArchiveRun:
    run = ctx.store.archive_runs.get(pk)
    if run.algorithm != algorithm_pk or not access.archive_run(user, Action.READ, run.creator):
        raise NotFound(f"Archive run {pk} not found")
    return run


def progress(ctx: Context, run: ArchiveRun) -> dict[str, Any]:
    """Counts of the run's items: jobs per status, items skipped (an earlier job is their
    result), items not run (and why, a few), items not yet handled."""
    if run.final_counts is not None:
        return run.final_counts
    records = list(ctx.store.archive_runs.records(run.pk))
    ran = [r for r in records if r.get("job") and r.get("outcome") != SKIPPED]
    # Ended jobs are in their records (their end event wrote it there); only the unfinished
    # ones, at most the active-job limits, are read from the jobs themselves.
    statuses = ctx.store.archive_runs.job_statuses([r["job"] for r in ran if not r.get("ended")])
    jobs = Counter(
        r["ended"] if r.get("ended") else statuses[r["job"]].label
        for r in ran
        if r.get("ended") or r["job"] in statuses
    )
    not_run = [r for r in records if r.get("outcome") == NOT_RUN]
    counts: dict[str, Any] = {
        "jobs": dict(sorted(jobs.items())),
        "skipped": sum(1 for r in records if r.get("outcome") == SKIPPED),
        "not_run": len(not_run),
        "not_run_reasons": dict(Counter(str(r.get("reason")) for r in not_run).most_common(5)),
        # Items whose input was still being imported from an upload when the run came to them.
        "importing": sum(1 for r in records if r.get("outcome") == IMPORTING),
        "not_started": max(0, run.total - len(records)),
        "items_handled": len(records),
    }
    done = run.state.makes_no_more_jobs and all(status.is_terminal for status in statuses.values())
    counts["done"] = done
    if done and run.state in (RunState.CREATED, RunState.CANCELLED):
        # Nothing changes any more: count once, keep it.
        def keep(current: ArchiveRun) -> ArchiveRun | None:
            return current.model_copy(update={"final_counts": counts})

        ctx.store.archive_runs.update(run.pk, keep)
    return counts
