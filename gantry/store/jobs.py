"""Jobs, with monotonic state changes and the indexes the API and the sweeper use."""

from __future__ import annotations

import itertools
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gantry import quotas, timeutil
from gantry.credits import Charge
from gantry.errors import Conflict, GantryError, NotFound, TooManyRequests
from gantry.job_states import JobStatus, can_transition
from gantry.jobs import Job
from gantry.quotas import RETRY_AFTER_SECONDS, Limit
from gantry.store import keys
from gantry.store.pagination import ListKey, Paginator, count_update
from gantry.store.table import MAIN_SK, Change, ConditionFailed, StoredDoc, Table

INPUT = "IN"
OUTPUT = "OUT"
# Jobs whose stored item this process remembers (see JobStore._seen): the ones in flight.
REMEMBERED_JOBS = 1024


def _attributes(job: Job) -> dict[str, Any]:
    """Top-level attributes: what conditions and indexes need. None removes the attribute."""
    active = not job.status.is_terminal
    return {
        "status": int(job.status),
        "rank": job.status.rank,
        "attempt": job.attempt,
        "creator": job.creator,
        "GSI1PK": keys.jobs_of(job.creator).value,
        "GSI1SK": f"{job.created}#{job.pk}",
        "GSI2PK": keys.jobs_of_algorithm(job.creator, job.algorithm).value,
        "GSI2SK": f"{job.created}#{job.pk}",
        # Sparse: only unfinished jobs are in the status index the sweeper reads.
        "GSI3PK": keys.ACTIVE_JOBS if active else None,
        "GSI3SK": f"{job.modified}#{job.pk}" if active else None,
        "GSI4PK": keys.compute_job(job.compute_job_id) if job.compute_job_id else None,
        "GSI4SK": job.pk if job.compute_job_id else None,
    }


class JobStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)
        # Each job's item as this store last read or wrote it. A change starts from it
        # instead of reading the job again (a job moves through several states per
        # invocation); the write's version check catches a job changed elsewhere since, and
        # only then is it read. Never used to answer a read.
        self._seen: OrderedDict[str, StoredDoc] = OrderedDict()
        self._seen_lock = threading.Lock()

    def _remember(self, pk: str, stored: StoredDoc) -> None:
        with self._seen_lock:
            self._seen[pk] = stored
            self._seen.move_to_end(pk)
            while len(self._seen) > REMEMBERED_JOBS:
                self._seen.popitem(last=False)

    def _last_seen(self, pk: str) -> StoredDoc | None:
        with self._seen_lock:
            return self._seen.get(pk)

    def create(
        self,
        job: Job,
        *,
        input_images: list[str],
        limits: Sequence[Limit] = (),
        enforce: bool = False,
        charge: Charge | None = None,
    ) -> Job:
        """Store a new job; Conflict (nothing written) if a job with its pk exists. Returns the
        stored job (with what it spent).

        The job takes a slot of each of ``limits`` in the same transaction (it gives them
        back when it ends, see ``update``); with ``enforce``, TooManyRequests naming the limit
        (nothing written) when one is full. It spends ``charge`` (credits) in the same
        transaction, or takes one of the charge's free editor jobs while any is left; with
        ``enforce``, ValidationFailed naming the credits left and the cost (nothing written)
        when too few are left."""
        if charge is not None and charge.complimentary_image and charge.complimentary_jobs:
            free = job.model_copy(update={"is_complimentary": True, "credits_consumed": 0})
            try:
                return self._create(free, input_images, limits, enforce, charge, free=True)
            except _NoFreeJobLeft:
                pass  # all taken (perhaps concurrently): the job costs credits
        spent = charge.cost if charge is not None else 0
        job = job.model_copy(update={"is_complimentary": False, "credits_consumed": spent})
        return self._create(job, input_images, limits, enforce, charge, free=False)

    def _create(
        self,
        job: Job,
        input_images: list[str],
        limits: Sequence[Limit],
        enforce: bool,
        charge: Charge | None,
        *,
        free: bool,
    ) -> Job:
        attributes = {k: v for k, v in _attributes(job).items() if v is not None}
        if limits:
            attributes["slot"] = True
        item = self.table.item(keys.job(job.pk), MAIN_SK, _doc(job), **attributes)
        puts = [self._relation(job, image_pk, INPUT) for image_pk in dict.fromkeys(input_images)]
        puts += [self._listing(job, name, key) for name, key in self.shared_lists(job)]
        updates = [
            count_update(keys.jobs_of(job.creator), 1),
            count_update(keys.jobs_of_algorithm(job.creator, job.algorithm), 1),
            *(count_update(key, 1) for _, key in self.shared_lists(job)),
        ]
        first_limit = len(puts) + 1 + len(updates)
        updates += [_take_slot(limit, enforce=enforce) for limit in limits]
        credits_at = len(puts) + 1 + len(updates)
        if charge is not None and free:
            updates.append(_take_free_job(charge))
        elif charge is not None and charge.cost:
            if enforce and charge.cost > charge.monthly:
                raise charge.refusal(self.credits_spent(charge.user, charge.month))
            updates.append(_spend(charge, enforce=enforce))
        try:
            self.table.transact_put(puts, unique=[item], updates=updates)
        except ConditionFailed as error:
            if charge is not None and credits_at in error.failed:
                if free:
                    raise _NoFreeJobLeft from error
                raise charge.refusal(self.credits_spent(charge.user, charge.month)) from error
            full = [limits[i - first_limit] for i in error.failed if first_limit <= i < credits_at]
            if full:
                raise TooManyRequests(
                    full[0].refusal(), retry_after=RETRY_AFTER_SECONDS, limit=full[0].description
                ) from error
            raise Conflict(f"Job {job.pk} already exists") from error
        self._remember(job.pk, StoredDoc(doc=_doc(job), version=int(item["version"]), item=item))
        return job

    def create_many(
        self, new: Sequence[NewJob], *, limits: Sequence[Limit], charge: Charge | None
    ) -> tuple[list[Job], GantryError | None]:
        """Store new jobs of one creator and algorithm, in order, many per transaction, as
        many as the limits and credits allow; each takes its slots and credits (or a free
        editor job) as ``create`` with ``enforce`` does, the counters moved once per
        transaction by the number of jobs in it. Returns the jobs stored and, when some were
        not, the refusal that stopped them (TooManyRequests: a limit is full; ValidationFailed:
        too few credits). A job whose pk exists is left out (stored before, with its extras).

        Each transaction's conditions are those of ``create`` for all its jobs at once, so
        concurrent creates cannot pass a limit or overspend; a lost race re-reads the counters.
        """
        if len({(n.job.creator, n.job.algorithm) for n in new}) > 1:
            raise ValueError("create_many takes jobs of one creator and algorithm")
        made: list[Job] = []
        pending = list(new)
        races = 0
        while pending:
            chunk = _chunk(pending, fixed=len(limits) + 6)
            room = self._room(limits, charge, len(chunk))
            if room.count == 0:
                return made, room.refusal
            chunk = chunk[: room.count]
            try:
                made += self._create_chunk(chunk, limits, charge, room.free)
            except _ChunkRefused as refused:
                existing = refused.existing
                if not existing:
                    races += 1
                    if races > 20:
                        raise Conflict("Job counters kept changing; try again") from refused
                    continue  # the counters moved since they were read
                # Stored before (a repeated message): leave those out, try the rest again.
                gone = {chunk[i].job.pk for i in existing}
                pending = [n for n in pending if n.job.pk not in gone]
                continue
            pending = pending[len(chunk) :]
        return made, None

    def _room(self, limits: Sequence[Limit], charge: Charge | None, wanted: int) -> _Room:
        """How many of ``wanted`` jobs the limits and credits let in now, how many of those
        are free editor jobs, and the refusal when none is."""
        wanted_keys = [_slot_key(limit.scope) for limit in limits]
        if charge is not None:
            wanted_keys.append(_credits_key(charge.user, charge.month))
            if charge.complimentary_image:
                wanted_keys.append(_free_jobs_key(charge.complimentary_image))
        found = {key: doc.item for key, doc in self.table.batch_get_docs(wanted_keys).items()}
        free = 0
        if charge is not None and charge.complimentary_image and charge.complimentary_jobs:
            taken = int(found.get(_free_jobs_key(charge.complimentary_image), {}).get("n", 0))
            free = max(0, charge.complimentary_jobs - taken)
        count = wanted
        if charge is not None and charge.cost:
            spent = int(found.get(_credits_key(charge.user, charge.month), {}).get("spent", 0))
            affordable = free + max(0, charge.monthly - spent) // charge.cost
            if affordable == 0:
                return _Room(0, 0, charge.refusal(spent))  # as ``create``: credits first
            count = min(count, affordable)
        for limit in limits:
            taken = max(0, int(found.get(_slot_key(limit.scope), {}).get("n", 0)))
            if limit.limit - taken <= 0:
                refusal = TooManyRequests(
                    limit.refusal(), retry_after=RETRY_AFTER_SECONDS, limit=limit.description
                )
                return _Room(0, 0, refusal)
            count = min(count, limit.limit - taken)
        return _Room(count, min(free, count), None)

    def _create_chunk(
        self, chunk: Sequence[NewJob], limits: Sequence[Limit], charge: Charge | None, free: int
    ) -> list[Job]:
        jobs: list[Job] = []
        for position, entry in enumerate(chunk):
            is_free = position < free
            spent = 0 if is_free or charge is None else charge.cost
            jobs.append(
                entry.job.model_copy(
                    update={"is_complimentary": is_free, "credits_consumed": spent}
                )
            )
        first = jobs[0]
        puts: list[dict[str, Any]] = []
        unique: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for job, entry in zip(jobs, chunk, strict=True):
            attributes = {k: v for k, v in _attributes(job).items() if v is not None}
            if limits:
                attributes["slot"] = True
            unique.append(self.table.item(keys.job(job.pk), MAIN_SK, _doc(job), **attributes))
            puts += [self._relation(job, pk, INPUT) for pk in dict.fromkeys(entry.input_images)]
            puts += [self._listing(job, name, key) for name, key in self.shared_lists(first)]
            puts += entry.puts
            updates += entry.updates
        n = len(jobs)
        updates += [
            count_update(keys.jobs_of(first.creator), n),
            count_update(keys.jobs_of_algorithm(first.creator, first.algorithm), n),
            *(count_update(key, n) for _, key in self.shared_lists(first)),
            *(_add_within(_slot_key(limit.scope), "n", n, limit.limit) for limit in limits),
        ]
        paid = n - free
        if charge is not None and free:
            assert charge.complimentary_image is not None
            key = _free_jobs_key(charge.complimentary_image)
            updates.append(_add_within(key, "n", free, charge.complimentary_jobs))
        if charge is not None and charge.cost and paid:
            key = _credits_key(charge.user, charge.month)
            updates.append(_add_within(key, "spent", paid * charge.cost, charge.monthly))
        try:
            self.table.transact_put(puts, unique=unique, updates=updates)
        except ConditionFailed as error:
            # Positions: the puts, then the jobs (unique), then the updates.
            existing = {i - len(puts) for i in error.failed} & set(range(len(jobs)))
            raise _ChunkRefused(existing) from error
        return jobs

    def take_missing_slot(self, pk: str) -> bool:
        """An unfinished job stored before the limits existed takes its slots now, in the
        write that marks it (so it frees them when it ends); True if it took them. An ended
        job, or one that holds its slots, takes none."""
        taken: list[bool] = []

        def mutate(stored: StoredDoc) -> tuple[dict, dict, list] | None:
            taken.clear()
            job = Job.model_validate(stored.doc)
            if stored.item.get("slot") or job.status.is_terminal:
                return None
            taken.append(True)
            scopes = quotas.scopes(job.creator, job.algorithm)
            return stored.doc, {"slot": True}, [_move_slot(s, 1) for s in scopes]

        stored = self.table.update_doc(keys.job(pk), mutate)
        if stored is not None:
            self._remember(pk, stored)
        return bool(taken)

    def complimentary_jobs_taken(self, algorithm_image_pk: str) -> int:
        """Free editor jobs of an algorithm image taken so far."""
        item = self.table.get_item(*_free_jobs_key(algorithm_image_pk))
        return int(item["n"]) if item else 0

    def active_count(self, scope: str) -> int:
        """Counted jobs of a limit's scope ("USER#alice", ...) that have not ended."""
        item = self.table.get_item(*_slot_key(scope))
        return max(0, int(item["n"])) if item else 0

    def credits_spent(self, username: str, month: str) -> int:
        """Credits ``username`` spent in ``month`` ("YYYY-MM")."""
        item = self.table.get_item(*_credits_key(username, month))
        return int(item["spent"]) if item else 0

    @staticmethod
    def shared_lists(job: Job) -> list[tuple[str, ListKey]]:
        """The lists beyond the creator's that hold the job: its algorithm's (for editors)
        and everyone's (for admins)."""
        return [("ALG", keys.jobs_of_algorithm_all(job.algorithm)), ("ALL", keys.ALL_JOBS)]

    def _listing(self, job: Job, name: str, list_key: ListKey) -> dict[str, Any]:
        return self.table.item(
            keys.job(job.pk),
            f"LISTED#{name}",
            None,
            **{
                list_key.index.partition_key: list_key.value,
                list_key.index.sort_key: f"{job.created}#{job.pk}",
            },
            job_pk=job.pk,
        )

    def page_shared(self, list_key: ListKey, *, offset: int, limit: int) -> tuple[list[Job], int]:
        """A page of an algorithm's or everyone's jobs, oldest first."""
        listed = self.paginator.page(list_key, offset=offset, limit=limit)
        wanted = [(keys.job(item.item["job_pk"]), MAIN_SK) for item in listed]
        found = self.table.batch_get_docs(wanted)
        jobs = [Job.model_validate(found[k].doc) for k in wanted if k in found]
        return jobs, self.paginator.count(list_key)

    def all_of(self, list_key: ListKey, *, shared: bool) -> list[Job]:
        """Every job of a list, oldest first (for filters the index cannot apply)."""
        jobs: list[Job] = []
        while True:
            if shared:
                page, _ = self.page_shared(list_key, offset=len(jobs), limit=1000)
            else:
                docs = self.paginator.page(list_key, offset=len(jobs), limit=1000)
                page = self._resolve(docs)
            jobs += page
            if len(page) < 1000:
                return jobs

    def _relation(self, job: Job, image_pk: str, role: str) -> dict[str, Any]:
        return self.table.item(
            keys.image(image_pk),
            f"JOB#{role}#{job.created}#{job.pk}",
            None,
            job_pk=job.pk,
            creator=job.creator,
            algorithm=job.algorithm,
        )

    def add_input_images(self, job: Job, image_pks: list[str]) -> None:
        """Relate images imported from uploads after creation; puts, so repeats are harmless."""
        for image_pk in dict.fromkeys(image_pks):
            self.table.put(self._relation(job, image_pk, INPUT))

    def add_output_images(self, job: Job, image_pks: list[str]) -> None:
        for image_pk in image_pks:
            self.table.put(self._relation(job, image_pk, OUTPUT))

    def get(self, pk: str) -> Job:
        job = self.find(pk)
        if job is None:
            raise NotFound(f"Job {pk} not found")
        return job

    def find(self, pk: str) -> Job | None:
        stored = self.table.get(keys.job(pk))
        if stored is None:
            return None
        self._remember(pk, stored)
        return Job.model_validate(stored.doc)

    def find_by_compute_id(self, compute_id: str) -> Job | None:
        items, _ = self.table.query(
            index=keys.BY_COMPUTE.name,
            key_name=keys.BY_COMPUTE.partition_key,
            key_value=keys.compute_job(compute_id),
            limit=1,
        )
        return self.find(items[0]["GSI4SK"]) if items else None

    # --- changes ---------------------------------------------------------------------------

    def update(self, pk: str, change: Callable[[Job], Job | None]) -> Job | None:
        """Apply ``change`` with optimistic concurrency. Returns the job if changed, else None."""
        changed: list[Job] = []

        def mutate(stored: StoredDoc) -> Change | None:
            # A lost compare-and-set re-runs this on the fresh item: forget what the failed
            # try would have written, or a caller is told its ignored change was applied.
            changed.clear()
            current = Job.model_validate(stored.doc)
            updated = change(current)
            if updated is None:
                return None
            updated = updated.model_copy(update={"modified": timeutil.iso()})
            changed[:] = [updated]
            if updated.status.is_terminal and stored.item.get("slot"):
                # Ending is a conditional write that succeeds once: the slot is freed once.
                scopes = quotas.scopes(updated.creator, updated.algorithm)
                attributes = {**_attributes(updated), "slot": None}
                return _doc(updated), attributes, [_move_slot(s, -1) for s in scopes]
            return _doc(updated), _attributes(updated)

        stored = self.table.update_doc(keys.job(pk), mutate, guess=self._last_seen(pk))
        if stored is None:
            raise NotFound(f"Job {pk} not found")
        self._remember(pk, stored)
        return changed[0] if changed else None

    def transition(
        self,
        pk: str,
        *,
        attempt: int,
        status: JobStatus,
        changes: Callable[[Job], dict[str, Any]] | dict[str, Any] | None = None,
    ) -> Job | None:
        """Move to ``status`` if allowed for ``attempt`` (duplicates and stale events are
        ignored: None). ``changes`` are applied in the same write."""

        def change(job: Job) -> Job | None:
            if not can_transition(job.status, job.attempt, status, attempt):
                return None
            extra = changes(job) if callable(changes) else (changes or {})
            update: dict[str, Any] = {"status": status, **extra}
            if status.is_terminal and not job.completed_at:
                update["completed_at"] = timeutil.iso()
            return job.model_copy(update=update)

        return self.update(pk, change)

    def requeue(
        self, pk: str, *, attempt: int, changes: dict[str, Any] | None = None
    ) -> Job | None:
        """Start attempt + 1 from ``Re-Queued``: only from the attempt the caller saw."""

        def change(job: Job) -> Job | None:
            # A job ended meanwhile (cancelled, or finished by a duplicate event) stays ended.
            if job.attempt != attempt or job.status.is_terminal:
                return None
            return job.model_copy(
                update={
                    "status": JobStatus.RETRY,
                    "attempt": job.attempt + 1,
                    "compute_job_id": None,
                    "completed_at": None,
                    **(changes or {}),
                }
            )

        return self.update(pk, change)

    def cancel(self, pk: str, *, message: str) -> tuple[Job, bool]:
        """End an unfinished job as Cancelled, whatever its attempt. Returns the stored job and
        whether this call cancelled it; a job that ended first (a racing completion, an
        earlier cancel) is returned unchanged."""

        def change(job: Job) -> Job | None:
            if job.status.is_terminal:
                return None
            update: dict[str, Any] = {"status": JobStatus.CANCELLED, "error_message": message}
            if not job.completed_at:
                update["completed_at"] = timeutil.iso()
            return job.model_copy(update=update)

        cancelled = self.update(pk, change)
        return (cancelled, True) if cancelled is not None else (self.get(pk), False)

    # --- lists -------------------------------------------------------------------------------

    def page_for(
        self, username: str, *, offset: int, limit: int, algorithm: str | None = None
    ) -> tuple[list[Job], int]:
        list_key: ListKey = (
            keys.jobs_of_algorithm(username, algorithm) if algorithm else keys.jobs_of(username)
        )
        return self.page_list(list_key, offset=offset, limit=limit)

    def page_list(self, list_key: ListKey, *, offset: int, limit: int) -> tuple[list[Job], int]:
        """A page of one user's list: their jobs, and the jobs shared with them as a viewer."""
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return self._resolve(docs), self.paginator.count(list_key)

    def _resolve(self, docs: Sequence[StoredDoc]) -> list[Job]:
        """The jobs of a user's list, in its order: a job item is the job itself, a viewer's
        item names the job it shares."""
        wanted = [(keys.job(d.item["job_pk"]), MAIN_SK) for d in docs if not d.doc]
        found = self.table.batch_get_docs(wanted) if wanted else {}
        jobs = []
        for d in docs:
            if d.doc:
                jobs.append(Job.model_validate(d.doc))
            elif (key := (keys.job(d.item["job_pk"]), MAIN_SK)) in found:
                jobs.append(Job.model_validate(found[key].doc))
        return jobs

    def share(self, pk: str, update: dict[str, Any]) -> Job:
        """Apply a change of ``viewers`` or ``share_with_editors``. Each viewer's job list
        holds the job (an item ``VIEWER#<name>``), changed in the same transaction."""
        changed: list[Job] = []
        moved: list[ListKey] = []

        def mutate(stored: StoredDoc) -> Change | None:
            current = Job.model_validate(stored.doc)
            new = current.model_copy(update={**update, "modified": timeutil.iso()})
            changed[:] = [new]
            before, after = set(current.viewers), set(new.viewers)
            moved[:] = [k for name in before ^ after for k in self._viewer_lists(new, name)]
            actions: list[dict[str, Any]] = []
            for name in sorted(after - before):
                actions.append({"Put": self._viewer_item(new, name)})
                actions += [count_update(k, 1) for k in self._viewer_lists(new, name)]
            for name in sorted(before - after):
                actions.append({"Delete": {"PK": keys.job(pk), "SK": f"VIEWER#{name}"}})
                actions += [count_update(k, -1) for k in self._viewer_lists(new, name)]
            return _doc(new), _attributes(new), actions

        stored = self.table.update_doc(keys.job(pk), mutate)
        if stored is None:
            raise NotFound(f"Job {pk} not found")
        self._remember(pk, stored)
        for list_key in moved:  # the job sits by its creation time: later offsets move
            self.paginator.clear(list_key)
        return changed[0]

    @staticmethod
    def _viewer_lists(job: Job, name: str) -> list[ListKey]:
        """A viewer's lists that hold the job: all their jobs, and their jobs of its algorithm."""
        return [keys.jobs_of(name), keys.jobs_of_algorithm(name, job.algorithm)]

    def _viewer_item(self, job: Job, name: str) -> dict[str, Any]:
        indexes: dict[str, str] = {}
        for list_key in self._viewer_lists(job, name):
            indexes[list_key.index.partition_key] = list_key.value
            indexes[list_key.index.sort_key] = f"{job.created}#{job.pk}"
        return self.table.item(keys.job(job.pk), f"VIEWER#{name}", None, **indexes, job_pk=job.pk)

    def for_image(
        self, username: str, image_pk: str, role: str, *, algorithm: str | None = None
    ) -> list[Job]:
        """Jobs of ``username`` that used (IN) or produced (OUT) an image, oldest first."""
        relations = [
            item
            for item in self.table.query_all(
                index=None,
                key_name="PK",
                key_value=keys.image(image_pk),
                sort_key="SK",
                begins_with=f"JOB#{role}#",
            )
            if item.get("creator") == username
            and (not algorithm or item.get("algorithm") == algorithm)
        ]
        wanted = [(keys.job(item["job_pk"]), MAIN_SK) for item in relations]
        found = self.table.batch_get_docs(wanted)
        return [Job.model_validate(found[k].doc) for k in wanted if k in found]

    def of_image(self, image_pk: str) -> list[Job]:
        """Every job that used or produced an image, whoever created it."""
        relations = self.table.query_all(
            index=None,
            key_name="PK",
            key_value=keys.image(image_pk),
            sort_key="SK",
            begins_with="JOB#",
        )
        wanted = list(dict.fromkeys((keys.job(item["job_pk"]), MAIN_SK) for item in relations))
        found = self.table.batch_get_docs(wanted)
        return [Job.model_validate(found[k].doc) for k in wanted if k in found]

    def active_modified_before(self, cutoff_iso: str, *, limit: int = 100) -> list[Job]:
        """Unfinished jobs untouched since ``cutoff_iso`` (oldest first), at most ``limit``."""
        return list(itertools.islice(self.iter_active_modified_before(cutoff_iso), limit))

    def iter_active_modified_before(
        self, cutoff_iso: str, *, page_size: int = 100
    ) -> Iterator[Job]:
        """Every unfinished job untouched since ``cutoff_iso``, oldest first, page by page.

        Read from the sparse index's own copy (it projects the whole item): no extra read
        per job. The copy may lag a write by a moment; callers act through conditional
        transitions, which re-check the stored job."""
        from boto3.dynamodb.conditions import Key

        kwargs: dict[str, Any] = {
            "IndexName": keys.BY_STATUS.name,
            "KeyConditionExpression": Key(keys.BY_STATUS.partition_key).eq(keys.ACTIVE_JOBS)
            & Key(keys.BY_STATUS.sort_key).lt(cutoff_iso),
            "Limit": page_size,
        }
        while True:
            response = self.table._table.query(**kwargs)
            for item in response.get("Items", []):
                if item.get("doc"):
                    yield Job.model_validate(json.loads(item["doc"]))
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def _slot_key(scope: str) -> tuple[str, str]:
    return f"ACTIVE#{scope}", "N"


