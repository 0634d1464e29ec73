"""Monthly credits: a job costs credits by its time limit and GPU type (at least the
algorithm's minimum); too few left refuses it with HTTP 400 naming what is left and the cost;
concurrent creates cannot overspend; a new month brings the credits back; editors run each
algorithm image a few times free."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from gantry import credits, timeutil
from gantry.algorithms import Algorithm, AlgorithmFields, AlgorithmImageFields, GPUType
from gantry.errors import ValidationFailed
from gantry.pipeline.cancel import cancel_job
from gantry.services.jobs import JobCreate, JobInput, create_job
from gantry.settings import Settings
from gantry.urls import Urls
from tests.conftest import ApiClient
from tests.integration.test_inputs_support import make_socket


@pytest.fixture
def settings() -> Settings:
    # 100 credits a month: five jobs of the default cost (20).
    return Settings(
        table_name="gantry-test",
        bucket_name="gantry-test-data",
        region="us-east-1",
        api_base_url="https://api.gantry.test/api/v1/",
        compute_backend="local",
        monthly_credits=100,
        max_jobs_per_month=50,
        max_active_jobs_per_user=100,
        max_active_jobs_per_algorithm=100,
    )


@pytest.fixture
def algorithm(ctx) -> Algorithm:
    """alice's algorithm; bob may use it, carol edits it."""
    make_socket(ctx, "Number", "Integer", "number.json")
    make_socket(ctx, "Result", "Float", "result.json")
    sets = [{"inputs": ["number"], "outputs": ["result"]}]
    fields = AlgorithmFields(title="Adder", interfaces=sets, users=["bob"], editors=["carol"])
    created = ctx.store.algorithms.create(fields, creator="alice")
    image = AlgorithmImageFields(image="local", command=["run"])
    ctx.store.algorithms.create_image(created, image, creator="alice")
    return created


def _create(ctx, username: str, algorithm: Algorithm) -> Any:
    user = ctx.store.users.ensure_user(username)
    body = JobCreate(algorithm=algorithm.pk, inputs=[JobInput(interface="number", value=1)])
    return create_job(ctx, user, body, Urls(ctx.settings.api_base_url), enforce_limits=True)


def _at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setattr(timeutil, "now", lambda: moment)


def _post(client: ApiClient, algorithm: Algorithm) -> tuple[int, Any, dict[str, str]]:
    keys = ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
    item = {"interface": "number", **dict.fromkeys(keys), "image_name": None, "value": 1}
    return client.post("algorithms/jobs/", {"algorithm": algorithm.pk, "inputs": [item]})


def test_cost_follows_time_limit_and_gpu_type_with_minimums() -> None:
    settings = Settings(monthly_credits=1000, monthly_credit_cents=1000, max_jobs_per_month=50)

    def cost(time_limit: int, gpu: GPUType, minimum: int = 20) -> int:
        algorithm = AlgorithmFields.model_construct(
            title="Costly",
            interfaces=[],
            time_limit=time_limit,
            requires_gpu_type=gpu,
            minimum_credits_per_job=minimum,
        )
        return credits.credits_per_job(settings, algorithm)  # type: ignore[arg-type]

    assert cost(3600, GPUType.NONE) == 20  # 10 cents: the floor 1000 / 50 applies
    assert cost(3600, GPUType.T4) == 50  # 53 cents, rounded to tens
    assert cost(4 * 3600, GPUType.T4) == 210  # 212 cents
    assert cost(3600, GPUType.A100) == 3280
    assert cost(3600, GPUType.T4, minimum=300) == 300  # the algorithm's own minimum


def test_exhausted_credits_refuse_with_400_naming_what_is_left(ctx, api_app, algorithm) -> None:
    bob = ApiClient(api_app, ctx.store.users.create_token("bob"))
    for _ in range(5):
        status, body, _ = _post(bob, algorithm)
        assert status == 201, body
    status, body, _ = _post(bob, algorithm)
    assert status == 400, body
    assert body["credits_left"] == 0
    assert body["credits_per_job"] == 20
    assert "costs 20 credits" in body["detail"] and "0 of your 100" in body["detail"]
    assert body["credits"] == [body["detail"]]
    _, page, _ = bob.get("algorithms/jobs/")
    assert page["count"] == 5  # the refused job was not stored
    status, me, _ = bob.get("users/me/")
    assert status == 200
    assert me["credits"]["spent"] == 100 and me["credits"]["left"] == 0
    assert me["credits"]["monthly"] == 100


def test_a_cancelled_job_does_not_give_credits_back(ctx, algorithm) -> None:
    job = _create(ctx, "bob", algorithm)
    cancel_job(ctx, job.pk, by="bob")
    month = credits.month_of(timeutil.now())
    assert ctx.store.jobs.credits_spent("bob", month) == 20


@pytest.mark.usefixtures("atomic_dynamodb")
def test_concurrent_creates_cannot_overspend(ctx, algorithm) -> None:
    ctx.settings = ctx.settings.model_copy(update={"monthly_credits": 60})  # three jobs
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def start() -> None:
        barrier.wait()
        try:
            _create(ctx, "bob", algorithm)
            outcomes.append("created")
        except ValidationFailed:
            outcomes.append("refused")

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert ctx.store.jobs.credits_spent("bob", credits.month_of(timeutil.now())) == 60
    _, count = ctx.store.jobs.page_for("bob", offset=0, limit=100)
    assert count == 3


