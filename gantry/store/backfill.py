"""Bring records written before a list or counter existed up to date.

Lists and counters are kept in the same transaction as the write they follow, from the
version that introduced them on; what was stored before lacks them:

- algorithms, jobs, images, uploads, upload sessions and tokens are missing from everyone's
  lists (admins'), and jobs from their algorithm's list (its editors' view);
- unfinished jobs hold no slot of the active-job limits (they would neither count nor free
  one; freeing is tied to the job's own ``slot`` attribute, so no counter goes negative);
- tokens have no public id (``TOKENREF#``): they work but cannot be listed or revoked by id;
- archive runs' index of jobs by inputs held one item per job (``INPUTS#<fp>``/``<job>``)
  before it held one set per fingerprint: those jobs are moved into the set, so a run skips
  their items again instead of running them twice.

``backfill`` scans the table once and adds what is missing. Every step is a conditional
write, so running it again, or while the platform runs, changes nothing twice. The local
stack runs it at every start; on AWS, ``gantry backfill`` runs it once after an upgrade.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from typing import Any

from gantry import timeutil
from gantry.algorithms import Algorithm
from gantry.images import Image
from gantry.jobs import Job
from gantry.store import keys, listings
from gantry.store.archive_runs import INPUTS_SK, ArchiveRunStore
from gantry.store.jobs import JobStore
from gantry.store.pagination import count_update
from gantry.store.table import MAIN_SK, PK, SK, ConditionFailed, StoredDoc, Table, _stored
from gantry.store.users import TokenInfo
from gantry.uploads import Upload

PREFIXES = ("ALG#", "JOB#", "IMG#", "UPLOAD#", "UPLOADSESSION#", "TOKEN#", "TOKENREF#")


def backfill(table: Table) -> dict[str, int]:
    """Add every missing listing, slot and token id; returns how many of each were added."""
    added: Counter[str] = Counter()
    for entity_key, sort_keys, main in _entities(table):
        prefix = entity_key.split("#", 1)[0] + "#"
        if prefix == "ALG#" and "LISTED" not in sort_keys:
            algorithm = Algorithm.model_validate(main.doc)
            added["algorithm listings"] += listings.add_listing(
                table,
                entity_key,
                keys.ALL_ALGORITHMS,
                f"{algorithm.created}#{algorithm.pk}",
                sk="LISTED",
                algorithm_pk=algorithm.pk,
            )
        elif prefix == "JOB#":
            added.update(_job(table, main, sort_keys))
        elif prefix == "IMG#" and listings.LISTED_ALL not in sort_keys:
            image = Image.model_validate(main.doc)
            sort = f"{image.created}#{image.pk}"
            added["image listings"] += listings.add_listing(
                table, entity_key, keys.ALL_IMAGES, sort
            )
        elif prefix == "UPLOAD#" and listings.LISTED_ALL not in sort_keys:
            upload = Upload.model_validate(main.doc)
            sort = f"{upload.created}#{upload.pk}"
            added["upload listings"] += listings.add_listing(
                table, entity_key, keys.ALL_UPLOADS, sort
            )
        elif prefix == "UPLOADSESSION#" and listings.LISTED_ALL not in sort_keys:
            doc = main.doc
            sort = f"{doc['created']}#{doc['pk']}"
            added["upload session listings"] += listings.add_listing(
                table, entity_key, keys.ALL_UPLOAD_SESSIONS, sort
            )
        elif prefix == "TOKENREF#" and listings.LISTED_ALL not in sort_keys:
            doc = main.doc
            sort = f"{doc['created']}#{doc['pk']}"
            added["token listings"] += listings.add_listing(
                table, entity_key, keys.ALL_TOKENS, sort
            )
        elif prefix == "TOKEN#" and not main.item.get("token_pk"):
            added["token ids"] += _token_reference(table, main.item)
    added["archive run input index entries"] += _old_input_index(table)
    return {what: n for what, n in added.items() if n}


def _old_input_index(table: Table) -> int:
    """Move each per-job entry of the old inputs index into its fingerprint's set."""
    from boto3.dynamodb.conditions import Attr

    moved = 0
    for item in table.scan_all(Attr(PK).begins_with("INPUTS#") & Attr(SK).ne(INPUTS_SK)):
        fingerprint = str(item[PK]).removeprefix("INPUTS#")
        # Adding to a set twice changes nothing, so a crash between the two writes is harmless.
        table.transact_put([], updates=[ArchiveRunStore.remember_inputs(fingerprint, item[SK])])
        table.delete(str(item[PK]), str(item[SK]))
        moved += 1
    return moved


def _entities(table: Table) -> list[tuple[str, set[str], StoredDoc]]:
    """Each entity of the kinds above: its key, the sort keys beside its item, its item."""
    from boto3.dynamodb.conditions import Attr

    wanted = Attr(PK).begins_with(PREFIXES[0])
    for prefix in PREFIXES[1:]:
        wanted = wanted | Attr(PK).begins_with(prefix)
    sort_keys: dict[str, set[str]] = defaultdict(set)
    main: dict[str, StoredDoc] = {}
    for item in table.scan_all(wanted):
        sort_keys[item[PK]].add(str(item[SK]))
        if item[SK] == MAIN_SK:
            main[item[PK]] = _stored(item)
    return [(key, sort_keys[key], main[key]) for key in main]


def _job(table: Table, main: StoredDoc, sort_keys: set[str]) -> Counter[str]:
    job = Job.model_validate(main.doc)
    added: Counter[str] = Counter()
    sort = f"{job.created}#{job.pk}"
    for name, list_key in JobStore.shared_lists(job):
        if f"LISTED#{name}" not in sort_keys:
            added["job listings"] += listings.add_listing(
                table, keys.job(job.pk), list_key, sort, sk=f"LISTED#{name}", job_pk=job.pk
            )
    if not job.status.is_terminal and not main.item.get("slot"):
        added["job slots"] += JobStore(table).take_missing_slot(job.pk)
    return added


def _token_reference(table: Table, secret: dict[str, Any]) -> bool:
    """A public id for a token made before tokens had one: listed, and revocable by it."""
    username = str(secret["username"])
    expires = secret.get("expires")
    info = TokenInfo(
        pk=str(uuid.uuid4()),
        user=username,
        created=str(secret.get("created") or timeutil.iso()),
        expires=str(expires) if expires else None,
    )
    sort = f"{info.created}#{info.pk}"
    own = keys.tokens_of(username)
    reference = table.item(
        keys.token_ref(info.pk),
        MAIN_SK,
        info.model_dump(),
        token_hash=str(secret[PK]).removeprefix("TOKEN#"),
        GSI1PK=own.value,
        GSI1SK=sort,
    )
    everyone = listings.listing(table, keys.token_ref(info.pk), keys.ALL_TOKENS, sort)
    # Only if the token still exists and has no id yet (a concurrent run gave it one).
    mark = {
        "Key": {PK: secret[PK], SK: MAIN_SK},
        "UpdateExpression": "SET #id = :id",
        "ConditionExpression": "attribute_exists(#pk) AND attribute_not_exists(#id)",
        "ExpressionAttributeNames": {"#id": "token_pk", "#pk": PK},
        "ExpressionAttributeValues": {":id": info.pk},
    }
    try:
        table.transact_put(
            [reference, everyone],
            updates=[count_update(own, 1), count_update(keys.ALL_TOKENS, 1), mark],
        )
    except ConditionFailed:
        return False
    return True
