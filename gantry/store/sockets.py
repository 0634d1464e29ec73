"""Interfaces (sockets): integer pk, unique title and slug."""

from __future__ import annotations

from gantry import timeutil
from gantry.errors import Conflict, NotFound
from gantry.interfaces import Interface, InterfaceFields, check_update, slugify
from gantry.store import keys
from gantry.store.pagination import Paginator, count_update
from gantry.store.table import MAIN_SK, PK, Change, ConditionFailed, StoredDoc, Table

# The flags mark_used sets. Neither is ever unset.
FLAGS = ("has_values", "in_algorithm")


class SocketStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)
        # (socket pk, flag) this process has seen set: a flag is never unset, so this is
        # never wrong, and it spares each job the writes of flags already set (mark_used).
        self._flagged: set[tuple[int, str]] = set()
        # Each slug's socket pk: a slug's claim is written once with the socket and never
        # changes, so a lookup by slug reads the claim once per process.
        self._pk_by_slug: dict[str, int] = {}

    def _note_flags(self, stored: StoredDoc) -> None:
        pk = int(stored.doc["pk"])
        self._flagged.update((pk, flag) for flag in FLAGS if stored.item.get(flag))

    def create(self, fields: InterfaceFields, *, creator: str) -> Interface:
        slug = slugify(fields.title)
        if not slug:
            raise Conflict("title must contain letters or digits", field="title")
        if self.table.get_item(keys.socket_slug(slug), MAIN_SK):
            raise Conflict(f"An interface with the slug '{slug}' already exists", field="title")
        pk = self.table.next_id("socket")
        interface = Interface(
            **fields.model_dump(by_alias=False), pk=pk, slug=slug, created=timeutil.iso()
        )
        doc = interface.model_dump(mode="json", by_alias=False)
        main = self.table.item(
            keys.socket(pk),
            MAIN_SK,
            doc,
            GSI1PK=keys.SOCKETS.value,
            GSI1SK=f"{pk:012d}",
            creator=creator,
            slug=slug,
        )
        claims = [
            self.table.item(keys.socket_slug(slug), MAIN_SK, None, socket_pk=pk),
            self.table.item(keys.socket_title(fields.title), MAIN_SK, None, socket_pk=pk),
        ]
        try:
            self.table.transact_put([main], unique=claims, updates=[count_update(keys.SOCKETS, 1)])
        except ConditionFailed as error:
            raise Conflict(
                f"An interface with the title '{fields.title}' or slug '{slug}' already exists",
                field="title",
            ) from error
        return interface

    def get(self, pk: int) -> Interface:
        stored = self.table.get(keys.socket(pk))
        if stored is None:
            raise NotFound(f"Interface {pk} not found")
        return Interface.model_validate(stored.doc)

    def get_by_slug(self, slug: str) -> Interface:
        claim = self.table.get_item(keys.socket_slug(slug), MAIN_SK)
        if claim is None:
            raise NotFound(f"Interface '{slug}' not found", field="slug")
        return self.get(int(claim["socket_pk"]))

    def get_many_by_slug(self, slugs: list[str]) -> dict[str, Interface]:
        """Sockets by slug; slugs that do not exist are left out."""
        unknown = [(keys.socket_slug(s), MAIN_SK) for s in slugs if s not in self._pk_by_slug]
        if unknown:
            for claim in self.table.batch_get_docs(unknown).values():
                slug = claim.item[PK].removeprefix(keys.socket_slug(""))
                self._pk_by_slug[slug] = int(claim.item["socket_pk"])
        pks = dict.fromkeys(self._pk_by_slug[s] for s in slugs if s in self._pk_by_slug)
        found = self.table.batch_get_docs([(keys.socket(pk), MAIN_SK) for pk in pks])
        for stored in found.values():
            self._note_flags(stored)
        interfaces = [Interface.model_validate(s.doc) for s in found.values()]
        return {i.slug: i for i in interfaces}

    def has_values(self, pk: int) -> bool:
        item = self.table.get_item(keys.socket(pk), MAIN_SK)
        return bool(item and item.get("has_values"))

    def creator_of(self, pk: int) -> str | None:
        item = self.table.get_item(keys.socket(pk), MAIN_SK)
        if item is None:
            raise NotFound(f"Interface {pk} not found")
        return str(item["creator"]) if item.get("creator") else None

    def mark_used(self, interfaces: list[Interface], *, flag: str = "has_values") -> None:
        """Values exist for these sockets from now on (or, with ``flag="in_algorithm"``, an
        algorithm uses them): check_update freezes what those rely on. A flag this process
        has seen set is not written again (setting it is idempotent, so two jobs racing to
        be the first both write it, harmlessly)."""
        for interface in interfaces:
            if (interface.pk, flag) in self._flagged:
                continue
            self.table._table.update_item(
                Key={"PK": keys.socket(interface.pk), "SK": MAIN_SK},
                UpdateExpression="SET #f = :t",
                ConditionExpression="attribute_exists(PK)",
                ExpressionAttributeNames={"#f": flag},
                ExpressionAttributeValues={":t": True},
            )
            self._flagged.add((interface.pk, flag))

    def update(self, pk: int, fields: InterfaceFields) -> Interface:
        def mutate(stored: StoredDoc) -> Change | None:
            existing = Interface.model_validate(stored.doc)
            if fields.title != existing.title:
                raise Conflict("title cannot be changed", field="title")
            check_update(
                existing,
                fields,
                has_values=bool(stored.item.get("has_values")),
                in_algorithm=bool(stored.item.get("in_algorithm")),
            )
            updated = Interface(
                **fields.model_dump(by_alias=False),
                pk=existing.pk,
                slug=existing.slug,
                created=existing.created,
            )
            return updated.model_dump(mode="json", by_alias=False), {}

        stored = self.table.update_doc(keys.socket(pk), mutate)
        if stored is None:
            raise NotFound(f"Interface {pk} not found")
        return Interface.model_validate(stored.doc)

    def page(self, *, offset: int, limit: int) -> tuple[list[Interface], int]:
        docs = self.paginator.page(keys.SOCKETS, offset=offset, limit=limit)
        return [Interface.model_validate(d.doc) for d in docs], self.paginator.count(keys.SOCKETS)
