"""The AWS requests one job costs the platform, counted at the local stack's endpoint.

Every request is a round trip (and, on AWS, a billed call): a job from the API's POST through
provisioning, the local compute backend, the real runner and the callback to Succeeded must
stay within a known number of them. The runner's own requests are counted apart (its
User-Agent carries an app id), and so are the queue pollers', which ask by time, not per job.
"""

from __future__ import annotations

import collections
import time

import pytest

from gantry.compute.base import compute_name
from gantry.local.client import InProcessApi
from gantry.local.request_count import PLATFORM, POLLING_OPERATIONS, RequestCounter
from gantry.local.stack import LocalStack
from gantry.settings import Settings
from tests.noop_jobs import (
    NOOP_IMAGE,
    RUNNER_APP_ID,
    Finished,
    job_body,
    register_algorithm,
    register_sockets,
)
from tests.waits import WAIT_SECONDS

pytestmark = pytest.mark.slow

JOBS = 3
# Measured: 29 per job (the API's POST 10 with provisioning 5, the callback 13 and the
# running event 1), 31 when the running event races the recording of the submission, as it
# may. Before the per-job round trips were cut it was 48.
MAX_PLATFORM_REQUESTS_PER_JOB = 32


@pytest.fixture(scope="module")
def stack():
    local = LocalStack.start(
        Settings(table_name="gantry-requests", bucket_name="gantry-requests"),
        # The sweeper asks by time, not per job: left out of the count.
        sweep_every=None,
        extra_env={"AWS_SDK_UA_APP_ID": RUNNER_APP_ID},
    )
    counter = RequestCounter(local.endpoint.app, app_ids=(RUNNER_APP_ID,))
    local.endpoint.app = counter
    local.counter = counter
    local.finished = Finished(local.ctx.compute_backend)
    yield local
    local.stop()


def _run_job(stack: LocalStack, api: InProcessApi, algorithm_url: str, value: int) -> str:
    job = api.request("POST", "algorithms/jobs/", job_body(algorithm_url, value))
    deadline = time.perf_counter() + WAIT_SECONDS
    stack.finished.wait(compute_name(job["pk"], 1), deadline)  # type: ignore[attr-defined]
    return str(job["pk"])


def test_a_no_op_job_stays_within_its_aws_requests(stack: LocalStack) -> None:
    api = InProcessApi(stack.ctx, stack.ctx.store.users.create_token("requests"))
    register_sockets(api.request)
    algorithm = register_algorithm(api.request, "Noop requests", NOOP_IMAGE)
    # The first job marks its sockets and socket set used, once for all jobs after it.
    _run_job(stack, api, algorithm["api_url"], 0)

    counter: RequestCounter = stack.counter  # type: ignore[attr-defined]
    before = counter.snapshot()
    pks = [_run_job(stack, api, algorithm["api_url"], value) for value in range(1, JOBS + 1)]
    counted = counter.snapshot() - before

    for pk in pks:
        assert api.request("GET", f"algorithms/jobs/{pk}/")["status"] == "Succeeded"
    platform = collections.Counter(
        {
            (service, operation): n
            for (who, service, operation), n in counted.items()
            if who == PLATFORM and operation not in POLLING_OPERATIONS
        }
    )
    per_job = sum(platform.values()) / JOBS
    table = ", ".join(f"{s} {o} {n / JOBS:.1f}" for (s, o), n in sorted(platform.items()))
    assert per_job <= MAX_PLATFORM_REQUESTS_PER_JOB, f"{per_job:.1f} per job: {table}"
    # The runner's requests are its own, not the platform's: they were told apart.
    assert sum(n for (who, _, _), n in counted.items() if who == RUNNER_APP_ID) > 0
