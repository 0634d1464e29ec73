"""Model tarballs of algorithms, the one claim per (algorithm, sha256), and the pointer to
each algorithm's desired model.

Uniqueness and "newest wins" are conditional writes, never read-then-write: two imports of
the same bytes racing each other cannot both complete, and an older import finishing after a
newer one does not take the pointer back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from gantry import resources, timeutil
from gantry.algorithms import AlgorithmModel, ImportStatus
from gantry.errors import NotFound
from gantry.store import keys
from gantry.store.table import (
    MAIN_SK,
    PK,
    SK,
    Change,
    ConditionFailed,
    StoredDoc,
    Table,
    is_condition_failure,
)


class DuplicateModel(Exception):
    """The algorithm already has a model with these bytes: ``existing`` is its pk."""

    def __init__(self, existing: str) -> None:
        super().__init__(existing)
        self.existing = existing


@dataclass(frozen=True)
class DesiredModel:
    """What a job needs of the desired model, read in one get."""

    pk: str
    sha256: str
    key: str
    created: str


class AlgorithmModelStore:
    def __init__(self, table: Table) -> None:
        self.table = table

    def create(self, model: AlgorithmModel) -> AlgorithmModel:
        list_key = keys.algorithm_models_of(model.algorithm)
        item = self.table.item(
            keys.algorithm_model(model.pk),
            MAIN_SK,
            model.model_dump(mode="json"),
            GSI2PK=list_key.value,
            GSI2SK=f"{model.created}#{model.pk}",
        )
        if not self.table.put_if_absent(item):
            raise ConditionFailed(f"Algorithm model {model.pk} exists")
        return model

    def get(self, pk: str) -> AlgorithmModel:
        stored = self.table.get(keys.algorithm_model(pk))
        if stored is None:
            raise NotFound(f"Algorithm model {pk} not found")
        return AlgorithmModel.model_validate(stored.doc)

    def models_of(self, algorithm_pk: str) -> list[AlgorithmModel]:
        """Oldest first."""
        list_key = keys.algorithm_models_of(algorithm_pk)
        items = self.table.query_all(
            index=list_key.index.name,
            key_name=list_key.index.partition_key,
            key_value=list_key.value,
        )
        return [AlgorithmModel.model_validate(json.loads(item["doc"])) for item in items]

    def update(
        self, pk: str, change: Callable[[AlgorithmModel], AlgorithmModel | None]
    ) -> AlgorithmModel:
        """Replace the stored model with ``change(current)`` (None: leave it)."""
        updated: list[AlgorithmModel] = []

        def mutate(stored: StoredDoc) -> Change | None:
            current = AlgorithmModel.model_validate(stored.doc)
            new = change(current)
            updated[:] = [new or current]
            if new is None:
                return None
            attributes = {}
            if new.import_status is ImportStatus.FAILED and current.import_status is not (
                ImportStatus.FAILED
            ):
                # Listed by the time it failed, for the clean-up after the retention period.
                attributes = {
                    "GSI3PK": keys.FAILED_MODEL_IMPORTS,
                    "GSI3SK": f"{timeutil.iso()}#{pk}",
                }
            return new.model_dump(mode="json"), attributes

        if self.table.update_doc(keys.algorithm_model(pk), mutate) is None:
            raise NotFound(f"Algorithm model {pk} not found")
        return updated[0]

    def complete(self, pk: str, *, sha256: str, size: int, key: str) -> AlgorithmModel:
        """Mark the import of ``pk`` Completed with what it found, in one transaction with
        the claim on (algorithm, sha256); DuplicateModel if another model holds that claim.
        Completing again (a retried message) is harmless."""
        for _ in range(20):
            stored = self.table.get(keys.algorithm_model(pk))
            if stored is None:
                raise NotFound(f"Algorithm model {pk} not found")
            current = AlgorithmModel.model_validate(stored.doc)
            done = current.model_copy(
                update={
                    "import_status": ImportStatus.COMPLETED,
                    "status_message": "",
                    "sha256": sha256,
                    "size_in_storage": size,
                    "key": key,
                }
            )
            claim = {
                "Key": {PK: keys.algorithm_model_sha256(current.algorithm, sha256), SK: MAIN_SK},
                "UpdateExpression": "SET model_pk = :m",
                "ConditionExpression": "attribute_not_exists(#pk) OR model_pk = :m",
                "ExpressionAttributeNames": {"#pk": PK},
                "ExpressionAttributeValues": {":m": pk},
            }
            try:
                self.table.replace(stored, done.model_dump(mode="json"), also=[claim])
                return done
            except ConditionFailed:
                holder = self.table.get_item(keys.algorithm_model_sha256(current.algorithm, sha256))
                if holder is not None and holder["model_pk"] != pk:
                    raise DuplicateModel(str(holder["model_pk"])) from None
                # Otherwise the model item changed under us: read it again.
        raise ConditionFailed(f"Algorithm model {pk} kept changing")

    def delete(self, model: AlgorithmModel) -> None:
        """Remove the model's record, its sha256 claim and the pointer to it (if it is the
        desired one); its tarball is the caller's."""
        self.table._table.delete_item(Key={PK: keys.algorithm_model(model.pk), SK: MAIN_SK})
        if model.sha256:
            claim = keys.algorithm_model_sha256(model.algorithm, model.sha256)
            try:
                self.table._table.delete_item(
                    Key={PK: claim, SK: MAIN_SK},
                    ConditionExpression="model_pk = :m",
                    ExpressionAttributeValues={":m": model.pk},
                )
            except ClientError as error:
                if not is_condition_failure(error):
                    raise
        self.clear_desired(model.algorithm, model.pk)

    def failed_before(self, moment: str) -> list[AlgorithmModel]:
        """Models whose import failed before ``moment`` (ISO time)."""
        from boto3.dynamodb.conditions import Key

        index = resources.GSI_BY_STATUS
        kwargs: dict[str, Any] = {
            "IndexName": index.name,
            "KeyConditionExpression": Key(index.partition_key).eq(keys.FAILED_MODEL_IMPORTS)
            & Key(index.sort_key).lt(moment),
        }
        found: list[AlgorithmModel] = []
        while True:
            page = self.table._table.query(**kwargs)
            found.extend(AlgorithmModel.model_validate(json.loads(i["doc"])) for i in page["Items"])
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- the desired model ----------------------------------------------------------------

    def desired(self, algorithm_pk: str) -> DesiredModel | None:
        item = self.table.get_item(keys.desired_model(algorithm_pk))
        if item is None:
            return None
        return DesiredModel(
            pk=str(item["model_pk"]),
            sha256=str(item["sha256"]),
            key=str(item["bucket_key"]),
            created=str(item["model_created"]),
        )

    def make_desired(self, model: AlgorithmModel, *, only_if_newest: bool = False) -> bool:
        """Point the algorithm at ``model`` (a completed one). ``only_if_newest``: unless the
        desired model was created after it (an import finishing late); False if so."""
        if model.import_status is not ImportStatus.COMPLETED or not model.sha256 or not model.key:
            raise ValueError(f"algorithm model {model.pk} has not been imported")
        update: dict[str, Any] = {
            "Key": {PK: keys.desired_model(model.algorithm), SK: MAIN_SK},
            "UpdateExpression": "SET model_pk = :m, sha256 = :s, bucket_key = :k, "
            "model_created = :c",
            "ExpressionAttributeValues": {
                ":m": model.pk,
                ":s": model.sha256,
                ":k": model.key,
                ":c": model.created,
            },
        }
        if only_if_newest:
            update["ConditionExpression"] = (
                "attribute_not_exists(model_created) OR model_created <= :c"
            )
        try:
            self.table._table.update_item(**update)
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def clear_desired(self, algorithm_pk: str, model_pk: str) -> None:
        """No desired model any more, if ``model_pk`` is still the one."""
        try:
            self.table._table.delete_item(
                Key={PK: keys.desired_model(algorithm_pk), SK: MAIN_SK},
                ConditionExpression="model_pk = :m",
                ExpressionAttributeValues={":m": model_pk},
            )
        except ClientError as error:
            if not is_condition_failure(error):
                raise
