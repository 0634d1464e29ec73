"""The one DynamoDB table: documents, optimistic updates, counters.

Each entity is one item whose body is a JSON document (``doc``) next to the key and index
attributes. Storing the body as JSON keeps floats exact and avoids Decimal conversions; a
``version`` number makes every update a compare-and-set, so concurrent writers never lose
each other's changes (the loser re-reads and re-applies).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from gantry import resources
from gantry.aws import Clients

T = TypeVar("T")
PK = resources.PARTITION_KEY
SK = resources.SORT_KEY
MAIN_SK = "A"
MAX_OPTIMISTIC_RETRIES = 20


class ConditionFailed(Exception):
    """A conditional write found the item changed or already there. ``failed``: for a
    transaction, the positions of its actions whose condition failed (when DynamoDB says)."""

    def __init__(self, message: str, failed: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.failed = failed


def _failed_actions(error: ClientError) -> tuple[int, ...]:
    reasons = error.response.get("CancellationReasons") or []
    return tuple(
        i for i, reason in enumerate(reasons) if reason.get("Code") == "ConditionalCheckFailed"
    )


def is_condition_failure(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


# What update_doc's ``mutate`` returns: (doc, attributes) or (doc, attributes, updates).
Change = tuple[dict[str, Any], dict[str, Any]] | tuple[dict[str, Any], dict[str, Any], list]


@dataclass
class StoredDoc:
    doc: dict[str, Any]
    version: int
    item: dict[str, Any]


class Table:
    def __init__(self, clients: Clients, table_name: str) -> None:
        self.clients = clients
        self.name = table_name
        self._table = clients.dynamodb_resource.Table(table_name)

    # --- single items -----------------------------------------------------------------

    def get(self, pk: str, sk: str = MAIN_SK, *, consistent: bool = True) -> StoredDoc | None:
        item = self._table.get_item(Key={PK: pk, SK: sk}, ConsistentRead=consistent).get("Item")
        return _stored(item) if item else None

    def get_item(self, pk: str, sk: str = MAIN_SK) -> dict[str, Any] | None:
        return self._table.get_item(Key={PK: pk, SK: sk}, ConsistentRead=True).get("Item")

    def batch_get_docs(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], StoredDoc]:
        """Fetch up to any number of items, 100 per request, retrying unprocessed keys."""
        found: dict[tuple[str, str], StoredDoc] = {}
        resource = self.clients.dynamodb_resource
        for start in range(0, len(keys), 100):
            chunk = [{PK: pk, SK: sk} for pk, sk in dict.fromkeys(keys[start : start + 100])]
            request: dict[str, Any] = {self.name: {"Keys": chunk, "ConsistentRead": True}}
            while request:
                response = resource.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.name, []):
                    found[(item[PK], item[SK])] = _stored(item)
                request = response.get("UnprocessedKeys") or {}
        return found

    def item(self, pk: str, sk: str, doc: dict[str, Any] | None, **attributes: Any) -> dict:
        """An item ready to put: keys, extra attributes, and the JSON document."""
        item: dict[str, Any] = {
            PK: pk,
            SK: sk,
            **{k: v for k, v in attributes.items() if v is not None},
        }
        if doc is not None:
            item["doc"] = json.dumps(doc, separators=(",", ":"), allow_nan=False)
            item["version"] = attributes.get("version", 1)
        return item

    def transact_put(
        self,
        puts: Iterable[dict[str, Any]],
        *,
        unique: Iterable[dict[str, Any]] = (),
        updates: Iterable[dict[str, Any]] = (),
    ) -> None:
        """Write items all-or-nothing. ``unique`` items must not exist yet (uniqueness claims).
        An update may carry its own ``ConditionExpression``. On a failed condition,
        ConditionFailed names the failed actions by position: puts, then unique, then updates."""
        actions: list[dict[str, Any]] = []
        for item in puts:
            actions.append({"Put": {"TableName": self.name, "Item": _ser(item)}})
        for item in unique:
            actions.append(
                {
                    "Put": {
                        "TableName": self.name,
                        "Item": _ser(item),
                        "ConditionExpression": "attribute_not_exists(#pk)",
                        "ExpressionAttributeNames": {"#pk": PK},
                    }
                }
            )
        self._transact(actions, updates)

    def transact_delete(
        self, deletes: Iterable[dict[str, Any]], *, updates: Iterable[dict[str, Any]] = ()
    ) -> None:
        """Delete items (``{"Key": …, "ConditionExpression"?: …}``) and update counters
        all-or-nothing; ConditionFailed if a condition fails."""
        actions: list[dict[str, Any]] = []
        for delete in deletes:
            actions.append(
                {"Delete": {"TableName": self.name, **delete, "Key": _ser(delete["Key"])}}
            )
        self._transact(actions, updates)

    def _transact(self, actions: list[dict[str, Any]], updates: Iterable[dict[str, Any]]) -> None:
        """``actions``, then the ``updates``, all-or-nothing; ConditionFailed names the failed
        actions by position."""
        actions.extend({"Update": {"TableName": self.name, **_ser_update(u)}} for u in updates)
        try:
            self.clients.dynamodb.transact_write_items(TransactItems=actions)
        except ClientError as error:
            if is_condition_failure(error):
                raise ConditionFailed(str(error), _failed_actions(error)) from error
            raise

    def put_if_absent(self, item: dict[str, Any]) -> bool:
        try:
            self._table.put_item(
                Item=item,
                ConditionExpression="attribute_not_exists(#pk)",
                ExpressionAttributeNames={"#pk": PK},
            )
            return True
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise

    def put(self, item: dict[str, Any]) -> None:
        self._table.put_item(Item=item)

    def delete(self, pk: str, sk: str = MAIN_SK) -> None:
        self._table.delete_item(Key={PK: pk, SK: sk})

    def pop(self, pk: str, sk: str = MAIN_SK) -> dict[str, Any] | None:
        """Delete the item and return it as it was, or None if there was none: of several
        callers at once only one gets it."""
        response = self._table.delete_item(Key={PK: pk, SK: sk}, ReturnValues="ALL_OLD")
        return response.get("Attributes") or None

    def set_attributes(
        self,
        pk: str,
        values: dict[str, Any],
        *,
        sk: str = MAIN_SK,
        expected: dict[str, Any] | None = None,
    ) -> bool:
        """Set plain attributes of an item (not its doc); with ``expected``, only while each
        named attribute has that value: False when one has not (another writer came first)."""
        names = {f"#{i}": name for i, name in enumerate(values)}
        attribute_values = {f":{i}": value for i, value in enumerate(values.values())}
        request: dict[str, Any] = {
            "Key": {PK: pk, SK: sk},
            "UpdateExpression": "SET " + ", ".join(f"#{i} = :{i}" for i in range(len(values))),
        }
        if expected:
            conditions = []
            for i, (name, value) in enumerate(expected.items()):
                names[f"#e{i}"] = name
                attribute_values[f":e{i}"] = value
                conditions.append(f"#e{i} = :e{i}")
            request["ConditionExpression"] = " AND ".join(conditions)
        request["ExpressionAttributeNames"] = names
        request["ExpressionAttributeValues"] = attribute_values
        try:
            self._table.update_item(**request)
        except ClientError as error:
            if expected and is_condition_failure(error):
                return False
            raise
        return True

    # --- optimistic updates -----------------------------------------------------------

    def replace(
        self,
        current: StoredDoc,
        doc: dict[str, Any],
        *,
        also: list[dict[str, Any]] | None = None,
        **attributes: Any,
    ) -> StoredDoc:
        """Write ``doc`` if the item is still at ``current.version``; else ConditionFailed.
        ``also``: changes of other items made in the same transaction: updates (counters), or
        ``{"Put": item}`` / ``{"Delete": key}``."""
        item = {
            **{k: v for k, v in current.item.items() if k not in ("doc", "version")},
            **attributes,
        }
        item = {k: v for k, v in item.items() if v is not None}
        new_version = current.version + 1
        item["doc"] = json.dumps(doc, separators=(",", ":"), allow_nan=False)
        item["version"] = new_version
        if also:
            put = {
                "TableName": self.name,
                "Item": _ser(item),
                "ConditionExpression": "#v = :v",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": _ser({":v": current.version}),
            }
            updates = [self._action(change) for change in also]
            try:
                self.clients.dynamodb.transact_write_items(TransactItems=[{"Put": put}, *updates])
            except ClientError as error:
                if is_condition_failure(error):
                    raise ConditionFailed("changed concurrently") from error
                raise
            return StoredDoc(doc=doc, version=new_version, item=item)
        try:
            self._table.put_item(
                Item=item,
                ConditionExpression="#v = :v",
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={":v": current.version},
            )
        except ClientError as error:
            if is_condition_failure(error):
                raise ConditionFailed("changed concurrently") from error
            raise
        return StoredDoc(doc=doc, version=new_version, item=item)

    def _action(self, change: dict[str, Any]) -> dict[str, Any]:
        if "Put" in change:
            return {"Put": {"TableName": self.name, "Item": _ser(change["Put"])}}
        if "Delete" in change:
            return {"Delete": {"TableName": self.name, "Key": _ser(change["Delete"])}}
        return {"Update": {"TableName": self.name, **_ser_update(change)}}

    def update_doc(
        self,
        pk: str,
        mutate: Callable[[StoredDoc], Change | None],
        sk: str = MAIN_SK,
        *,
        guess: StoredDoc | None = None,
    ) -> StoredDoc | None:
        """Read, let ``mutate`` return (new doc, attribute changes) or None to leave it, write
        with a version check; on a concurrent change re-read and re-apply. ``mutate`` may add
        a third element: updates of other items written in the same transaction.

        ``guess``: the item as the caller last saw it, tried first instead of a read. The
        version check makes a write based on it safe (a stale guess fails the condition and
        is re-read); a guess on which ``mutate`` changes nothing is confirmed by a read, since
        a stale one must not make a caller skip a change."""
        current = guess
        for _ in range(MAX_OPTIMISTIC_RETRIES):
            fresh = current is None
            if current is None:
                current = self.get(pk, sk)
                if current is None:
                    return None
            change = mutate(current)
            if change is None:
                if fresh:
                    return current
                current = None
                continue
            doc, attributes, *also = change
            try:
                return self.replace(current, doc, also=also[0] if also else None, **attributes)
            except ConditionFailed:
                current = None
                continue
        raise ConditionFailed(f"{pk} kept changing; gave up after {MAX_OPTIMISTIC_RETRIES} tries")

    # --- counters and queries -----------------------------------------------------------

    def next_id(self, name: str) -> int:
        """Atomic counter for integer ids (sockets, socket values)."""
        response = self._table.update_item(
            Key={PK: f"COUNTER#{name}", SK: "N"},
            UpdateExpression="ADD #n :one",
            ExpressionAttributeNames={"#n": "n"},
            ExpressionAttributeValues={":one": 1},
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["n"])

    def next_ids(self, name: str, count: int) -> list[int]:
        if count <= 0:
            return []
        response = self._table.update_item(
            Key={PK: f"COUNTER#{name}", SK: "N"},
            UpdateExpression="ADD #n :k",
            ExpressionAttributeNames={"#n": "n"},
            ExpressionAttributeValues={":k": count},
            ReturnValues="UPDATED_NEW",
        )
        last = int(response["Attributes"]["n"])
        return list(range(last - count + 1, last + 1))

    def query(
        self,
        *,
        index: str | None,
        key_name: str,
        key_value: str,
        sort_key: str | None = None,
        begins_with: str | None = None,
        limit: int | None = None,
        start_key: dict[str, Any] | None = None,
        forward: bool = True,
        keys_only: bool = False,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        condition = Key(key_name).eq(key_value)
        if begins_with is not None and sort_key:
            condition = condition & Key(sort_key).begins_with(begins_with)
        kwargs: dict[str, Any] = {"KeyConditionExpression": condition, "ScanIndexForward": forward}
        if index:
            kwargs["IndexName"] = index
        if limit:
            kwargs["Limit"] = limit
        if start_key:
            kwargs["ExclusiveStartKey"] = start_key
        if keys_only:
            kwargs["ProjectionExpression"] = "#pk, #sk" + ("" if not index else ", #ipk, #isk")
            names = {"#pk": PK, "#sk": SK}
            if index:
                names.update({"#ipk": key_name, "#isk": sort_key or SK})
            kwargs["ExpressionAttributeNames"] = names
        response = self._table.query(**kwargs)
        return response.get("Items", []), response.get("LastEvaluatedKey")

    def query_at_most(
        self, pk: str, sk_max: str, *, limit: int, forward: bool
    ) -> list[dict[str, Any]]:
        """Items of partition ``pk`` whose sort key is <= ``sk_max``."""
        response = self._table.query(
            KeyConditionExpression=Key(PK).eq(pk) & Key(SK).lte(sk_max),
            ScanIndexForward=forward,
            Limit=limit,
        )
        return response.get("Items", [])

    def scan_all(self, condition: Any) -> Iterator[dict[str, Any]]:
        """Every item of the table that ``condition`` (a boto3 ``Attr`` filter) keeps, page by
        page: for maintenance (gantry.store.backfill), never on a request's path."""
        kwargs: dict[str, Any] = {"FilterExpression": condition, "ConsistentRead": True}
        while True:
            response = self._table.scan(**kwargs)
            yield from response.get("Items", [])
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def query_all(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        start = None
        while True:
            items, start = self.query(start_key=start, **kwargs)
            yield from items
            if not start:
                return


def _stored(item: dict[str, Any]) -> StoredDoc:
    return StoredDoc(
        doc=json.loads(item.get("doc", "{}")), version=int(item.get("version", 0)), item=item
    )


def _ser(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    return {k: serializer.serialize(v) for k, v in item.items()}


def _ser_update(update: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    out = dict(update)
    out["Key"] = {k: serializer.serialize(v) for k, v in update["Key"].items()}
    if "ExpressionAttributeValues" in update:
        out["ExpressionAttributeValues"] = {
            k: serializer.serialize(v) for k, v in update["ExpressionAttributeValues"].items()
        }
    return out