def _take_slot(limit: Limit, *, enforce: bool) -> dict[str, Any]:
    pk, sk = _slot_key(limit.scope)
    update: dict[str, Any] = {
        "Key": {"PK": pk, "SK": sk},
        "UpdateExpression": "ADD #n :one",
        "ExpressionAttributeNames": {"#n": "n"},
        "ExpressionAttributeValues": {":one": 1},
    }
    if enforce:
        update["ConditionExpression"] = "attribute_not_exists(#n) OR #n < :limit"
        update["ExpressionAttributeValues"] = {":one": 1, ":limit": limit.limit}
    return update


def _credits_key(username: str, month: str) -> tuple[str, str]:
    return f"CREDITS#USER#{username}", month


def _spend(charge: Charge, *, enforce: bool) -> dict[str, Any]:
    pk, sk = _credits_key(charge.user, charge.month)
    update: dict[str, Any] = {
        "Key": {"PK": pk, "SK": sk},
        "UpdateExpression": "ADD #s :cost",
        "ExpressionAttributeNames": {"#s": "spent"},
        "ExpressionAttributeValues": {":cost": charge.cost},
    }
    if enforce:
        # Enough left after this job: spent + cost <= monthly.
        update["ConditionExpression"] = "attribute_not_exists(#s) OR #s <= :room"
        update["ExpressionAttributeValues"][":room"] = charge.monthly - charge.cost
    return update


