"""Archive runs: the run, one record per item it handled, the runs waiting for a job slot,
and the index of jobs by their inputs that lets a run skip items already done.

Items: ``RUN#<run>``/``A`` (the run), ``RUN#<run>``/``ITEM#<item>`` (what became of the item:
its job, or why it has none), ``ARCHIVERUNS#ACTIVE``/``<run>`` (present while the run still
makes jobs or waits for a free slot), ``ARCHIVERUNS#WRITEBACK``/``<run>`` (a run writing outputs
back, until its jobs all ended), ``INPUTS#<fingerprint>``/``JOBS`` (the jobs of
that algorithm image, creator and inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from gantry import resources
from gantry.archives import ArchiveRun
from gantry.errors import NotFound
from gantry.job_states import JobStatus
from gantry.store import keys
from gantry.store.pagination import ListKey, Paginator, count_update
from gantry.store.table import MAIN_SK, StoredDoc, Table

PK = resources.PARTITION_KEY
SK = resources.SORT_KEY
ACTIVE = "ARCHIVERUNS#ACTIVE"
WRITING_BACK = "ARCHIVERUNS#WRITEBACK"
# What became of an item without a job of its own.
SKIPPED = "skipped"  # an earlier job of the same image and inputs succeeded: it is the result
NOT_RUN = "not run"  # the item cannot be run (no matching inputs, a value the job refused)
IMPORTING = "importing"  # a value the job needs was still being imported when the run came
INPUTS_SK = "JOBS"


def _run_key(pk: str) -> str:
    return f"RUN#{pk}"


def runs_of(username: str, algorithm_pk: str) -> ListKey:
    return ListKey(keys.BY_PARENT, f"ARCHIVERUNS#{username}#ALG#{algorithm_pk}")


class ArchiveRunStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)

    def create(self, run: ArchiveRun) -> ArchiveRun:
        list_key = runs_of(run.creator, run.algorithm)
        item = self.table.item(
            _run_key(run.pk),
            MAIN_SK,
            run.model_dump(mode="json"),
            GSI2PK=list_key.value,
            GSI2SK=f"{run.created}#{run.pk}",
        )
        self.table.transact_put([], unique=[item], updates=[count_update(list_key, 1)])
        return run

    def get(self, pk: str) -> ArchiveRun:
        stored = self.table.get(_run_key(pk))
        if stored is None:
            raise NotFound(f"Archive run {pk} not found")
        return ArchiveRun.model_validate(stored.doc)

    def update(self, pk: str, change: Callable[[ArchiveRun], ArchiveRun | None]) -> ArchiveRun:
        """Apply ``change`` (None: leave it) with optimistic concurrency."""
        result: list[ArchiveRun] = []

        def mutate(stored: StoredDoc) -> tuple[dict, dict] | None:
            current = ArchiveRun.model_validate(stored.doc)
            new = change(current)
            result[:] = [new or current]
            return None if new is None else (new.model_dump(mode="json"), {})

        if self.table.update_doc(_run_key(pk), mutate) is None:
            raise NotFound(f"Archive run {pk} not found")
        return result[0]

    def page_for(
        self, username: str, algorithm_pk: str, *, offset: int, limit: int
    ) -> tuple[list[ArchiveRun], int]:
        list_key = runs_of(username, algorithm_pk)
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return [ArchiveRun.model_validate(d.doc) for d in docs], self.paginator.count(list_key)

    # --- per item ----------------------------------------------------------------------------

    def outcomes(self, run_pk: str, item_pks: list[str]) -> dict[str, dict[str, Any]]:
        """The records of those items the run already handled, by item pk."""
        found = self.table.batch_get_docs([(_run_key(run_pk), f"ITEM#{pk}") for pk in item_pks])
        return {sk.removeprefix("ITEM#"): doc.item for (_, sk), doc in found.items()}

    def record(
        self, run_pk: str, item_pk: str, *, job: str | None, outcome: str = "", reason: str = ""
    ) -> None:
        """What became of the item; a put, so a repeat writes the same."""
        self.table.put(self.record_item(run_pk, item_pk, job=job, outcome=outcome, reason=reason))

    def record_item(
        self, run_pk: str, item_pk: str, *, job: str | None, outcome: str = "", reason: str = ""
    ) -> dict[str, Any]:
        """The record of what became of the item, to put (in the job's own transaction)."""
        return self.table.item(
            _run_key(run_pk),
            f"ITEM#{item_pk}",
            None,
            item=item_pk,
            job=job,
            outcome=outcome or None,
            reason=reason or None,
        )

    def record_many(self, records: list[dict[str, Any]]) -> None:
        """Put records made by ``record_item`` (25 a request)."""
        with self.table._table.batch_writer(overwrite_by_pkeys=[PK, SK]) as batch:
            for record in records:
                batch.put_item(Item=record)

    def record_end(self, run_pk: str, item_pk: str, status: str) -> None:
        """The item's job ended with ``status`` (a label); a repeat writes the same."""
        # Without its record (written just after the job is made) progress reads the job.
        with contextlib.suppress(
            self.table.clients.dynamodb.exceptions.ConditionalCheckFailedException
        ):
            self.table._table.update_item(
                Key={PK: _run_key(run_pk), SK: f"ITEM#{item_pk}"},
                UpdateExpression="SET ended = :s",
                ConditionExpression="attribute_exists(#pk)",
                ExpressionAttributeNames={"#pk": PK},
                ExpressionAttributeValues={":s": status},
            )

    def records(self, run_pk: str) -> Iterator[dict[str, Any]]:
        return self.table.query_all(
            index=None, key_name=PK, key_value=_run_key(run_pk), sort_key=SK, begins_with="ITEM#"
        )

    def records_page(
        self, run_pk: str, cursor: dict[str, Any] | None, limit: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Up to ``limit`` records after ``cursor`` (None: from the first); the next cursor."""
        return self.table.query(
            index=None,
            key_name=PK,
            key_value=_run_key(run_pk),
            sort_key=SK,
            begins_with="ITEM#",
            limit=limit,
            start_key=cursor,
        )

    # --- runs still making jobs ---------------------------------------------------------------

    def mark_active(self, run_pk: str) -> None:
        self.table.put(self.table.item(ACTIVE, run_pk, None))

    def unmark_active(self, run_pk: str) -> None:
        self.table.delete(ACTIVE, run_pk)

    def active(self) -> list[str]:
        """Runs that still make jobs or wait for a slot (few at a time)."""
        items = self.table.query_all(index=None, key_name=PK, key_value=ACTIVE)
        return [str(item[SK]) for item in items]

    # --- runs writing outputs back, until all their jobs ended ---------------------------------

    def mark_writing_back(self, run_pk: str) -> None:
        self.table.put(self.table.item(WRITING_BACK, run_pk, None))

    def unmark_writing_back(self, run_pk: str) -> None:
        self.table.delete(WRITING_BACK, run_pk)

    def writing_back(self) -> list[str]:
        """Runs with ``write_back`` some of whose jobs may not have been written back yet."""
        items = self.table.query_all(index=None, key_name=PK, key_value=WRITING_BACK)
        return [str(item[SK]) for item in items]

    # --- jobs by their inputs ----------------------------------------------------------------

    # One item per fingerprint holding the set of its jobs, so a page of items is looked up
    # in one read.

    @staticmethod
    def remember_inputs(fingerprint: str, job_pk: str) -> dict[str, Any]:
        """The update (for the job's own transaction) that adds the job to its inputs' set."""
        return {
            "Key": {PK: f"INPUTS#{fingerprint}", SK: INPUTS_SK},
            "UpdateExpression": "ADD #jobs :job",
            "ExpressionAttributeNames": {"#jobs": "jobs"},
            "ExpressionAttributeValues": {":job": {job_pk}},
        }

    def jobs_with_inputs(self, fingerprints: list[str]) -> dict[str, list[str]]:
        """The jobs made with each fingerprint's inputs (absent: none)."""
        found = self.table.batch_get_docs([(f"INPUTS#{fp}", INPUTS_SK) for fp in fingerprints])
        return {
            str(pk).removeprefix("INPUTS#"): sorted(str(job) for job in doc.item.get("jobs", ()))
            for (pk, _), doc in found.items()
        }

    def job_statuses(self, job_pks: list[str]) -> dict[str, JobStatus]:
        """The status of each job, reading only that attribute (runs count thousands)."""
        resource = self.table.clients.dynamodb_resource
        statuses: dict[str, JobStatus] = {}
        unique = list(dict.fromkeys(job_pks))
        for start in range(0, len(unique), 100):
            chunk = [{PK: keys.job(pk), SK: MAIN_SK} for pk in unique[start : start + 100]]
            request: dict[str, Any] = {
                self.table.name: {
                    "Keys": chunk,
                    "ConsistentRead": True,
                    "ProjectionExpression": "#pk, #st",
                    "ExpressionAttributeNames": {"#pk": PK, "#st": "status"},
                }
            }
            while request:
                response = resource.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table.name, []):
                    statuses[str(item[PK]).removeprefix("JOB#")] = JobStatus(int(item["status"]))
                request = response.get("UnprocessedKeys") or {}
        return statuses
