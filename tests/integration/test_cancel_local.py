"""Cancelling jobs on the local stack, through the pipeline and the local backend's own events:
a job queued behind a busy backend never starts, and a cancel racing with the backend's report
of success leaves one final state, announced once, with its slot freed once. (Batch and
SageMaker: test_cancel.)"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gantry.algorithms import AlgorithmFields, AlgorithmImageFields, SocketSet
from gantry.compute.local import REASON_CANCELLED
from gantry.interfaces import InterfaceFields
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.local.stack import LocalStack
from gantry.pipeline.cancel import cancel_job
from gantry.quotas import scopes
from gantry.services.jobs import JobCreate, JobInput, create_job
from gantry.settings import Settings
from gantry.store.jobs import _slot_key
from gantry.urls import Urls
from tests.integration.pipeline_support import published, route_job_events

SLEEP = Path(__file__).resolve().parents[2] / "examples" / "algorithms" / "sleep"
URLS = Urls("https://api.gantry.test/api/v1/")
WAIT = 180.0  # generous: runners start slowly on a busy machine

pytestmark = pytest.mark.slow


class Stack:
    """The local stack with one compute worker, every compute event it delivered, and a queue
    that hears every job event on its bus."""

    def __init__(self) -> None:
        self.local = LocalStack.start(
            Settings(table_name="gantry-cancel", bucket_name="gantry-cancel", local_workers=1),
            dispatch=False,
            sweep_every=None,
        )
        self.ctx = self.local.ctx
        self.backend = self.ctx.compute_backend
        self.announcements = route_job_events(self.ctx)
        self.user = self.ctx.store.users.ensure_user("alice")
        self.events: list[dict[str, Any]] = []
        self.delivered = threading.Condition()
        # Called, if set, with each compute event before the pipeline handles it.
        self.before: Callable[[dict[str, Any]], None] | None = None
        deliver = self.backend.on_event

        def record(event: dict[str, Any]) -> None:
            if self.before is not None:
                self.before(event)
            try:
                deliver(event)
            finally:
                with self.delivered:
                    self.events.append(event["detail"])
                    self.delivered.notify_all()

        self.backend.on_event = record
        store = self.ctx.store
        store.sockets.create(
            InterfaceFields(title="seconds", kind="Float", relative_path="seconds.json"),
            creator="alice",
        )
        store.sockets.create(
            InterfaceFields(title="slept", kind="Float", relative_path="slept.json"),
            creator="alice",
        )
        self.algorithm = store.algorithms.create(
            AlgorithmFields(
                title="Sleeper", interfaces=[SocketSet(inputs=["seconds"], outputs=["slept"])]
            ),
            creator="alice",
        )
        store.algorithms.create_image(
            self.algorithm,
            AlgorithmImageFields(
                image="local", command=[sys.executable, "main.py"], workdir=str(SLEEP)
            ),
            creator="alice",
        )

    def run(self, seconds: float) -> Job:
        body = JobCreate(
            algorithm=self.algorithm.pk, inputs=[JobInput(interface="seconds", value=seconds)]
        )
        return create_job(self.ctx, self.user, body, URLS)

    def statuses(self, job: Job) -> list[str]:
        """The compute states the backend reported for the job's compute job."""
        compute_id = self.ctx.store.jobs.get(job.pk).compute_job_id
        with self.delivered:
            return [e["status"] for e in self.events if e["jobId"] == compute_id]

    def wait_for(self, job: Job, status: str) -> None:
        """Until the backend's ``status`` event for the job has been handled."""
        deadline = time.monotonic() + WAIT
        with self.delivered:
            while status not in self.statuses(job):
                remaining = deadline - time.monotonic()
                assert remaining > 0, (job.pk, status, self.statuses(job))
                self.delivered.wait(remaining)

    def announced(self) -> list[tuple[str, str]]:
        """(job, status) of every end announced on the bus since the last call."""
        return [(d["job"], d["status"]) for _, d in published(self.ctx, self.announcements)]

    def counters(self) -> list[int]:
        """The stored active-job counts of alice, her algorithm and the platform."""
        counts = []
        for scope in scopes("alice", self.algorithm.pk):
            item = self.ctx.store.jobs.table.get_item(*_slot_key(scope))
            counts.append(int(item["n"]) if item else 0)
        return counts


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack()
    yield stack
    stack.local.stop(drain=False)


def test_a_job_queued_behind_a_busy_backend_is_cancelled_and_never_starts(stack: Stack) -> None:
    stack.announced()
    busy = stack.run(600)
    stack.wait_for(busy, "RUNNING")
    # The only worker is busy: the job is submitted and waits in the backend's queue.
    queued = stack.ctx.store.jobs.get(stack.run(0).pk)  # provisioned as it was created
    assert queued.compute_job_id
    assert stack.ctx.compute.describe(queued.compute_job_id).raw_status == "SUBMITTED"

    cancelled = cancel_job(stack.ctx, queued.pk, by="alice")
    assert cancelled.status is JobStatus.CANCELLED
    stack.wait_for(queued, "FAILED")
    assert stack.statuses(queued) == ["FAILED"]
    assert stack.ctx.compute.describe(queued.compute_job_id).reason == REASON_CANCELLED

    # Free the worker; a later job runs to the end, so the cancelled one had its turn.
    cancel_job(stack.ctx, busy.pk, by="alice")
    stack.wait_for(busy, "FAILED")
    later = stack.run(0)
    stack.wait_for(later, "SUCCEEDED")
    assert stack.ctx.store.jobs.get(later.pk).status is JobStatus.SUCCESS
    assert stack.statuses(queued) == ["FAILED"]  # it never ran
    stored = stack.ctx.store.jobs.get(queued.pk)
    assert stored.status is JobStatus.CANCELLED
    assert stored.started_at is None
    assert sorted(stack.announced()) == sorted(
        [(queued.pk, "Cancelled"), (busy.pk, "Cancelled"), (later.pk, "Succeeded")]
    )
    assert stack.counters() == [0, 0, 0]


def test_cancel_racing_with_the_backends_success_leaves_one_final_state(stack: Stack) -> None:
    stack.announced()
    for _ in range(3):
        barrier = threading.Barrier(2, timeout=WAIT)

        def at_success(event: dict[str, Any], barrier=barrier) -> None:
            # The backend reports the end as the user's cancel is sent (one job at a time).
            if event["detail"]["status"] in ("SUCCEEDED", "FAILED"):
                barrier.wait()

        stack.before = at_success
        try:
            job = stack.run(0)
            barrier.wait()
            returned = cancel_job(stack.ctx, job.pk, by="alice")
            stack.wait_for(job, "SUCCEEDED")
        finally:
            stack.before = None
        final = stack.ctx.store.jobs.get(job.pk)
        assert final.status in (JobStatus.SUCCESS, JobStatus.CANCELLED)
        assert returned.status is final.status
        # Announced once, as it ended; a cancelled job keeps no outputs.
        assert stack.announced() == [(job.pk, final.status.label)]
        assert bool(final.outputs) is (final.status is JobStatus.SUCCESS)
        assert stack.statuses(job) == ["RUNNING", "SUCCEEDED"]
        assert stack.counters() == [0, 0, 0]
