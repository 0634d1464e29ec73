"""Everyone's list of a kind of entity (what admins see): one small listing item per entity.

An entity's own item is in its owner's list (its index attributes); a second list needs a
second item. The listing item sits beside the entity's item (same partition key, sort key
``LISTED#ALL``) and is indexed on the shared list; a page reads the listing items, then the
entities' own items in one batch. The listing is written in the entity's create transaction
(and removed with it), so the list and its count never disagree.
"""

from __future__ import annotations

from typing import Any

from gantry.store.pagination import ListKey, Paginator, count_update
from gantry.store.table import MAIN_SK, PK, ConditionFailed, StoredDoc, Table

LISTED_ALL = "LISTED#ALL"


def listing(table: Table, entity_key: str, list_key: ListKey, sort: str) -> dict[str, Any]:
    """The listing item of the entity whose item has partition key ``entity_key``."""
    return table.item(
        entity_key,
        LISTED_ALL,
        None,
        **{list_key.index.partition_key: list_key.value, list_key.index.sort_key: sort},
    )


def delete_listing(entity_key: str) -> dict[str, Any]:
    """The ``transact_delete`` action that removes a listing (if there is one)."""
    return {"Key": {PK: entity_key, "SK": LISTED_ALL}}


def page(
    table: Table, paginator: Paginator, list_key: ListKey, *, offset: int, limit: int
) -> tuple[list[StoredDoc], int]:
    """A page of a shared list, oldest first: the entities' own items, and the list's count."""
    listed = paginator.page(list_key, offset=offset, limit=limit)
    wanted = [(item.item[PK], MAIN_SK) for item in listed]
    found = table.batch_get_docs(wanted)
    return [found[k] for k in wanted if k in found], paginator.count(list_key)


def add_listing(
    table: Table,
    entity_key: str,
    list_key: ListKey,
    sort: str,
    *,
    sk: str = LISTED_ALL,
    **attributes: Any,
) -> bool:
    """List an entity stored before a list existed (a listing item ``sk`` beside it, with
    ``attributes``); False if it is listed already or no longer exists."""
    item = table.item(
        entity_key,
        sk,
        None,
        **{list_key.index.partition_key: list_key.value, list_key.index.sort_key: sort},
        **attributes,
    )
    # Only while the entity's item exists: a listing of a deleted entity would be counted.
    exists = {
        "Key": {PK: entity_key, "SK": MAIN_SK},
        "UpdateExpression": "SET #listed = :yes",
        "ConditionExpression": "attribute_exists(#pk)",
        "ExpressionAttributeNames": {"#listed": "backfilled", "#pk": PK},
        "ExpressionAttributeValues": {":yes": True},
    }
    try:
        table.transact_put([], unique=[item], updates=[count_update(list_key, 1), exists])
    except ConditionFailed:
        return False
    return True
