"""Upload sessions."""

from __future__ import annotations

from collections.abc import Callable

from gantry.errors import NotFound
from gantry.store import keys, listings
from gantry.store.pagination import Paginator, count_update
from gantry.store.table import MAIN_SK, StoredDoc, Table
from gantry.upload_sessions import UploadSession


class UploadSessionStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)

    def create(self, session: UploadSession) -> UploadSession:
        list_key = keys.upload_sessions_of(session.creator)
        sort = f"{session.created}#{session.pk}"
        entity = keys.upload_session(session.pk)
        item = self.table.item(
            entity, MAIN_SK, session.model_dump(mode="json"), GSI1PK=list_key.value, GSI1SK=sort
        )
        everyone = listings.listing(self.table, entity, keys.ALL_UPLOAD_SESSIONS, sort)
        self.table.transact_put(
            [item, everyone],
            updates=[count_update(list_key, 1), count_update(keys.ALL_UPLOAD_SESSIONS, 1)],
        )
        return session

    def get(self, pk: str) -> UploadSession:
        stored = self.table.get(keys.upload_session(pk))
        if stored is None:
            raise NotFound(f"Upload session {pk} not found")
        return UploadSession.model_validate(stored.doc)

    def update(
        self, pk: str, change: Callable[[UploadSession], UploadSession | None]
    ) -> UploadSession | None:
        """Apply ``change`` (None: leave it) with a version check; None if there is no such
        session."""

        def mutate(stored: StoredDoc) -> tuple[dict, dict] | None:
            updated = change(UploadSession.model_validate(stored.doc))
            return None if updated is None else (updated.model_dump(mode="json"), {})

        stored = self.table.update_doc(keys.upload_session(pk), mutate)
        return None if stored is None else UploadSession.model_validate(stored.doc)

    def page_for(
        self, username: str, *, offset: int, limit: int
    ) -> tuple[list[UploadSession], int]:
        list_key = keys.upload_sessions_of(username)
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return [UploadSession.model_validate(d.doc) for d in docs], self.paginator.count(list_key)

    def page_all(self, *, offset: int, limit: int) -> tuple[list[UploadSession], int]:
        """Everyone's upload sessions, oldest first (admins' list)."""
        found, count = listings.page(
            self.table, self.paginator, keys.ALL_UPLOAD_SESSIONS, offset=offset, limit=limit
        )
        return [UploadSession.model_validate(d.doc) for d in found], count
