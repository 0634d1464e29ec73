"""Algorithms (unique slug, visible to their members) and their container images."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

from gantry import resources, timeutil
from gantry.algorithms import (
    Algorithm,
    AlgorithmFields,
    AlgorithmImage,
    AlgorithmImageFields,
    BioimageioImport,
    ImportStatus,
)
from gantry.errors import Conflict, NotFound
from gantry.interfaces import slugify
from gantry.store import keys
from gantry.store.pagination import ListKey, Paginator, count_update
from gantry.store.table import MAIN_SK, Change, ConditionFailed, StoredDoc, Table

ENDED = frozenset({ImportStatus.FAILED, ImportStatus.CANCELLED})


class AlgorithmStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)

    def create(
        self,
        fields: AlgorithmFields,
        *,
        creator: str,
        bioimageio: BioimageioImport | None = None,
    ) -> Algorithm:
        slug = slugify(fields.title)
        if not slug:
            raise Conflict("title must contain letters or digits", field="title")
        moment = timeutil.iso()
        algorithm = Algorithm(
            **fields.model_dump(),
            pk=str(uuid.uuid4()),
            slug=slug,
            creator=creator,
            created=moment,
            modified=moment,
            bioimageio=bioimageio,
        )
        members = dict.fromkeys([creator, *algorithm.editors, *algorithm.users])
        puts = [self.table.item(keys.algorithm(algorithm.pk), MAIN_SK, _doc(algorithm), slug=slug)]
        updates = []
        for member in members:
            list_key = keys.algorithms_of(member)
            puts.append(
                self.table.item(
                    keys.algorithm(algorithm.pk),
                    f"MEMBER#{member}",
                    None,
                    GSI1PK=list_key.value,
                    GSI1SK=f"{moment}#{algorithm.pk}",
                    algorithm_pk=algorithm.pk,
                )
            )
            updates.append(count_update(list_key, 1))
        # Every algorithm is also in the list of all algorithms (an admin's list).
        puts.append(
            self.table.item(
                keys.algorithm(algorithm.pk),
                "LISTED",
                None,
                GSI1PK=keys.ALL_ALGORITHMS.value,
                GSI1SK=f"{moment}#{algorithm.pk}",
                algorithm_pk=algorithm.pk,
            )
        )
        updates.append(count_update(keys.ALL_ALGORITHMS, 1))
        claim = self.table.item(keys.algorithm_slug(slug), MAIN_SK, None, algorithm_pk=algorithm.pk)
        try:
            self.table.transact_put(puts, unique=[claim], updates=updates)
        except ConditionFailed as error:
            raise Conflict(
                f"An algorithm with the slug '{slug}' already exists", field="title"
            ) from error
        return algorithm

    def update(
        self, pk: str, change: Callable[[Algorithm, set[int]], AlgorithmFields]
    ) -> Algorithm:
        """Replace the algorithm's fields with ``change(current, used socket sets)``; its
        member items (everyone's lists) follow in the same transaction."""
        updated: list[Algorithm] = []
        removed: set[str] = set()

        def mutate(stored: StoredDoc) -> Change | None:
            current = Algorithm.model_validate(stored.doc)
            used = {int(i) for i in stored.item.get("used_sets") or ()}
            fields = change(current, used)
            # An Algorithm given back (a bioimage.io import's change) brings its own
            # registration record; plain fields keep the stored one.
            kept = {"pk", "slug", "creator", "created"}
            new = Algorithm(
                **{
                    **current.model_dump(include={*kept, "bioimageio"}),
                    **fields.model_dump(exclude={*kept, "modified"}),
                },
                modified=timeutil.iso(),
            )
            updated[:] = [new]
            before = set(_members(current))
            after = set(_members(new))
            removed.clear()
            removed.update(before - after)
            actions: list[dict] = []
            for member in sorted(after - before):
                list_key = keys.algorithms_of(member)
                actions.append({"Put": self._member_item(new, member, timeutil.iso())})
                actions.append(count_update(list_key, 1))
            for member in sorted(before - after):
                actions.append({"Delete": {"PK": keys.algorithm(pk), "SK": f"MEMBER#{member}"}})
                actions.append(count_update(keys.algorithms_of(member), -1))
            return _doc(new), {}, actions

        stored = self.table.update_doc(keys.algorithm(pk), mutate)
        if stored is None:
            raise NotFound(f"Algorithm {pk} not found")
        for member in removed:  # a deletion moves the offsets of that member's list
            self.paginator.clear(keys.algorithms_of(member))
        return updated[0]

    def _member_item(self, algorithm: Algorithm, member: str, moment: str) -> dict:
        return self.table.item(
            keys.algorithm(algorithm.pk),
            f"MEMBER#{member}",
            None,
            GSI1PK=keys.algorithms_of(member).value,
            GSI1SK=f"{moment}#{algorithm.pk}",
            algorithm_pk=algorithm.pk,
        )

    def mark_set_used(self, pk: str, index: int) -> None:
        """A job used socket set ``index``: from now on it cannot be removed."""
        self.table._table.update_item(
            Key={"PK": keys.algorithm(pk), "SK": MAIN_SK},
            UpdateExpression="ADD used_sets :i",
            ConditionExpression="attribute_exists(PK)",
            ExpressionAttributeValues={":i": {index}},
        )

    def get(self, pk: str) -> Algorithm:
        stored = self.table.get(keys.algorithm(pk))
        if stored is None:
            raise NotFound(f"Algorithm {pk} not found")
        return Algorithm.model_validate(stored.doc)

    def find(self, pk: str) -> Algorithm | None:
        stored = self.table.get(keys.algorithm(pk))
        return Algorithm.model_validate(stored.doc) if stored else None

    def get_by_slug(self, slug: str) -> Algorithm:
        claim = self.table.get_item(keys.algorithm_slug(slug), MAIN_SK)
        if claim is None:
            raise NotFound(f"Algorithm '{slug}' not found", field="slug")
        return self.get(str(claim["algorithm_pk"]))

    def page_for(self, username: str, *, offset: int, limit: int) -> tuple[list[Algorithm], int]:
        return self._page(keys.algorithms_of(username), offset=offset, limit=limit)

    def page_all(self, *, offset: int, limit: int) -> tuple[list[Algorithm], int]:
        return self._page(keys.ALL_ALGORITHMS, offset=offset, limit=limit)

    def _page(self, list_key: ListKey, *, offset: int, limit: int) -> tuple[list[Algorithm], int]:
        memberships = self.paginator.page(list_key, offset=offset, limit=limit)
        wanted = [(keys.algorithm(m.item["algorithm_pk"]), MAIN_SK) for m in memberships]
        found = self.table.batch_get_docs(wanted)
        algorithms = [Algorithm.model_validate(found[k].doc) for k in wanted if k in found]
        return algorithms, self.paginator.count(list_key)

    # --- algorithm images -----------------------------------------------------------------

    def create_image(
        self,
        algorithm: Algorithm,
        fields: AlgorithmImageFields | None,
        *,
        creator: str,
        **extra: object,
    ) -> AlgorithmImage:
        """Store a new image: ``fields`` of a registered one, or ``extra`` fields of one that
        an import fills in (``import_status``, ``user_upload``, ...)."""
        image = AlgorithmImage(
            **(fields.model_dump() if fields is not None else {}),
            **extra,
            pk=str(uuid.uuid4()),
            algorithm=algorithm.pk,
            creator=creator,
            created=timeutil.iso(),
        )
        list_key = keys.algorithm_images_of(algorithm.pk)
        item = self.table.item(
            keys.algorithm_image(image.pk),
            MAIN_SK,
            image.model_dump(mode="json"),
            GSI2PK=list_key.value,
            GSI2SK=f"{image.created}#{image.pk}",
        )
        self.table.transact_put([item], updates=[count_update(list_key, 1)])
        if image.is_desired_version:
            self._undesire_others(algorithm.pk, keep=image.pk)
        return image

    def _undesire_others(self, algorithm_pk: str, *, keep: str) -> None:
        for other in self.images_of(algorithm_pk):
            if other.pk == keep or not other.is_desired_version:
                continue

            def mutate(stored: StoredDoc) -> Change | None:
                return {**stored.doc, "is_desired_version": False}, {}

            self.table.update_doc(keys.algorithm_image(other.pk), mutate)

    def update_image(
        self, pk: str, change: Callable[[AlgorithmImage], AlgorithmImage]
    ) -> AlgorithmImage:
        """Replace the stored image with ``change(current)`` (read, change, conditional write);
        a desired version makes the algorithm's other images undesired."""
        updated: list[AlgorithmImage] = []

        def mutate(stored: StoredDoc) -> Change | None:
            current = AlgorithmImage.model_validate(stored.doc)
            new = change(current)
            updated[:] = [new]
            attributes = {}
            if new.import_status in ENDED and current.import_status not in ENDED:
                # Listed by the time it ended, for the clean-up after the retention period.
                attributes = {
                    "GSI3PK": keys.ENDED_IMPORTS,
                    "GSI3SK": f"{timeutil.iso()}#{pk}",
                }
            return new.model_dump(mode="json"), attributes

        if self.table.update_doc(keys.algorithm_image(pk), mutate) is None:
            raise NotFound(f"Algorithm image {pk} not found")
        image = updated[0]
        if image.is_desired_version:
            self._undesire_others(image.algorithm, keep=image.pk)
        return image

    def delete_image(self, image: AlgorithmImage) -> None:
        """Remove the image's record and its sha256 claim (the registry is the caller's)."""
        list_key = keys.algorithm_images_of(image.algorithm)
        self.table.transact_delete(
            [{"Key": {"PK": keys.algorithm_image(image.pk), "SK": MAIN_SK}}],
            updates=[count_update(list_key, -1)],
        )
        if image.sha256:
            self.release_image_sha256(image, image.sha256)

    def claim_image_sha256(self, image: AlgorithmImage, sha256: str) -> str | None:
        """Make ``image`` the one image of its algorithm with this config sha256, by a
        conditional write: None when it is (now) the image's, else the pk of the image that
        holds it. A claim of an image that failed, was cancelled or removed is taken over."""
        key = {"PK": keys.algorithm_image_sha256(image.algorithm, sha256), "SK": MAIN_SK}
        holder: str | None = None
        for _ in range(5):
            condition = "attribute_not_exists(PK) OR image_pk = :holder"
            values = {":holder": holder or image.pk}
            if holder is not None:  # taking it over: only from the holder just read
                condition = "image_pk = :holder"
            try:
                self.table._table.put_item(
                    Item={**key, "image_pk": image.pk},
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                )
                return None
            except self.table._table.meta.client.exceptions.ConditionalCheckFailedException:
                pass
            claim = self.table.get_item(key["PK"], MAIN_SK)
            if claim is None:
                holder = None
                continue
            holder = str(claim["image_pk"])
            if holder == image.pk:
                return None
            other = self.table.get(keys.algorithm_image(holder))
            if other is not None and other.doc.get("import_status") not in ENDED:
                return holder
        return holder

    def release_image_sha256(self, image: AlgorithmImage, sha256: str) -> None:
        """Give up ``image``'s claim on ``sha256`` (if it holds it)."""
        key = {"PK": keys.algorithm_image_sha256(image.algorithm, sha256), "SK": MAIN_SK}
        with contextlib.suppress(
            self.table._table.meta.client.exceptions.ConditionalCheckFailedException
        ):
            self.table._table.delete_item(
                Key=key,
                ConditionExpression="image_pk = :me",
                ExpressionAttributeValues={":me": image.pk},
            )

    def ended_imports_before(self, moment: str) -> list[AlgorithmImage]:
        """Images whose import ended Failed or Cancelled before ``moment`` (ISO time)."""
        from boto3.dynamodb.conditions import Key

        found: list[AlgorithmImage] = []
        kwargs: dict = {
            "IndexName": resources.GSI_BY_STATUS.name,
            "KeyConditionExpression": Key(resources.GSI_BY_STATUS.partition_key).eq(
                keys.ENDED_IMPORTS
            )
            & Key(resources.GSI_BY_STATUS.sort_key).lt(moment),
        }
        while True:
            page = self.table._table.query(**kwargs)
            found.extend(AlgorithmImage.model_validate(_json(item)) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_image(self, pk: str) -> AlgorithmImage:
        stored = self.table.get(keys.algorithm_image(pk))
        if stored is None:
            raise NotFound(f"Algorithm image {pk} not found")
        return AlgorithmImage.model_validate(stored.doc)

    def images_of(self, algorithm_pk: str) -> list[AlgorithmImage]:
        list_key = keys.algorithm_images_of(algorithm_pk)
        items = self.table.query_all(
            index=list_key.index.name,
            key_name=list_key.index.partition_key,
            key_value=list_key.value,
        )
        return [AlgorithmImage.model_validate(_json(item)) for item in items]

    def desired_image(self, algorithm_pk: str) -> AlgorithmImage | None:
        """The newest ready image marked as the desired version."""
        ready = [
            image
            for image in self.images_of(algorithm_pk)
            if image.is_desired_version and image.import_status == "Completed"
        ]
        return max(ready, key=lambda image: image.created) if ready else None


def _members(algorithm: Algorithm) -> list[str]:
    return list(dict.fromkeys([algorithm.creator, *algorithm.editors, *algorithm.users]))


def _doc(algorithm: Algorithm) -> dict:
    return algorithm.model_dump(mode="json")


def _json(item: dict) -> dict:
    import json

    return json.loads(item["doc"])
