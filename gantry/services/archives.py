"""Archives and their items: create, find, change, and add socket values to items.

Values are given as a job's inputs are (``gantry.services.jobs.JobInput``): inline JSON is
checked here, an existing image must be one the user may use, and uploads (``user_uploads``
for an image, ``user_upload`` for a file) are checked for ownership here and imported off
the request's path by the uploads queue's handler (``gantry.pipeline.archive_values``), as
a job's are. Until then the item shows the value as pending; a value that cannot be
imported is dropped and its reason kept in the item's ``errors``.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gantry import access, timeutil
from gantry.access import Action
from gantry.archives import Archive, ArchiveFields, ArchiveItem, ArchiveUpdate
from gantry.context import Context
from gantry.errors import NotFound, ValidationFailed
from gantry.jobs import SocketValue
from gantry.pipeline.wiring import import_item_values_message
from gantry.services.jobs import MAX_INPUTS, JobInput
from gantry.urls import Urls
from gantry.users import User


class ArchiveItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    archive: str = Field(min_length=1, max_length=1024, description="api_url, pk or slug")
    title: str = Field(default="", max_length=255)
    values: list[JobInput] = Field(default_factory=list, max_length=MAX_INPUTS)


class ArchiveItemUpdate(BaseModel):
    """A PATCH: the values given replace the item's values of the same sockets."""

    model_config = ConfigDict(extra="forbid")

    archive: str | None = Field(default=None, max_length=1024)
    title: str | None = Field(default=None, max_length=255)
    values: list[JobInput] = Field(default_factory=list, max_length=MAX_INPUTS)


# --- archives ---------------------------------------------------------------------------------


def create_archive(ctx: Context, user: User, fields: ArchiveFields) -> Archive:
    _known_users(ctx, [*fields.editors, *fields.uploaders, *fields.users])
    return ctx.store.archives.create(fields, creator=user.username)


def update_archive(ctx: Context, user: User, pk: str, patch: ArchiveUpdate) -> Archive:
    archive = ctx.store.archives.get(pk)
    access.require(
        access.archive(user, Action.READ, archive),
        access.archive(user, Action.CHANGE, archive),
        f"Archive {pk}",
        message="Only the archive's editors may change it",
    )
    given = patch.model_dump(exclude_none=True)
    _known_users(ctx, [*given.get("editors", []), *given.get("uploaders", [])])
    _known_users(ctx, given.get("users", []))
    return ctx.store.archives.update(pk, lambda current: current.model_copy(update=given))


def _known_users(ctx: Context, names: list[str]) -> None:
    # Members are named before they first sign in (as an algorithm's are): make them known.
    for name in dict.fromkeys(names):
        ctx.store.users.ensure_user(name)


def visible_archive(ctx: Context, user: User, pk_or_slug: str, *, by_slug: bool = False) -> Archive:
    """The archive if the user is one of its members (or an admin); else "not found"."""
    archive = (
        ctx.store.archives.get_by_slug(pk_or_slug)
        if by_slug
        else ctx.store.archives.get(pk_or_slug)
    )
    if not access.archive(user, Action.READ, archive):
        raise NotFound(f"Archive {pk_or_slug} not found")
    return archive


def referenced_archive(
    ctx: Context, user: User, urls: Urls, reference: str, *, field: str = "archive"
) -> Archive:
    """The archive a request names by api_url, pk or slug; ValidationFailed naming ``field``
    when there is none the user may see."""
    try:
        pk = urls.pk_from(reference, "archives/")
    except ValueError as error:
        raise ValidationFailed(str(error), field=field) from error
    for by_slug in (False, True):
        try:
            return visible_archive(ctx, user, pk, by_slug=by_slug)
        except NotFound:
            continue
    raise ValidationFailed(f"Archive '{reference}' not found", field=field)


def archives_page(
    ctx: Context,
    user: User,
    *,
    offset: int,
    limit: int,
    slug: str | None = None,
    title: str | None = None,
) -> tuple[list[Archive], int]:
    """The archives the user is a member of (an admin: all), filtered by slug or title."""
    if slug is not None:
        try:
            found = [visible_archive(ctx, user, slug, by_slug=True)]
        except NotFound:
            found = []
    elif title is None:
        if access.sees_everything(user):
            return ctx.store.archives.page_all(offset=offset, limit=limit)
        return ctx.store.archives.page_for(user.username, offset=offset, limit=limit)
    else:
        found = _all_visible(ctx, user)
    if title is not None:
        found = [a for a in found if a.title == title]
    return found[offset : offset + limit], len(found)


def _all_visible(ctx: Context, user: User) -> list[Archive]:
    page = (
        ctx.store.archives.page_all
        if access.sees_everything(user)
        else lambda **kw: ctx.store.archives.page_for(user.username, **kw)
    )
    found: list[Archive] = []
    while True:
        batch, _ = page(offset=len(found), limit=1000)
        found += batch
        if len(batch) < 1000:
            return found


# --- items ------------------------------------------------------------------------------------


def visible_item(
    ctx: Context, user: User, pk: str, action: Action = Action.READ
) -> tuple[ArchiveItem, Archive]:
    item = ctx.store.archives.get_item(pk)
    archive = ctx.store.archives.get(item.archive)
    access.require(
        access.archive_item(user, Action.READ, archive),
        access.archive_item(user, action, archive),
        f"Archive item {pk}",
        message="Only the archive's editors and uploaders may change its items",
    )
    return item, archive