@dataclass(frozen=True)
class NewJob:
    """A job for ``JobStore.create_many``, with what its transaction also writes."""

    job: Job
    input_images: list[str] = field(default_factory=list)
    puts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)

    def keys(self) -> list[tuple[str, str]]:
        items = [(u["Key"]["PK"], u["Key"]["SK"]) for u in self.updates]
        return items + [(p["PK"], p["SK"]) for p in self.puts]


class _ChunkRefused(Exception):
    """A transaction of ``create_many`` failed a condition: ``existing``, the positions of its
    jobs that are stored already; none: a counter moved since it was read."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__(f"jobs at {sorted(existing)} exist" if existing else "counters moved")
        self.existing = existing


@dataclass(frozen=True)
class _Room:
    count: int
    free: int
    refusal: GantryError | None


# DynamoDB takes at most 100 actions in a transaction, each on a different item.
MAX_ACTIONS = 100


def _chunk(pending: Sequence[NewJob], *, fixed: int) -> list[NewJob]:
    """The first jobs of ``pending`` that fit one transaction beside ``fixed`` counter
    updates, no item written twice."""
    chunk: list[NewJob] = []
    seen: set[tuple[str, str]] = set()
    actions = fixed
    for entry in pending:
        # The job, its two listings, its input relations and its extras.
        size = 3 + len(set(entry.input_images)) + len(entry.puts) + len(entry.updates)
        entry_keys = set(entry.keys())
        if chunk and (actions + size > MAX_ACTIONS or entry_keys & seen):
            break
        chunk.append(entry)
        seen |= entry_keys
        actions += size
    return chunk


def _add_within(key: tuple[str, str], attribute: str, amount: int, cap: int) -> dict[str, Any]:
    """Add ``amount`` to a counter only while it stays at most ``cap``."""
    return {
        "Key": {"PK": key[0], "SK": key[1]},
        "UpdateExpression": "ADD #n :amount",
        "ConditionExpression": "attribute_not_exists(#n) OR #n <= :room",
        "ExpressionAttributeNames": {"#n": attribute},
        "ExpressionAttributeValues": {":amount": amount, ":room": cap - amount},
    }


class _NoFreeJobLeft(Exception):
    """The algorithm image's free editor jobs are all taken."""


def _free_jobs_key(algorithm_image_pk: str) -> tuple[str, str]:
    return f"COMPLIMENTARY#ALGIMG#{algorithm_image_pk}", "N"


def _take_free_job(charge: Charge) -> dict[str, Any]:
    assert charge.complimentary_image is not None
    pk, sk = _free_jobs_key(charge.complimentary_image)
    return {
        "Key": {"PK": pk, "SK": sk},
        "UpdateExpression": "ADD #n :one",
        "ConditionExpression": "attribute_not_exists(#n) OR #n < :cap",
        "ExpressionAttributeNames": {"#n": "n"},
        "ExpressionAttributeValues": {":one": 1, ":cap": charge.complimentary_jobs},
    }


def _move_slot(scope: str, delta: int) -> dict[str, Any]:
    pk, sk = _slot_key(scope)
    return {
        "Key": {"PK": pk, "SK": sk},
        "UpdateExpression": "ADD #n :delta",
        "ExpressionAttributeNames": {"#n": "n"},
        "ExpressionAttributeValues": {":delta": delta},
    }


def _doc(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")
