"""Archives (unique slug, listed for each member), their items and their images.

Items are listed by archive (oldest first) on the by-parent index. Every image an item holds
is listed once per archive (``ARCHIVEIMG#<archive>#<image>``, written only if absent, with
the list's count in the same transaction), and the image's own partition names the archives
that hold it (``IMG#<image>`` / ``ARCHIVE#<archive>``), which is what lets an archive's
members read and use an image they do not own.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from gantry import timeutil
from gantry.archives import Archive, ArchiveFields, ArchiveItem
from gantry.errors import Conflict, NotFound
from gantry.interfaces import slugify
from gantry.store import keys
from gantry.store.pagination import ListKey, Paginator, count_update
from gantry.store.table import MAIN_SK, ConditionFailed, StoredDoc, Table


class ArchiveStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)

    # --- archives --------------------------------------------------------------------------

    def create(self, fields: ArchiveFields, *, creator: str) -> Archive:
        slug = slugify(fields.title)
        if not slug:
            raise Conflict("title must contain letters or digits", field="title")
        moment = timeutil.iso()
        archive = Archive(
            **fields.model_dump(),
            pk=str(uuid.uuid4()),
            slug=slug,
            creator=creator,
            created=moment,
            modified=moment,
        )
        puts = [self.table.item(keys.archive(archive.pk), MAIN_SK, _doc(archive), slug=slug)]
        updates = []
        for member in archive.members():
            puts.append(self._member_item(archive, member, moment))
            updates.append(count_update(keys.archives_of(member), 1))
        puts.append(
            self.table.item(
                keys.archive(archive.pk),
                "LISTED",
                None,
                GSI1PK=keys.ALL_ARCHIVES.value,
                GSI1SK=f"{moment}#{archive.pk}",
                archive_pk=archive.pk,
            )
        )
        updates.append(count_update(keys.ALL_ARCHIVES, 1))
        claim = self.table.item(keys.archive_slug(slug), MAIN_SK, None, archive_pk=archive.pk)
        try:
            self.table.transact_put(puts, unique=[claim], updates=updates)
        except ConditionFailed as error:
            raise Conflict(
                f"An archive with the slug '{slug}' already exists", field="title"
            ) from error
        return archive

    def _member_item(self, archive: Archive, member: str, moment: str) -> dict[str, Any]:
        return self.table.item(
            keys.archive(archive.pk),
            f"MEMBER#{member}",
            None,
            GSI1PK=keys.archives_of(member).value,
            GSI1SK=f"{moment}#{archive.pk}",
            archive_pk=archive.pk,
        )

    def update(self, pk: str, change: Callable[[Archive], Archive]) -> Archive:
        """Replace the archive with ``change(current)``; member lists follow in the same
        transaction."""
        updated: list[Archive] = []
        removed: set[str] = set()

        def mutate(stored: StoredDoc) -> tuple[dict, dict, list]:
            current = Archive.model_validate(stored.doc)
            new = change(current).model_copy(
                update={
                    **current.model_dump(include={"pk", "slug", "creator", "created"}),
                    "modified": timeutil.iso(),
                }
            )
            updated[:] = [new]
            before, after = set(current.members()), set(new.members())
            removed.clear()
            removed.update(before - after)
            actions: list[dict] = []
            for member in sorted(after - before):
                actions.append({"Put": self._member_item(new, member, timeutil.iso())})
                actions.append(count_update(keys.archives_of(member), 1))
            for member in sorted(before - after):
                actions.append({"Delete": {"PK": keys.archive(pk), "SK": f"MEMBER#{member}"}})
                actions.append(count_update(keys.archives_of(member), -1))
            return _doc(new), {}, actions

        if self.table.update_doc(keys.archive(pk), mutate) is None:
            raise NotFound(f"Archive {pk} not found")
        for member in removed:  # a deletion moves the offsets of that member's list
            self.paginator.clear(keys.archives_of(member))
        return updated[0]

    def get(self, pk: str) -> Archive:
        found = self.find(pk)
        if found is None:
            raise NotFound(f"Archive {pk} not found")
        return found

    def find(self, pk: str) -> Archive | None:
        stored = self.table.get(keys.archive(pk))
        return Archive.model_validate(stored.doc) if stored else None

    def get_by_slug(self, slug: str) -> Archive:
        claim = self.table.get_item(keys.archive_slug(slug), MAIN_SK)
        if claim is None:
            raise NotFound(f"Archive '{slug}' not found", field="slug")
        return self.get(str(claim["archive_pk"]))

    def get_many(self, pks: list[str]) -> dict[str, Archive]:
        found = self.table.batch_get_docs([(keys.archive(pk), MAIN_SK) for pk in pks])
        archives = [Archive.model_validate(s.doc) for s in found.values()]
        return {a.pk: a for a in archives}

    def page_for(self, username: str, *, offset: int, limit: int) -> tuple[list[Archive], int]:
        return self._page(keys.archives_of(username), offset=offset, limit=limit)

    def page_all(self, *, offset: int, limit: int) -> tuple[list[Archive], int]:
        return self._page(keys.ALL_ARCHIVES, offset=offset, limit=limit)

    def _page(self, list_key: ListKey, *, offset: int, limit: int) -> tuple[list[Archive], int]:
        listed = self.paginator.page(list_key, offset=offset, limit=limit)
        wanted = [(keys.archive(m.item["archive_pk"]), MAIN_SK) for m in listed]
        found = self.table.batch_get_docs(wanted)
        archives = [Archive.model_validate(found[k].doc) for k in wanted if k in found]
        return archives, self.paginator.count(list_key)

    # --- items -----------------------------------------------------------------------------

    def create_item(self, item: ArchiveItem) -> ArchiveItem:
        list_key = keys.archive_items_of(item.archive)
        stored = self.table.item(
            keys.archive_item(item.pk),
            MAIN_SK,
            item.model_dump(mode="json"),
            GSI2PK=list_key.value,
            GSI2SK=f"{item.created}#{item.pk}",
        )
        self.table.transact_put([], unique=[stored], updates=[count_update(list_key, 1)])
        self.relate_images(item)
        return item

    def get_item(self, pk: str) -> ArchiveItem:
        stored = self.table.get(keys.archive_item(pk))
        if stored is None:
            raise NotFound(f"Archive item {pk} not found")
        return ArchiveItem.model_validate(stored.doc)

    def get_items(self, pks: list[str]) -> dict[str, ArchiveItem]:
        found = self.table.batch_get_docs([(keys.archive_item(pk), MAIN_SK) for pk in pks])
        items = [ArchiveItem.model_validate(s.doc) for s in found.values()]
        return {i.pk: i for i in items}

    def update_item(
        self, pk: str, change: Callable[[ArchiveItem], ArchiveItem | None]
    ) -> ArchiveItem:
        """Apply ``change`` (None: leave it) with optimistic concurrency; the images of the
        new values are listed with the archive."""
        updated: list[ArchiveItem] = []

        def mutate(stored: StoredDoc) -> tuple[dict, dict] | None:
            current = ArchiveItem.model_validate(stored.doc)
            new = change(current)
            updated[:] = [new or current]
            if new is None:
                return None
            new = new.model_copy(update={"modified": timeutil.iso()})
            updated[:] = [new]
            return new.model_dump(mode="json"), {}

        if self.table.update_doc(keys.archive_item(pk), mutate) is None:
            raise NotFound(f"Archive item {pk} not found")
        self.relate_images(updated[0])
        return updated[0]

    def page_items(
        self, archive_pk: str, *, offset: int, limit: int
    ) -> tuple[list[ArchiveItem], int]:
        list_key = keys.archive_items_of(archive_pk)
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return [ArchiveItem.model_validate(d.doc) for d in docs], self.paginator.count(list_key)

    def count_items(self, archive_pk: str) -> int:
        return self.paginator.count(keys.archive_items_of(archive_pk))

    def items_after(
        self, archive_pk: str, cursor: dict[str, Any] | None, *, limit: int
    ) -> tuple[list[ArchiveItem], dict[str, Any] | None]:
        """A page of the archive's items, oldest first, from a key cursor (None: the start);
        the cursor of the next page, None after the last. For walks over whole archives."""
        list_key = keys.archive_items_of(archive_pk)
        items, last = self.table.query(
            index=list_key.index.name,
            key_name=list_key.index.partition_key,
            key_value=list_key.value,
            limit=limit,
            start_key=cursor,
        )
        return [ArchiveItem.model_validate(json.loads(i["doc"])) for i in items], last

    def delete_item(self, item: ArchiveItem) -> list[str]:
        """Remove the item; its images that no other item of the archive holds leave the
        archive's image list (the images stay, their owners' and their jobs'). Returns those
        images' pks. NotFound if the item is gone already."""
        list_key = keys.archive_items_of(item.archive)
        try:
            self.table.transact_delete(
                [
                    {
                        "Key": {"PK": keys.archive_item(item.pk), "SK": MAIN_SK},
                        "ConditionExpression": "attribute_exists(PK)",
                    }
                ],
                updates=[count_update(list_key, -1)],
            )
        except ConditionFailed:
            raise NotFound(f"Archive item {item.pk} not found") from None
        self.paginator.clear(list_key)  # offsets after the item moved by one
        images = {v.image for v in item.values if v.image}
        if not images:
            return []
        held: set[str] = set()
        cursor: dict[str, Any] | None = None
        while True:  # the other items of the archive (an image may be in several)
            others, cursor = self.items_after(item.archive, cursor, limit=100)
            held |= {v.image for other in others for v in other.values if v.image} & images
            if cursor is None or held == images:
                break
        released = sorted(images - held)
        image_list = keys.archive_images_of(item.archive)
        for image_pk in released:
            with contextlib.suppress(ConditionFailed):
                self.table.transact_delete(
                    [
                        {
                            "Key": {
                                "PK": keys.archive_image(item.archive, image_pk),
                                "SK": MAIN_SK,
                            },
                            "ConditionExpression": "attribute_exists(PK)",
                        }
                    ],
                    updates=[count_update(image_list, -1)],
                )
            self.table.delete(keys.image(image_pk), f"ARCHIVE#{item.archive}")
        if released:
            self.paginator.clear(image_list)
        return released

    # --- images ----------------------------------------------------------------------------

    def relate_images(self, item: ArchiveItem) -> None:
        """List each image of the item with its archive, once (puts only if absent)."""
        list_key = keys.archive_images_of(item.archive)
        for value in item.values:
            if not value.image:
                continue
            listed = self.table.item(
                keys.archive_image(item.archive, value.image),
                MAIN_SK,
                None,
                GSI2PK=list_key.value,
                GSI2SK=f"{item.created}#{item.pk}#{value.image}",
                image_pk=value.image,
            )
            with contextlib.suppress(ConditionFailed):
                self.table.transact_put([], unique=[listed], updates=[count_update(list_key, 1)])
            self.table.put(
                self.table.item(keys.image(value.image), f"ARCHIVE#{item.archive}", None)
            )

    def archives_of_image(self, image_pk: str) -> list[str]:
        """The pks of the archives that hold the image."""
        items = self.table.query_all(
            index=None,
            key_name="PK",
            key_value=keys.image(image_pk),
            sort_key="SK",
            begins_with="ARCHIVE#",
        )
        return [str(item["SK"]).removeprefix("ARCHIVE#") for item in items]

    def holding(self, image_pk: str) -> Iterator[Archive]:
        """The archives that hold the image, read lazily (an owner's check needs none)."""
        pks = self.archives_of_image(image_pk)
        yield from self.get_many(pks).values() if pks else ()

    def page_images(self, archive_pk: str, *, offset: int, limit: int) -> tuple[list[str], int]:
        """A page of the pks of the archive's images, in the order they were added."""
        list_key = keys.archive_images_of(archive_pk)
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return [str(d.item["image_pk"]) for d in docs], self.paginator.count(list_key)


def _doc(archive: Archive) -> dict[str, Any]:
    return archive.model_dump(mode="json")
