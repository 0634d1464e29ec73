"""The DynamoDB stores against moto: entities, uniqueness, atomic ids, concurrency, transitions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gantry import timeutil
from gantry.algorithms import AlgorithmFields, AlgorithmImageFields
from gantry.context import Context
from gantry.errors import Conflict, NotFound
from gantry.interfaces import InterfaceFields
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.store import keys
from gantry.uploads import Upload, UploadStatus


@pytest.fixture(autouse=True)
def _atomic_writes(atomic_dynamodb: None) -> None:
    """Every test here: moto's conditional writes atomic, as DynamoDB's are."""


def _all_items(ctx: Context) -> list[dict[str, Any]]:
    """Every item of the table (moto: a scan is cheap), to prove nothing was half-written."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": ctx.settings.table_name}
    while True:
        response = ctx.clients.dynamodb.scan(**kwargs)
        items += response["Items"]
        if "LastEvaluatedKey" not in response:
            return items
        kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def _entity_keys(ctx: Context) -> set[tuple[str, str]]:
    # Counters move on every attempt by design (ids are never reused); everything else counts.
    return {
        (i["PK"]["S"], i["SK"]["S"])
        for i in _all_items(ctx)
        if not i["PK"]["S"].startswith("COUNTER#")
    }


def _socket(title: str = "Score", **fields: Any) -> InterfaceFields:
    return InterfaceFields.model_validate(
        {"title": title, "kind": "Float", "relative_path": "score.json", **fields}
    )


def _job(ctx: Context, creator: str = "alice", **fields: Any) -> Job:
    moment = timeutil.iso()
    job = Job(
        pk=str(uuid.uuid4()),
        algorithm=fields.pop("algorithm", str(uuid.uuid4())),
        algorithm_image=str(uuid.uuid4()),
        creator=creator,
        status=fields.pop("status", JobStatus.PENDING),
        time_limit=600,
        created=fields.pop("created", moment),
        modified=fields.pop("modified", moment),
        **fields,
    )
    return ctx.store.jobs.create(job, input_images=[])


