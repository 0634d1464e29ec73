"""Images and the jobs that used them as input or produced them as output."""

from __future__ import annotations

import contextlib

from gantry.errors import NotFound
from gantry.images import Image
from gantry.store import keys, listings
from gantry.store.pagination import Paginator, count_update
from gantry.store.table import MAIN_SK, ConditionFailed, Table


class ImageStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)

    def put(self, image: Image) -> Image:
        list_key = keys.images_of(image.owner)
        sort = f"{image.created}#{image.pk}"
        item = self.table.item(
            keys.image(image.pk),
            MAIN_SK,
            image.model_dump(mode="json"),
            GSI1PK=list_key.value,
            GSI1SK=sort,
        )
        everyone = listings.listing(self.table, keys.image(image.pk), keys.ALL_IMAGES, sort)
        # Idempotent: a retried or concurrent registration of the same image must not count
        # it twice, so the item is written only if absent, in one transaction with the count.
        with contextlib.suppress(ConditionFailed):
            self.table.transact_put(
                [everyone],
                unique=[item],
                updates=[count_update(list_key, 1), count_update(keys.ALL_IMAGES, 1)],
            )
        return image

    def get(self, pk: str) -> Image:
        stored = self.table.get(keys.image(pk))
        if stored is None:
            raise NotFound(f"Image {pk} not found")
        return Image.model_validate(stored.doc)

    def get_many(self, pks: list[str]) -> dict[str, Image]:
        found = self.table.batch_get_docs([(keys.image(pk), MAIN_SK) for pk in pks])
        images = [Image.model_validate(s.doc) for s in found.values()]
        return {image.pk: image for image in images}

    def page_for(self, username: str, *, offset: int, limit: int) -> tuple[list[Image], int]:
        list_key = keys.images_of(username)
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return [Image.model_validate(d.doc) for d in docs], self.paginator.count(list_key)

    def page_all(self, *, offset: int, limit: int) -> tuple[list[Image], int]:
        """Everyone's images, oldest first (admins' list)."""
        found, count = listings.page(
            self.table, self.paginator, keys.ALL_IMAGES, offset=offset, limit=limit
        )
        return [Image.model_validate(d.doc) for d in found], count
