"""Limit/offset pages over a DynamoDB index that cost O(page), not O(offset).

The grand-challenge API (and gcapi's ``iterate_all``) pages by ``offset``. DynamoDB can only
resume from a key, so each served page leaves a checkpoint item "offset N starts after key K"
(with a TTL). The next page starts from it directly; a random offset walks keys-only from the
nearest checkpoint below it. Lists are ordered oldest first, so new items append at the end
and checkpoints stay valid; a deletion clears its list's checkpoints. ``count`` comes from a
counter item updated in the same transaction as each insert.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from gantry import resources
from gantry.store.table import SK, StoredDoc, Table, _stored

CHECKPOINT_TTL_SECONDS = 24 * 3600
MAX_LIMIT = 1000
WALK_CHUNK = 1000


@dataclass(frozen=True)
class ListKey:
    """One list: the items whose ``attribute`` on ``index`` equals ``value``."""

    index: resources.GlobalIndex
    value: str

    @property
    def name(self) -> str:
        return f"{self.index.name}#{self.value}"


def count_key(list_key: ListKey) -> dict[str, str]:
    return {resources.PARTITION_KEY: f"COUNT#{list_key.name}", SK: "N"}


def count_update(list_key: ListKey, delta: int) -> dict[str, Any]:
    """A transaction update that moves the list's count by ``delta``."""
    return {
        "Key": count_key(list_key),
        "UpdateExpression": "ADD #n :d",
        "ExpressionAttributeNames": {"#n": "n"},
        "ExpressionAttributeValues": {":d": delta},
    }


class Paginator:
    def __init__(self, table: Table) -> None:
        self.table = table

    def count(self, list_key: ListKey) -> int:
        item = self.table.get_item(count_key(list_key)[resources.PARTITION_KEY], "N")
        return int(item["n"]) if item else 0

    def page(self, list_key: ListKey, *, offset: int, limit: int) -> list[StoredDoc]:
        limit = max(1, min(limit, MAX_LIMIT))
        start_key = self._seek(list_key, offset) if offset > 0 else None
        if offset > 0 and start_key is None:
            return []
        items: list[dict[str, Any]] = []
        last = start_key
        # One Query reads at most 1 MB: a page of large items takes several.
        while True:
            more, last = self.table.query(
                index=list_key.index.name,
                key_name=list_key.index.partition_key,
                key_value=list_key.value,
                limit=limit - len(items),
                start_key=last,
            )
            items += more
            if last is None or len(items) >= limit:
                break
        if last and len(items) == limit:
            self._checkpoint(list_key, offset + limit, last)
        return [_stored(item) for item in items]

    def clear(self, list_key: ListKey) -> None:
        for item in self.table.query_all(
            index=None,
            key_name=resources.PARTITION_KEY,
            key_value=self._checkpoint_pk(list_key),
            keys_only=True,
        ):
            self.table.delete(item[resources.PARTITION_KEY], item[SK])

    # --- checkpoints --------------------------------------------------------------------

    @staticmethod
    def _checkpoint_pk(list_key: ListKey) -> str:
        return f"CURSOR#{list_key.name}"

    def _checkpoint(self, list_key: ListKey, offset: int, key: dict[str, Any]) -> None:
        self.table.put(
            {
                resources.PARTITION_KEY: self._checkpoint_pk(list_key),
                SK: f"{offset:012d}",
                "key": json.dumps(key),
                resources.TTL_ATTRIBUTE: int(time.time()) + CHECKPOINT_TTL_SECONDS,
            }
        )

    def _nearest_checkpoint(self, list_key: ListKey, offset: int) -> tuple[int, dict | None]:
        items = self.table.query_at_most(
            self._checkpoint_pk(list_key), f"{offset:012d}", limit=1, forward=False
        )
        if not items:
            return 0, None
        return int(items[0][SK]), json.loads(items[0]["key"])

    def _seek(self, list_key: ListKey, offset: int) -> dict[str, Any] | None:
        position, start_key = self._nearest_checkpoint(list_key, offset)
        walked = position < offset
        while position < offset:
            step = min(offset - position, WALK_CHUNK)
            items, last = self.table.query(
                index=list_key.index.name,
                key_name=list_key.index.partition_key,
                key_value=list_key.value,
                sort_key=list_key.index.sort_key,
                limit=step,
                start_key=start_key,
                keys_only=True,
            )
            position += len(items)
            if last is None:
                return None  # the list ends at or before ``offset``
            start_key = last
        # Only a walk found something new; re-writing the checkpoint it started from would
        # cost a write on every sequential page.
        if walked and start_key is not None:
            self._checkpoint(list_key, offset, start_key)
        return start_key