def _parallel(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(count) on ``count`` threads released at the same time."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return work(i)
        except Exception as error:  # collected: the test decides what is expected
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


# --- sockets -------------------------------------------------------------------------------


def test_socket_create_get_and_by_slug(ctx: Context) -> None:
    created = ctx.store.sockets.create(_socket("Lesion Score"), creator="alice")
    assert created.slug == "lesion-score"
    assert created.pk >= 1
    assert ctx.store.sockets.get(created.pk) == created
    assert ctx.store.sockets.get_by_slug("lesion-score") == created
    assert ctx.store.sockets.get_many_by_slug(["lesion-score", "nope"]) == {"lesion-score": created}
    with pytest.raises(NotFound):
        ctx.store.sockets.get(created.pk + 1)
    with pytest.raises(NotFound):
        ctx.store.sockets.get_by_slug("nope")


def test_socket_pks_are_distinct_integers_in_creation_order(ctx: Context) -> None:
    pks = [ctx.store.sockets.create(_socket(f"S {i}"), creator="a").pk for i in range(5)]
    assert pks == sorted(pks)
    assert len(set(pks)) == 5


@pytest.mark.parametrize("second", ["Score", " score ", "SCORE", "Score!"])
def test_duplicate_socket_title_or_slug_conflicts_and_writes_nothing(
    ctx: Context, second: str
) -> None:
    ctx.store.sockets.create(_socket("Score"), creator="alice")
    before = _entity_keys(ctx)
    with pytest.raises(Conflict) as raised:
        ctx.store.sockets.create(_socket(second), creator="bob")
    assert raised.value.field == "title"
    assert _entity_keys(ctx) == before
    assert ctx.store.sockets.page(offset=0, limit=10)[1] == 1


def test_racing_creates_of_one_title_make_exactly_one_socket(ctx: Context) -> None:
    outcomes = _parallel(6, lambda _: ctx.store.sockets.create(_socket("Race"), creator="x"))
    made = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(made) == 1, outcomes
    assert all(isinstance(o, Conflict) for o in outcomes if o not in made), outcomes
    sockets, count = ctx.store.sockets.page(offset=0, limit=100)
    assert count == 1
    assert [s.pk for s in sockets] == [made[0].pk]
    # The losers left no claim or socket item behind.
    socket_items = {k for k in _entity_keys(ctx) if k[0].startswith("SOCKET#")}
    assert socket_items == {(keys.socket(made[0].pk), "A")}


def test_next_id_is_atomic_under_concurrency(ctx: Context) -> None:
    ids = _parallel(16, lambda _: [ctx.store.table.next_id("race") for _ in range(10)])
    flat = [i for batch in ids for i in batch]
    assert len(flat) == 160
    assert sorted(flat) == list(range(1, 161))


def test_next_ids_hands_out_disjoint_blocks(ctx: Context) -> None:
    blocks = _parallel(8, lambda i: ctx.store.table.next_ids("block", i + 1))
    flat = [i for block in blocks for i in block]
    assert sorted(flat) == list(range(1, len(flat) + 1))
    assert all(block == list(range(block[0], block[0] + len(block))) for block in blocks)
    assert ctx.store.table.next_ids("block", 0) == []


# --- algorithms ------------------------------------------------------------------------------


def _algorithm_fields(title: str = "Segmenter", **fields: Any) -> AlgorithmFields:
    return AlgorithmFields.model_validate(
        {"title": title, "interfaces": [{"inputs": ["a"], "outputs": ["b"]}], **fields}
    )


def test_algorithm_create_get_and_visibility_lists(ctx: Context) -> None:
    algorithm = ctx.store.algorithms.create(
        _algorithm_fields(editors=["erin"], users=["uma"]), creator="alice"
    )
    assert ctx.store.algorithms.get(algorithm.pk) == algorithm
    assert ctx.store.algorithms.get_by_slug("segmenter") == algorithm
    for member in ("alice", "erin", "uma"):
        listed, count = ctx.store.algorithms.page_for(member, offset=0, limit=10)
        assert [a.pk for a in listed] == [algorithm.pk], member
        assert count == 1
    assert ctx.store.algorithms.page_for("bob", offset=0, limit=10) == ([], 0)


def test_duplicate_algorithm_slug_conflicts_and_writes_nothing(ctx: Context) -> None:
    ctx.store.algorithms.create(_algorithm_fields("Segmenter"), creator="alice")
    before = _entity_keys(ctx)
    with pytest.raises(Conflict):
        ctx.store.algorithms.create(_algorithm_fields("segmenter", users=["bob"]), creator="carl")
    assert _entity_keys(ctx) == before
    # No membership (and no count) was added for the losing creator or its users.
    assert ctx.store.algorithms.page_for("carl", offset=0, limit=10) == ([], 0)
    assert ctx.store.algorithms.page_for("bob", offset=0, limit=10) == ([], 0)


def test_algorithm_images_keep_one_desired_version(ctx: Context) -> None:
    algorithm = ctx.store.algorithms.create(_algorithm_fields(), creator="alice")
    fields = AlgorithmImageFields(image="local", command=["python", "main.py"])
    first = ctx.store.algorithms.create_image(algorithm, fields, creator="alice")
    second = ctx.store.algorithms.create_image(algorithm, fields, creator="alice")
    images = {i.pk: i for i in ctx.store.algorithms.images_of(algorithm.pk)}
    assert set(images) == {first.pk, second.pk}
    assert not images[first.pk].is_desired_version
    assert images[second.pk].is_desired_version
    assert ctx.store.algorithms.desired_image(algorithm.pk) == images[second.pk]


# --- uploads --------------------------------------------------------------------------------


def test_upload_create_get_update_and_list(ctx: Context) -> None:
    upload = Upload(
        pk=str(uuid.uuid4()),
        creator="alice",
        filename="ct.mha",
        key="uploads/alice/x/ct.mha",
        s3_upload_id="mp-1",
        created=timeutil.iso(),
    )
    ctx.store.uploads.create(upload)
    assert ctx.store.uploads.get(upload.pk) == upload
    done = ctx.store.uploads.update(
        upload.pk, lambda u: u.model_copy(update={"status": UploadStatus.COMPLETED, "size": 3})
    )
    assert (done.status, done.size) == (UploadStatus.COMPLETED, 3)
    assert ctx.store.uploads.get(upload.pk) == done
    assert ctx.store.uploads.page_for("alice", offset=0, limit=10) == ([done], 1)
    assert ctx.store.uploads.page_for("bob", offset=0, limit=10) == ([], 0)
    with pytest.raises(NotFound):
        ctx.store.uploads.get(str(uuid.uuid4()))


# --- jobs -----------------------------------------------------------------------------------


def test_job_create_get_and_lists(ctx: Context) -> None:
    job = _job(ctx)
    assert ctx.store.jobs.get(job.pk) == job
    assert ctx.store.jobs.page_for("alice", offset=0, limit=10) == ([job], 1)
    assert ctx.store.jobs.page_for("alice", offset=0, limit=10, algorithm=job.algorithm) == (
        [job],
        1,
    )
    assert ctx.store.jobs.page_for("alice", offset=0, limit=10, algorithm="other") == ([], 0)
    assert ctx.store.jobs.page_for("bob", offset=0, limit=10) == ([], 0)
    assert ctx.store.jobs.find(str(uuid.uuid4())) is None
    with pytest.raises(NotFound):
        ctx.store.jobs.get(str(uuid.uuid4()))


def test_concurrent_updates_never_lose_a_change(ctx: Context) -> None:
    job = _job(ctx)

    def add_metric(i: int) -> Job | None:
        return ctx.store.jobs.update(
            job.pk,
            lambda j: j.model_copy(update={"runtime_metrics": {**j.runtime_metrics, f"m{i}": i}}),
        )

    outcomes = _parallel(8, add_metric)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert ctx.store.jobs.get(job.pk).runtime_metrics == {f"m{i}": i for i in range(8)}


def test_update_that_changes_nothing_returns_none(ctx: Context) -> None:
    job = _job(ctx)
    assert ctx.store.jobs.update(job.pk, lambda j: None) is None
    assert ctx.store.jobs.get(job.pk) == job
    with pytest.raises(NotFound):
        ctx.store.jobs.update(str(uuid.uuid4()), lambda j: j)


def test_transitions_are_monotonic(ctx: Context) -> None:
    job = _job(ctx, status=JobStatus.PENDING)
    moved = ctx.store.jobs.transition(job.pk, attempt=1, status=JobStatus.EXECUTING)
    assert moved is not None and moved.status is JobStatus.EXECUTING
    # Duplicate, backwards and stale-attempt events are ignored and change nothing.
    assert ctx.store.jobs.transition(job.pk, attempt=1, status=JobStatus.EXECUTING) is None
    assert ctx.store.jobs.transition(job.pk, attempt=1, status=JobStatus.PROVISIONED) is None
    assert ctx.store.jobs.transition(job.pk, attempt=0, status=JobStatus.SUCCESS) is None
    assert ctx.store.jobs.transition(job.pk, attempt=2, status=JobStatus.SUCCESS) is None
    assert ctx.store.jobs.get(job.pk) == moved


def test_changes_apply_with_the_transition_only(ctx: Context) -> None:
    job = _job(ctx)
    done = ctx.store.jobs.transition(
        job.pk,
        attempt=1,
        status=JobStatus.FAILURE,
        changes=lambda j: {"error_message": f"boom in attempt {j.attempt}"},
    )
    assert done is not None
    assert done.error_message == "boom in attempt 1"
    assert done.completed_at is not None
    late = ctx.store.jobs.transition(
        job.pk, attempt=1, status=JobStatus.SUCCESS, changes={"error_message": ""}
    )
    assert late is None
    stored = ctx.store.jobs.get(job.pk)
    assert (stored.status, stored.error_message) == (JobStatus.FAILURE, "boom in attempt 1")


@pytest.mark.parametrize("terminal", [JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED])
def test_a_terminal_job_is_never_left(ctx: Context, terminal: JobStatus) -> None:
    job = _job(ctx)
    assert ctx.store.jobs.transition(job.pk, attempt=1, status=terminal) is not None
    for status in JobStatus:
        assert ctx.store.jobs.transition(job.pk, attempt=1, status=status) is None
    assert ctx.store.jobs.get(job.pk).status is terminal


def test_racing_final_events_finish_the_job_once(ctx: Context) -> None:
    job = _job(ctx, status=JobStatus.EXECUTING)
    targets = [JobStatus.SUCCESS, JobStatus.FAILURE] * 4
    outcomes = _parallel(
        len(targets), lambda i: ctx.store.jobs.transition(job.pk, attempt=1, status=targets[i])
    )
    applied = [o for o in outcomes if isinstance(o, Job)]
    assert len(applied) == 1, outcomes
    assert all(o is None for o in outcomes if o not in applied)
    assert ctx.store.jobs.get(job.pk).status is applied[0].status


def test_requeue_only_from_the_attempt_the_caller_saw(ctx: Context) -> None:
    job = _job(ctx, status=JobStatus.EXECUTING, compute_job_id="batch-1")
    assert ctx.store.jobs.requeue(job.pk, attempt=2) is None
    again = ctx.store.jobs.requeue(job.pk, attempt=1)
    assert again is not None
    assert (again.status, again.attempt, again.compute_job_id) == (JobStatus.RETRY, 2, None)
    # A second requeue for the same (old) attempt is a duplicate: ignored.
    assert ctx.store.jobs.requeue(job.pk, attempt=1) is None
    assert ctx.store.jobs.get(job.pk).attempt == 2
    # Events of the old attempt no longer apply; the new attempt's do.
    assert ctx.store.jobs.transition(job.pk, attempt=1, status=JobStatus.FAILURE) is None
    assert ctx.store.jobs.transition(job.pk, attempt=2, status=JobStatus.PROVISIONING)


def test_racing_requeues_start_one_new_attempt(ctx: Context) -> None:
    job = _job(ctx, status=JobStatus.EXECUTING)
    outcomes = _parallel(6, lambda _: ctx.store.jobs.requeue(job.pk, attempt=1))
    assert sum(isinstance(o, Job) for o in outcomes) == 1, outcomes
    assert ctx.store.jobs.get(job.pk).attempt == 2


def test_compute_id_index_follows_the_job(ctx: Context) -> None:
    job = _job(ctx)
    assert ctx.store.jobs.find_by_compute_id("batch-7") is None
    ctx.store.jobs.transition(
        job.pk, attempt=1, status=JobStatus.PROVISIONED, changes={"compute_job_id": "batch-7"}
    )
    found = ctx.store.jobs.find_by_compute_id("batch-7")
    assert found is not None and found.pk == job.pk
    ctx.store.jobs.requeue(job.pk, attempt=1)
    assert ctx.store.jobs.find_by_compute_id("batch-7") is None


def test_active_index_is_sparse(ctx: Context) -> None:
    running = _job(ctx, status=JobStatus.EXECUTING)
    finished = _job(ctx, status=JobStatus.EXECUTING)
    queued = _job(ctx, status=JobStatus.PENDING)
    ctx.store.jobs.transition(finished.pk, attempt=1, status=JobStatus.SUCCESS)
    later = "9999-12-31T00:00:00Z"
    assert {j.pk for j in ctx.store.jobs.active_modified_before(later)} == {
        running.pk,
        queued.pk,
    }
    # Nothing untouched since before all of them.
    assert ctx.store.jobs.active_modified_before("2000-01-01T00:00:00Z") == []
    # The finished job is gone from the index, not just filtered out.
    items = [i for i in _all_items(ctx) if i["PK"]["S"] == keys.job(finished.pk)]
    assert "GSI3PK" not in items[0]
    assert "GSI3PK" in next(i for i in _all_items(ctx) if i["PK"]["S"] == keys.job(running.pk))


def test_active_index_orders_oldest_first_and_limits(ctx: Context) -> None:
    jobs = [_job(ctx) for _ in range(4)]
    # Touch the first job: it becomes the most recently modified.
    ctx.store.jobs.transition(jobs[0].pk, attempt=1, status=JobStatus.PROVISIONING)
    found = ctx.store.jobs.active_modified_before("9999", limit=3)
    assert [j.pk for j in found] == [j.pk for j in jobs[1:4]]


# --- images --------------------------------------------------------------------------------------


def test_an_image_registered_twice_at_once_is_counted_once(ctx: Context) -> None:
    from gantry.images import Image

    image = Image(pk=str(uuid.uuid4()), name="ct.mha", owner="alice", created="2026-01-01T00:00Z")
    results = _parallel(4, lambda _: ctx.store.images.put(image))
    assert all(result == image for result in results)
    ctx.store.images.put(image)  # and once more, later
    found, count = ctx.store.images.page_for("alice", offset=0, limit=10)
    assert [i.pk for i in found] == [image.pk]
    assert count == 1
