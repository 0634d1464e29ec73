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
        # Socket sets known to be used, by algorithm: a set once used stays used, so what
        # this process has seen is never wrong and spares each job's write (mark_set_used).
        self._used_sets: dict[str, frozenset[int]] = {}

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
        """A job used socket set ``index``: from now on it cannot be removed. Written once:
        the write is skipped when this process has seen the set used (adding to a set is
        idempotent, so two jobs racing to be the first both write it, harmlessly)."""
        if index in self._used_sets.get(pk, ()):
            return
        self.table._table.update_item(
            Key={"PK": keys.algorithm(pk), "SK": MAIN_SK},
            UpdateExpression="ADD used_sets :i",
            ConditionExpression="attribute_exists(PK)",
            ExpressionAttributeValues={":i": {index}},
        )
        self._used_sets[pk] = self._used_sets.get(pk, frozenset()) | {index}

    def get(self, pk: str) -> Algorithm:
        algorithm = self.find(pk)
        if algorithm is None:
            raise NotFound(f"Algorithm {pk} not found")
        return algorithm

    def find(self, pk: str) -> Algorithm | None:
        stored = self.table.get(keys.algorithm(pk))
        if stored is None:
            return None
        used = frozenset(int(i) for i in stored.item.get("used_sets") or ())
        if used:
            self._used_sets[pk] = self._used_sets.get(pk, frozenset()) | used
        return Algorithm.model_validate(stored.doc)

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
        if image.is_desired_version and image.import_status is ImportStatus.COMPLETED:
            self._point_to(image)
        return image

    # --- the desired image ------------------------------------------------------------------
    # One pointer item per algorithm names its desired image, so that switching is one write:
    # a reader (a job being created) sees the old image or the new one, never two or none.
    # An image's ``is_desired_version`` is read from the pointer; the flag stored in image
    # documents is only read for an algorithm whose images predate the pointer.

    def _point_to(self, image: AlgorithmImage) -> None:
        self.table._table.put_item(
            Item={
                "PK": keys.desired_image(image.algorithm),
                "SK": MAIN_SK,
                "image_pk": image.pk,
                "image_created": image.created,
            }
        )

    def desired_pk(self, algorithm_pk: str) -> str | None:
        """The pk the algorithm's pointer names; None without a pointer."""
        item = self.table.get_item(keys.desired_image(algorithm_pk))
        return str(item["image_pk"]) if item is not None else None

    def clear_desired_image(self, algorithm_pk: str, image_pk: str) -> None:
        """No desired image any more, if ``image_pk`` is still the one."""
        with contextlib.suppress(
            self.table._table.meta.client.exceptions.ConditionalCheckFailedException
        ):
            self.table._table.delete_item(
                Key={"PK": keys.desired_image(algorithm_pk), "SK": MAIN_SK},
                ConditionExpression="image_pk = :me",
                ExpressionAttributeValues={":me": image_pk},
            )

    @staticmethod
    def _as_pointed(image: AlgorithmImage, pointed: str | None) -> AlgorithmImage:
        if pointed is None:
            return image
        return image.model_copy(update={"is_desired_version": image.pk == pointed})

    def update_image(
        self, pk: str, change: Callable[[AlgorithmImage], AlgorithmImage]
    ) -> AlgorithmImage:
        """Replace the stored image with ``change(current)`` (read, change, conditional write);
        a change that makes a completed image the desired version points the algorithm at it
        (one write: the other images stop being it at the same moment)."""
        updated: list[AlgorithmImage] = []
        made_desired: list[bool] = []

        def mutate(stored: StoredDoc) -> Change | None:
            current = AlgorithmImage.model_validate(stored.doc)
            current = self._as_pointed(current, self.desired_pk(current.algorithm))
            new = change(current)
            updated[:] = [new]
            made_desired[:] = [new.is_desired_version and not current.is_desired_version]
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
        if made_desired[0] and image.import_status is ImportStatus.COMPLETED:
            self._point_to(image)
        return self._as_pointed(image, self.desired_pk(image.algorithm))

    def delete_image(self, image: AlgorithmImage) -> None:
        """Remove the image's record and its sha256 claim (the registry is the caller's)."""
        list_key = keys.algorithm_images_of(image.algorithm)
        self.table.transact_delete(
            [{"Key": {"PK": keys.algorithm_image(image.pk), "SK": MAIN_SK}}],
            updates=[count_update(list_key, -1)],
        )
        self.clear_desired_image(image.algorithm, image.pk)
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
        image = AlgorithmImage.model_validate(stored.doc)
        return self._as_pointed(image, self.desired_pk(image.algorithm))

    def images_of(self, algorithm_pk: str) -> list[AlgorithmImage]:
        pointed = self.desired_pk(algorithm_pk)
        list_key = keys.algorithm_images_of(algorithm_pk)
        items = self.table.query_all(
            index=list_key.index.name,
            key_name=list_key.index.partition_key,
            key_value=list_key.value,
        )
        return [
            self._as_pointed(AlgorithmImage.model_validate(_json(item)), pointed) for item in items
        ]

    def desired_image(self, algorithm_pk: str) -> AlgorithmImage | None:
        """The image the algorithm's pointer names, once its import completed (an algorithm
        whose images predate the pointer: the newest ready image marked desired)."""
        pointed = self.desired_pk(algorithm_pk)
        if pointed is not None:
            stored = self.table.get(keys.algorithm_image(pointed))
            if stored is None:
                return None
            image = AlgorithmImage.model_validate(stored.doc)
            if image.import_status is not ImportStatus.COMPLETED:
                return None
            return self._as_pointed(image, pointed)
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
