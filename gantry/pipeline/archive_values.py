"""Import the uploaded values of an archive item (``import-item-values`` messages).

Runs from the uploads queue's handler, at least once and possibly twice at the same time:
image pks and S3 keys derive from the item and value, so a rerun overwrites, and the item
changes in one versioned write that replaces only values still pending with the same pk.
"""

from __future__ import annotations

import logging
import uuid

from gantry.archives import ArchiveItem
from gantry.context import Context
from gantry.errors import NotFound
from gantry.pipeline.inputs import resolve_pending

logger = logging.getLogger(__name__)


def item_image_pk(item_pk: str, value_pk: int) -> str:
    """The pk of the image imported for an item's value: the same on every rerun."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gantry:archive-item:{item_pk}:{value_pk}"))


def import_item_values(ctx: Context, item_pk: str) -> ArchiveItem | None:
    try:
        item = ctx.store.archives.get_item(item_pk)
    except NotFound:
        return None
    pending = [v for v in item.values if v.pending_upload or v.pending_uploads]
    if not pending:
        return item  # a duplicate message after another run finished
    resolved, failed = resolve_pending(
        ctx,
        pending,
        scope=item.pk,
        owner=lambda value: item.pending_by.get(value.pk, item.creator),
        image_pk=lambda value: item_image_pk(item.pk, value.pk),
        scratch_prefix="gantry-item-",
    )
    errors = {v.pk: (v.socket, failed[v.pk]) for v in pending if v.pk in failed}

    def change(current: ArchiveItem) -> ArchiveItem | None:
        values, failed = [], dict(current.errors)
        touched = False
        for value in current.values:
            if value.pk in resolved and (value.pending_upload or value.pending_uploads):
                update = {**resolved[value.pk], "pending_upload": None, "pending_uploads": None}
                values.append(value.model_copy(update=update))
                touched = True
            elif value.pk in errors:
                slug, why = errors[value.pk]
                failed[slug] = why  # the value is dropped; the reason stays with the item
                touched = True
            else:
                values.append(value)
        if not touched:
            return None
        pending_by = {
            pk: who
            for pk, who in current.pending_by.items()
            if pk not in resolved and pk not in errors
        }
        return current.model_copy(
            update={"values": values, "errors": failed, "pending_by": pending_by}
        )

    updated = ctx.store.archives.update_item(item.pk, change)
    for slug, why in errors.values():
        logger.info("archive item %s: value of %s not added: %s", item.pk, slug, why)
    return updated