def test_credits_come_back_at_the_month_boundary(
    ctx, api_app, algorithm, monkeypatch: pytest.MonkeyPatch
) -> None:
    _at(monkeypatch, datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    for _ in range(5):
        _create(ctx, "bob", algorithm)
    with pytest.raises(ValidationFailed, match="renewed on 2027-01-01"):
        _create(ctx, "bob", algorithm)
    _at(monkeypatch, datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    _create(ctx, "bob", algorithm)
    me = ApiClient(api_app, ctx.store.users.create_token("bob")).get("users/me/")[1]
    assert me["credits"] == {
        "monthly": 100,
        "spent": 20,
        "left": 80,
        "month": "2027-01",
        "renewed": "2027-02-01",
    }


def test_a_job_costing_more_than_a_month_is_refused(ctx, algorithm) -> None:
    ctx.settings = ctx.settings.model_copy(update={"monthly_credits": 10})
    with pytest.raises(ValidationFailed, match="costs 20 credits") as refused:
        _create(ctx, "bob", algorithm)
    assert refused.value.extra == {"credits_left": 10, "credits_per_job": 20}
    _, count = ctx.store.jobs.page_for("bob", offset=0, limit=100)
    assert count == 0


def test_editors_run_each_image_a_few_times_free_then_pay(ctx, api_app, algorithm) -> None:
    """grand-challenge's complimentary editor jobs: a number per algorithm image, shared by
    all its editors; beyond them an editor's job costs credits like anyone's."""
    ctx.settings = ctx.settings.model_copy(
        update={"monthly_credits": 20, "complimentary_editor_jobs": 3}
    )
    jobs = [_create(ctx, username, algorithm) for username in ("alice", "carol", "alice")]
    assert [j.is_complimentary for j in jobs] == [True] * 3
    assert [j.credits_consumed for j in jobs] == [0] * 3
    assert ctx.store.jobs.get(jobs[0].pk).is_complimentary
    month = credits.month_of(timeutil.now())
    assert ctx.store.jobs.credits_spent("alice", month) == 0
    # The fourth editor job spends alice's credits (20: all she has), the fifth is refused.
    fourth = _create(ctx, "alice", algorithm)
    assert (fourth.is_complimentary, fourth.credits_consumed) == (False, 20)
    assert ctx.store.jobs.credits_spent("alice", month) == 20
    with pytest.raises(ValidationFailed, match="Not enough credits"):
        _create(ctx, "alice", algorithm)
    # Users never get free jobs; the job shows what it spent.
    bob_job = _create(ctx, "bob", algorithm)
    assert (bob_job.is_complimentary, bob_job.credits_consumed) == (False, 20)
    alice = ApiClient(api_app, ctx.store.users.create_token("alice"))
    shown = alice.get(f"algorithms/jobs/{jobs[0].pk}/")[1]
    assert (shown["is_complimentary"], shown["credits_consumed"]) == (True, 0)
    # A new image of the algorithm brings new free jobs.
    image = AlgorithmImageFields(image="local:2", command=["run"])
    new_image = ctx.store.algorithms.create_image(algorithm, image, creator="alice")
    again = _create(ctx, "carol", algorithm)
    assert again.is_complimentary and again.algorithm_image == new_image.pk
    assert ctx.store.jobs.complimentary_jobs_taken(new_image.pk) == 1
    # users/me shows an editor the free jobs left per image; a user has none.
    me = alice.get("users/me/")[1]["complimentary_editor_jobs_left"]
    assert me == {jobs[0].algorithm_image: 0, new_image.pk: 2}
    bob = ApiClient(api_app, ctx.store.users.create_token("bob"))
    assert bob.get("users/me/")[1]["complimentary_editor_jobs_left"] == {}


@pytest.mark.usefixtures("atomic_dynamodb")
def test_concurrent_editor_jobs_take_no_more_free_jobs_than_the_cap(ctx, algorithm) -> None:
    ctx.settings = ctx.settings.model_copy(
        update={"monthly_credits": 0, "complimentary_editor_jobs": 3}
    )
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def start(username: str) -> None:
        barrier.wait()
        try:
            _create(ctx, username, algorithm)
            outcomes.append("created")
        except ValidationFailed:
            outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(n,)) for n in ["alice", "carol"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    image = ctx.store.algorithms.desired_image(algorithm.pk)
    assert ctx.store.jobs.complimentary_jobs_taken(image.pk) == 3


def test_editors_set_the_algorithms_minimum(ctx, api_app, algorithm) -> None:
    alice = ApiClient(api_app, ctx.store.users.create_token("alice"))
    status, body, _ = alice.patch(f"algorithms/{algorithm.pk}/", {"minimum_credits_per_job": 50})
    assert status == 200, body
    _create(ctx, "bob", algorithm)
    assert ctx.store.jobs.credits_spent("bob", credits.month_of(timeutil.now())) == 50
    status, body, _ = alice.patch(f"algorithms/{algorithm.pk}/", {"minimum_credits_per_job": 5})
    assert status == 400
    assert "minimum_credits_per_job" in str(body)


def test_drop_folder_jobs_spend_no_credits(ctx, algorithm) -> None:
    ctx.settings = ctx.settings.model_copy(update={"monthly_credits": 0})
    user = ctx.store.users.ensure_user("bob")
    body = JobCreate(algorithm=algorithm.pk, inputs=[JobInput(interface="number", value=1)])
    urls = Urls(ctx.settings.api_base_url)
    create_job(ctx, user, body, urls, source="dropbox", enforce_limits=True)
    with pytest.raises(ValidationFailed, match="Not enough credits"):
        create_job(ctx, user, body, urls, enforce_limits=True)
