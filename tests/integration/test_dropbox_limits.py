"""Drop-folder jobs count against the drop-folder user's limits: drops over a limit wait,
unclaimed and without an error, and start as slots free; only HTTP creation answers 429."""

from __future__ import annotations

import json

import pytest

from gantry import resources
from gantry.job_states import JobStatus
from gantry.pipeline.lifecycle import finish
from tests.integration.test_dropbox import OWNER, deliver, drain, drop, dropbox_jobs, put
from tests.integration.test_inputs_support import read_key

__all__ = ["drop"]  # the fixture, found by pytest among this module's names


@pytest.fixture
def settings():
    """The defaults (16 unfinished jobs per user), not test_dropbox's roomy limits."""
    from gantry.settings import Settings

    return Settings(
        table_name="gantry-test",
        bucket_name="gantry-test-data",
        region="us-east-1",
        api_base_url="https://api.gantry.test/api/v1/",
        compute_backend="local",
    )


DROPS = 50
LIMIT = 16  # the default limit of unfinished jobs per user


@pytest.mark.slow
def test_fifty_drops_with_a_limit_of_16_all_finish_never_more_than_16_at_once(drop) -> None:
    ctx, queue_url = drop
    assert ctx.settings.max_active_jobs_per_user == LIMIT
    for i in range(DROPS):
        put(ctx, f"dropbox/segmenter/case-{i:03d}/scan.mha", f"image {i}".encode())
    assert deliver(ctx, drain(ctx, queue_url)) == []

    peak, rounds = 0, 0
    while True:
        jobs = dropbox_jobs(ctx)
        active = [job for job in jobs if not job.status.is_terminal]
        peak = max(peak, len(active), ctx.store.jobs.active_count(f"USER#{OWNER}"))
        assert len(active) <= LIMIT
        if len(jobs) == DROPS and not active:
            break
        assert active, f"{DROPS - len(jobs)} drops wait, but no job runs to free a slot"
        # The waiting drops have no result yet (neither job.json nor error.json).
        results = ctx.clients.s3.list_objects_v2(
            Bucket=ctx.settings.bucket_name, Prefix=resources.PREFIX_DROPBOX_RESULTS
        )
        assert len({o["Key"].split("/")[2] for o in results.get("Contents", [])}) == len(
            jobs
        ) - len(active)
        for job in active:
            finish(ctx, job, JobStatus.SUCCESS, {})
        # The jobs' end events reach the drop folder, which starts the waiting drops.
        assert deliver(ctx, drain(ctx, queue_url)) == []
        rounds += 1
        assert rounds <= DROPS

    assert peak == LIMIT
    assert rounds == -(-DROPS // LIMIT)  # 16, 16, 16, 2
    assert sorted(job.source_ref for job in dropbox_jobs(ctx)) == [
        f"segmenter/case-{i:03d}" for i in range(DROPS)
    ]
    for i in range(DROPS):
        key = f"{resources.PREFIX_DROPBOX_RESULTS}segmenter/case-{i:03d}/job.json"
        assert json.loads(read_key(ctx, key))["status"] == "Succeeded"
    assert ctx.store.jobs.active_count(f"USER#{OWNER}") == 0
