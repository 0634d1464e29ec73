"""Move a snapshot written by older versions into the durable store, once.

Older versions saved every table item (``table.jsonl``) and every object (``objects.json``, a
manifest, and ``objects/<sha256 of the key>``) to ``<state>/state/`` every 10 s. On the first
start with such a directory and an empty store, its content is copied into the store (object
files by hard link where the file system allows) and the directory is renamed
``state.migrated``, so the next start does not copy it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from gantry import resources
from gantry.local.durable import DurableStore, Segment, StoredObject, item_key
from gantry.settings import Settings
from gantry.timeutil import iso

logger = logging.getLogger(__name__)
TABLE_FILE = "table.jsonl"
MANIFEST_FILE = "objects.json"
OBJECTS_DIR = "objects"
MIGRATED_SUFFIX = ".migrated"


def migrate(directory: Path, store: DurableStore, settings: Settings) -> bool:
    """Copy an old snapshot into an empty ``store``; whether there was one to copy."""
    table_file = directory / TABLE_FILE
    if not table_file.exists():
        return False
    if store.item_count() == 0:
        items = [json.loads(line) for line in table_file.read_text().splitlines() if line.strip()]
        manifest_file = directory / MANIFEST_FILE
        manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
        now = iso()
        for key, entry in manifest.items():
            blob = directory / OBJECTS_DIR / hashlib.sha256(key.encode()).hexdigest()
            if not blob.exists():
                logger.warning("the snapshot lacks the data of %s", key)
                continue
            try:
                path = store.link_file(blob)
            except OSError:
                path, _ = store.write_file(_read(blob))
            meta = {"metadata": {"content-type": entry.get("content_type")}}
            meta["metadata"].update(
                {f"x-amz-meta-{k}": v for k, v in (entry.get("metadata") or {}).items()}
            )
            size = path.stat().st_size
            store.put_object(
                StoredObject(
                    settings.bucket_name,
                    key,
                    (Segment(path, size),),
                    entry["etag"],
                    size,
                    now,
                    meta,
                )
            )
        store.write_items((settings.table_name, _item_key(item), item) for item in items)
        logger.info("moved %s items and %s objects from %s", len(items), len(manifest), directory)
    directory.rename(directory.with_name(directory.name + MIGRATED_SUFFIX))
    return True


def _item_key(item: dict[str, object]) -> str:
    return item_key(item[resources.PARTITION_KEY], item.get(resources.SORT_KEY))


def _read(path: Path) -> list[bytes]:
    return [path.read_bytes()]
