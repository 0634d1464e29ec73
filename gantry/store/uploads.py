"""User uploads."""

from __future__ import annotations

from collections.abc import Callable

from gantry.errors import NotFound
from gantry.store import keys, listings
from gantry.store.pagination import Paginator, count_update
from gantry.store.table import MAIN_SK, Change, StoredDoc, Table
from gantry.uploads import Upload


class UploadStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)

    def create(self, upload: Upload) -> Upload:
        list_key = keys.uploads_of(upload.creator)
        sort = f"{upload.created}#{upload.pk}"
        item = self.table.item(
            keys.upload(upload.pk),
            MAIN_SK,
            upload.model_dump(mode="json"),
            GSI1PK=list_key.value,
            GSI1SK=sort,
            s3_key=upload.key,
        )
        everyone = listings.listing(self.table, keys.upload(upload.pk), keys.ALL_UPLOADS, sort)
        self.table.transact_put(
            [item, everyone],
            updates=[count_update(list_key, 1), count_update(keys.ALL_UPLOADS, 1)],
        )
        return upload

    def get(self, pk: str) -> Upload:
        stored = self.table.get(keys.upload(pk))
        if stored is None:
            raise NotFound(f"Upload {pk} not found")
        return Upload.model_validate(stored.doc)

    def update(self, pk: str, change: Callable[[Upload], Upload | None]) -> Upload:
        def mutate(stored: StoredDoc) -> Change | None:
            updated = change(Upload.model_validate(stored.doc))
            return None if updated is None else (updated.model_dump(mode="json"), {})

        stored = self.table.update_doc(keys.upload(pk), mutate)
        if stored is None:
            raise NotFound(f"Upload {pk} not found")
        return Upload.model_validate(stored.doc)

    def page_for(self, username: str, *, offset: int, limit: int) -> tuple[list[Upload], int]:
        list_key = keys.uploads_of(username)
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return [Upload.model_validate(d.doc) for d in docs], self.paginator.count(list_key)

    def page_all(self, *, offset: int, limit: int) -> tuple[list[Upload], int]:
        """Everyone's uploads, oldest first (admins' list)."""
        found, count = listings.page(
            self.table, self.paginator, keys.ALL_UPLOADS, offset=offset, limit=limit
        )
        return [Upload.model_validate(d.doc) for d in found], count
