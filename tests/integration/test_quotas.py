"""Limits on unfinished jobs: HTTP creation over a limit answers 429 with Retry-After and the
limit's name; concurrent creates cannot pass a limit; every way a job ends frees its slot."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from gantry import timeutil
from gantry.errors import TooManyRequests
from gantry.job_states import JobStatus
from gantry.pipeline.cancel import cancel_job
from gantry.pipeline.inputs import validate_pending_inputs
from gantry.pipeline.sweeper import sweep
from gantry.services.jobs import JobCreate, JobInput, create_job
from gantry.urls import Urls
from tests.conftest import ApiClient
from tests.integration import pipeline_support
from tests.integration.pipeline_support import World, queued_job, run_attempt
from tests.integration.test_inputs_support import make_algorithm, make_socket, put_upload

aws = pipeline_support.aws
world = pipeline_support.world


@pytest.fixture
def backend() -> str:
    return "batch"


@pytest.fixture
def settings(backend: str):
    return pipeline_support.pipeline_settings(backend, max_active_jobs_per_user=1)


def _body(algorithm_pk: str, value: float = 1.0) -> JobCreate:
    return JobCreate(algorithm=algorithm_pk, inputs=[JobInput(interface="threshold", value=value)])


def _start_limited(world: World, user: str = "alice") -> Any:
    owner = world.ctx.store.users.ensure_user(user)
    urls = Urls(world.ctx.settings.api_base_url)
    return create_job(world.ctx, owner, _body(world.algorithm.pk), urls, enforce_limits=True)


def _active(world: World, user: str = "alice") -> int:
    return world.ctx.store.jobs.active_count(f"USER#{user}")


# --- HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def http(ctx, api_app) -> dict[str, Any]:
    """alice's algorithm (bob may use it) with a ready image, and both users' API clients."""
    make_socket(ctx, "Number", "Integer", "number.json")
    make_socket(ctx, "Result", "Float", "result.json")
    algorithm = make_algorithm(ctx, "Adder", ["number"], ["result"], users=["bob"])
    clients = {
        name: ApiClient(api_app, ctx.store.users.create_token(name)) for name in ("alice", "bob")
    }
    return {"algorithm": algorithm, **clients}


def _post(client: ApiClient, algorithm: Any, value: int) -> tuple[int, Any, dict[str, str]]:
    keys = ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
    item = {"interface": "number", **dict.fromkeys(keys), "image_name": None, "value": value}
    return client.post("algorithms/jobs/", {"algorithm": algorithm.pk, "inputs": [item]})


class TestHttp:
    @pytest.fixture
    def settings(self):
        from gantry.settings import Settings

        return Settings(
            table_name="gantry-test",
            bucket_name="gantry-test-data",
            region="us-east-1",
            api_base_url="https://api.gantry.test/api/v1/",
            compute_backend="local",
        )

    def test_the_17th_unfinished_job_is_refused_with_retry_after(self, http) -> None:
        alice, algorithm = http["alice"], http["algorithm"]
        for value in range(16):
            status, body, _ = _post(alice, algorithm, value)
            assert status == 201, body
        status, body, headers = _post(alice, algorithm, 16)
        assert status == 429, body
        assert int(headers["Retry-After"]) > 0
        assert "16 active jobs per user" in body["detail"]
        assert body["limit"] == "active jobs per user"
        _, page, _ = alice.get("algorithms/jobs/")
        assert page["count"] == 16  # the refused job was not stored
        # The limit is per user, but the algorithm's own limit (16) is full too.
        status, body, _ = _post(http["bob"], algorithm, 1)
        assert status == 429
        assert "per algorithm" in body["detail"]


def test_another_users_jobs_count_on_their_own(world: World) -> None:
    _start_limited(world, "alice")
    other = make_algorithm(world.ctx, "Other", ["threshold"], ["score"], users=["bob"])
    owner = world.ctx.store.users.ensure_user("bob")
    urls = Urls(world.ctx.settings.api_base_url)
    create_job(world.ctx, owner, _body(other.pk), urls, enforce_limits=True)
    with pytest.raises(TooManyRequests, match="per user"):
        _start_limited(world, "alice")
    assert (_active(world, "alice"), _active(world, "bob")) == (1, 1)


@pytest.mark.usefixtures("atomic_dynamodb")
def test_concurrent_creates_cannot_pass_a_limit(world: World) -> None:
    world.ctx.settings = world.ctx.settings.model_copy(update={"max_active_jobs_per_user": 3})
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def start() -> None:
        barrier.wait()
        try:
            _start_limited(world)
            outcomes.append("created")
        except TooManyRequests:
            outcomes.append("refused")

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert _active(world) == 3
    _, count = world.ctx.store.jobs.page_for("alice", offset=0, limit=100)
    assert count == 3


# --- every way a job ends frees its slot -------------------------------------------------------


def _succeed(world: World) -> None:
    job = world.job()
    run_attempt(world.ctx, job)
    world.deliver("succeeded", job)
    assert world.get(job).status is JobStatus.SUCCESS


def _fail(world: World) -> None:
    job = world.job()
    world.deliver("failed", job)
    assert world.get(job).status is JobStatus.FAILURE


def _fail_validation(world: World) -> None:
    make_socket(world.ctx, "Document", "PDF", "document.pdf")
    reader = make_algorithm(world.ctx, "Reader", ["document"], ["score"])
    upload = put_upload(world.ctx, "document.pdf", b"<html>not a pdf</html>")
    owner = world.ctx.store.users.ensure_user("alice")
    body = JobCreate(
        algorithm=reader.pk, inputs=[JobInput(interface="document", user_upload=upload.pk)]
    )
    job = create_job(world.ctx, owner, body, Urls(world.ctx.settings.api_base_url))
    assert _active(world) == 1
    validate_pending_inputs(world.ctx, job.pk)
    assert world.ctx.store.jobs.get(job.pk).status is JobStatus.FAILURE


def _cancel(world: World) -> None:
    job = queued_job(world.ctx, world.algorithm)
    assert cancel_job(world.ctx, job.pk, by="alice").status is JobStatus.CANCELLED


def _sweep(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    job = world.job()
    # Its events were lost; past its time limit the sweeper asks Batch and ends it.
    later = timeutil.now() + timedelta(
        seconds=job.time_limit + world.ctx.settings.sweeper_margin_seconds + 1
    )
    monkeypatch.setattr(timeutil, "now", lambda: later)
    assert sweep(world.ctx).reconciled == [job.pk]
    assert world.get(job).status.is_terminal


@pytest.mark.parametrize("way", ["success", "failure", "validation", "cancel", "sweeper"])
def test_every_way_a_job_ends_frees_its_slot(
    world: World, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ends = {
        "success": _succeed,
        "failure": _fail,
        "validation": _fail_validation,
        "cancel": _cancel,
        "sweeper": lambda w: _sweep(w, monkeypatch),
    }
    ends[way](world)
    assert _active(world) == 0
    # The one slot (limit 1) is free again: a new job is accepted, and the next refused.
    _start_limited(world)
    with pytest.raises(TooManyRequests):
        _start_limited(world)


def test_a_job_ending_twice_frees_one_slot(world: World) -> None:
    world.ctx.settings = world.ctx.settings.model_copy(update={"max_active_jobs_per_user": 2})
    first = world.job()
    world.job()
    world.deliver("failed", first)
    world.deliver("failed", first)  # a duplicate event
    cancel_job(world.ctx, first.pk, by="alice")  # and a late cancel
    assert _active(world) == 1


def test_users_me_shows_the_limits_and_unfinished_jobs(world: World, api_app) -> None:
    token = world.ctx.store.users.create_token("alice")
    client = ApiClient(api_app, token)
    job = world.job()
    status, me, _ = client.get("users/me/")
    assert status == 200, me
    assert me["username"] == "alice"
    assert me["limits"] == {
        "active_jobs_per_user": 1,
        "active_jobs_per_algorithm": 16,
        "active_jobs": 128,
    }
    assert me["active_jobs"] == 1
    cancel_job(world.ctx, job.pk, by="alice")
    assert client.get("users/me/")[1]["active_jobs"] == 0
