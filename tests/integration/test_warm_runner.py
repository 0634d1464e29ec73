"""The local backend's warm runner: one interpreter that imported the runner, one fork per job.

Each job's runner is still a process of its own with the job's environment, its own log and
exit code; the algorithm still runs in the sandbox as a fresh process. These tests check what
is particular to the warm runner: it starts once, every job gets its own settings, it is
replaced when it dies or when this process's environment changes, and it can be switched off.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from gantry.compute.local import LocalBackend
from gantry.contract import verify_result
from gantry.resources import SIGNATURE_METADATA_KEY, io_output_prefix, result_key
from tests.integration.conftest import RunnerS3
from tests.integration.test_compute_local import Events, algorithm, invocation, local_backend
from tests.unit.test_compute_base import make_job
from tests.waits import WAIT_SECONDS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm runner is Linux's"),
]
# The algorithm writes one variable of its environment as an output.
WRITE_MARK = (
    "import json, os; json.dump(os.environ.get('TEST_WARM_RUNNER_MARK'), "
    "open(os.path.join(os.environ['OUTPUT_DIR'], 'mark.json'), 'w'))"
)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def backend(runner_s3: RunnerS3, events: Events) -> Iterator[LocalBackend]:
    local = local_backend(runner_s3, events)
    yield local
    local.shutdown(wait=False)


def _result(runner_s3: RunnerS3, job) -> dict:
    stored = runner_s3.client.get_object(
        Bucket=runner_s3.bucket, Key=result_key(io_output_prefix(job.pk, job.attempt))
    )
    result = verify_result(
        body=stored["Body"].read(),
        signature_hex=stored["Metadata"].get(SIGNATURE_METADATA_KEY),
        key_hex=job.signing_key,
        expected_pk=job.pk,
    )
    return result.model_dump()


def _mark(runner_s3: RunnerS3, job) -> object:
    key = io_output_prefix(job.pk, job.attempt) + "mark.json"
    return json.loads(runner_s3.client.get_object(Bucket=runner_s3.bucket, Key=key)["Body"].read())


def test_jobs_are_forked_from_one_warm_runner_each_with_its_own_settings(
    backend, events, runner_s3
):
    jobs = [make_job(), make_job()]
    image = algorithm(sys.executable, "-c", "print('hello from the algorithm')")
    ids = [backend.submit(job, image, invocation(runner_s3, job.pk)) for job in jobs]
    for job, job_id in zip(jobs, ids, strict=True):
        succeeded = events.wait(job_id, "SUCCEEDED")["detail"]
        assert succeeded["container"]["exitCode"] == 0
        # Signed with the job's own key: each runner read its job's environment.
        result = _result(runner_s3, job)
        assert result["return_code"] == 0
        assert result["user_process_last_stdout_lines"] == ["hello from the algorithm"]
        # The runner's log is the job's own.
        record = backend._jobs[job_id]
        assert job.pk in record.output_tail
        assert all(other.pk not in record.output_tail for other in jobs if other is not job)
    assert backend.fork_server_starts == 1
    runner_pids = {backend._jobs[i].process.pid for i in ids}
    assert len(runner_pids) == 2
    assert backend._forks is not None and backend._forks.process.pid not in runner_pids


def _started_ahead(local: LocalBackend):
    """The warm runner ``warm_up`` starts in the background, once it has imported."""
    local.warm_up()
    deadline = time.monotonic() + WAIT_SECONDS
    while local._forks is None:
        assert time.monotonic() < deadline, "warm_up started no warm runner"
        time.sleep(0.05)
    server = local._forks
    server._ready.result(timeout=WAIT_SECONDS)
    return server


def test_a_warm_runner_started_ahead_runs_the_first_job(backend, events, runner_s3):
    server = _started_ahead(backend)
    job = make_job()
    image = algorithm(sys.executable, "-c", "print('hello from the algorithm')")
    events.wait(backend.submit(job, image, invocation(runner_s3, job.pk)), "SUCCEEDED")
    assert _result(runner_s3, job)["return_code"] == 0
    # The job was forked from the server started ahead: no second start.
    assert backend.fork_server_starts == 1
    assert backend._forks is server


def test_a_warm_runner_no_job_used_is_stopped_with_the_backend(runner_s3, events):
    local = local_backend(runner_s3, events)
    server = _started_ahead(local)
    local.shutdown(wait=True)
    assert server.process.poll() is not None


def test_a_warm_runner_that_died_is_replaced_and_its_running_job_still_ends(
    backend, events, runner_s3
):
    job = make_job()
    sleeper = algorithm(sys.executable, "-c", "import time; time.sleep(3)")
    job_id = backend.submit(job, sleeper, invocation(runner_s3, job.pk))
    events.wait(job_id, "RUNNING")
    assert backend._forks is not None
    os.kill(backend._forks.process.pid, signal.SIGKILL)
    # The runner carries on and writes the job's result; its exit code went with the server.
    ended = events.wait(job_id, "FAILED")["detail"]
    assert ended["container"]["exitCode"] == 1
    assert _result(runner_s3, job)["return_code"] == 0

    second = make_job()
    second_id = backend.submit(
        second, algorithm(sys.executable, "-c", "pass"), invocation(runner_s3, second.pk)
    )
    events.wait(second_id, "SUCCEEDED")
    assert backend.fork_server_starts == 2


def test_a_change_of_this_process_environment_reaches_the_next_job(
    backend, events, runner_s3, monkeypatch
):
    image = algorithm(sys.executable, "-c", WRITE_MARK)
    marks = []
    for value in ("first", "second"):
        monkeypatch.setenv("TEST_WARM_RUNNER_MARK", value)
        job = make_job()
        events.wait(backend.submit(job, image, invocation(runner_s3, job.pk)), "SUCCEEDED")
        marks.append(_mark(runner_s3, job))
    assert marks == ["first", "second"]
    # The first warm runner was started with the first value: the second job needed another.
    assert backend.fork_server_starts == 2


def test_switched_off_each_job_starts_a_runner_of_its_own(runner_s3, events):
    local = local_backend(runner_s3, events, fork_server=False)
    try:
        job = make_job()
        job_id = local.submit(
            job, algorithm(sys.executable, "-c", "pass"), invocation(runner_s3, job.pk)
        )
        events.wait(job_id, "SUCCEEDED")
        assert local.fork_server_starts == 0
        assert _result(runner_s3, job)["return_code"] == 0
    finally:
        local.shutdown(wait=True)