def create_item(ctx: Context, user: User, body: ArchiveItemCreate, urls: Urls) -> ArchiveItem:
    archive = referenced_archive(ctx, user, urls, body.archive)
    if not access.archive_item(user, Action.CHANGE, archive):
        raise ValidationFailed(
            f"You may not add items to the archive '{archive.slug}': ask one of its editors "
            "to make you an uploader",
            field="archive",
        )
    moment = timeutil.iso()
    item = ArchiveItem(
        pk=str(uuid.uuid4()),
        archive=archive.pk,
        title=body.title,
        values=_checked_values(ctx, user, body.values, urls),
        creator=user.username,
        created=moment,
        modified=moment,
    )
    ctx.store.archives.create_item(item)
    _import_pending(ctx, item)
    return item


def delete_item(ctx: Context, user: User, pk: str) -> None:
    """Delete an archive item (the archive's editors). Its file values are deleted with it;
    its images stay (they are their uploaders' and may be inputs of jobs) but leave the
    archive unless another of its items holds them. Runs over the archive that have not
    reached the item leave it out; jobs made for it go on, without writing back."""
    item, archive = visible_item(ctx, user, pk)
    access.require(
        True,
        access.archive_item(user, Action.DELETE, archive),
        f"Archive item {pk}",
        message=f"Only the editors of the archive '{archive.slug}' may delete its items",
    )
    ctx.store.archives.delete_item(item)
    files = [v.file for v in item.values if v.file]
    for start in range(0, len(files), 1000):
        ctx.clients.s3.delete_objects(
            Bucket=ctx.settings.bucket_name,
            Delete={"Objects": [{"Key": key} for key in files[start : start + 1000]]},
        )


def update_item(
    ctx: Context, user: User, pk: str, body: ArchiveItemUpdate, urls: Urls
) -> ArchiveItem:
    item, archive = visible_item(ctx, user, pk, Action.CHANGE)
    if body.archive is not None and referenced_archive(ctx, user, urls, body.archive).pk != (
        archive.pk
    ):
        raise ValidationFailed("An item cannot move to another archive", field="archive")
    values = _checked_values(ctx, user, body.values, urls)

    def change(current: ArchiveItem) -> ArchiveItem:
        return with_values(current, values, title=body.title, given_by=user.username)

    updated = ctx.store.archives.update_item(item.pk, change)
    _import_pending(ctx, updated)
    return updated


def with_values(
    item: ArchiveItem,
    values: list[SocketValue],
    *,
    title: str | None = None,
    given_by: str | None = None,
) -> ArchiveItem:
    """The item with ``values`` replacing its values of the same sockets; ``given_by``: the
    user who gave them, whose uploads the pending ones are."""
    replaced = {v.socket for v in values}
    kept = [v for v in item.values if v.socket not in replaced]
    errors = {slug: why for slug, why in item.errors.items() if slug not in replaced}
    kept_pks = {v.pk for v in kept}
    pending_by = {pk: who for pk, who in item.pending_by.items() if pk in kept_pks}
    if given_by is not None and given_by != item.creator:
        pending_by |= {v.pk: given_by for v in values if v.pending_upload or v.pending_uploads}
    update: dict[str, Any] = {
        "values": [*kept, *values],
        "errors": errors,
        "pending_by": pending_by,
    }
    if title is not None:
        update["title"] = title
    return item.model_copy(update=update)


def _checked_values(
    ctx: Context, user: User, given: list[JobInput], urls: Urls
) -> list[SocketValue]:
    from gantry.services.jobs import check_input

    slugs = [g.interface for g in given]
    twice = sorted({s for s in slugs if slugs.count(s) > 1})
    if twice:
        raise ValidationFailed(f"Interface '{twice[0]}' is given twice", field="values")
    sockets = ctx.store.sockets.get_many_by_slug(sorted(set(slugs)))
    unknown = sorted(set(slugs) - set(sockets))
    if unknown:
        raise ValidationFailed(f"Unknown interface '{unknown[0]}'", field="values")
    drafts = []
    for entry in given:
        try:
            drafts.append(check_input(ctx, user, sockets[entry.interface], entry, urls))
        except ValidationFailed as error:
            raise ValidationFailed(error.message, field="values") from None
    pks = ctx.store.table.next_ids("socket_value", len(drafts))
    return [SocketValue(pk=pk, **draft) for pk, draft in zip(pks, drafts, strict=True)]


def _import_pending(ctx: Context, item: ArchiveItem) -> None:
    if item.pending:
        ctx.clients.sqs.send_message(
            QueueUrl=ctx.settings.uploads_queue_url, MessageBody=import_item_values_message(item.pk)
        )


def items_page(
    ctx: Context, user: User, archive_ref: str | None, urls: Urls, *, offset: int, limit: int
) -> tuple[list[ArchiveItem], int]:
    """Items of one archive the user is a member of; without ``archive``, of every archive
    the user is a member of."""
    if archive_ref:
        archive = referenced_archive(ctx, user, urls, archive_ref)
        return ctx.store.archives.page_items(archive.pk, offset=offset, limit=limit)
    items: list[ArchiveItem] = []
    for archive in _all_visible(ctx, user):
        items += _all_items(ctx, archive.pk)
    return items[offset : offset + limit], len(items)


def _all_items(ctx: Context, archive_pk: str) -> list[ArchiveItem]:
    items: list[ArchiveItem] = []
    cursor = None
    while True:
        page, cursor = ctx.store.archives.items_after(archive_pk, cursor, limit=1000)
        items += page
        if cursor is None:
            return items
