"""The local backend runs the real runner against a moto server and reports like AWS Batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gantry.compute import state_from_event
from gantry.compute.local import (
    REASON_CANCELLED,
    REASON_EXITED,
    REASON_SHUTDOWN,
    REASON_TIMEOUT,
    LocalBackend,
)
from gantry.contract import verify_result
from gantry.resources import (
    SIGNATURE_METADATA_KEY,
    invocation_key,
    io_output_prefix,
    result_key,
)
from gantry.settings import Settings
from tests.integration.conftest import REPO, RunnerS3
from tests.unit.test_compute_base import make_image, make_job
from tests.waits import WAIT_SECONDS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"


class Events:
    """Collects the backend's events; waits for one that matches."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._changed:
            self.items.append(event)
            self._changed.notify_all()

    def of(self, job_id: str) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.items if e["detail"]["jobId"] == job_id]

    def wait(self, job_id: str, status: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_SECONDS
        with self._changed:
            while True:
                for event in self.items:
                    detail = event["detail"]
                    if detail["jobId"] == job_id and detail["status"] == status:
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {status} event for {job_id}: {self.items}")
                self._changed.wait(remaining)


def local_backend(runner_s3: RunnerS3, events: Events, **options: Any) -> LocalBackend:
    """The local compute backend with one worker, on the runner's S3, reporting to ``events``."""
    settings = Settings(
        region="us-east-1",
        endpoint_url=runner_s3.endpoint,
        bucket_name=runner_s3.bucket,
        compute_backend="local",
        local_workers=1,
    )
    return LocalBackend(settings, events, extra_env=runner_s3.env(), **options)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def backend(runner_s3: RunnerS3, events: Events) -> Iterator[LocalBackend]:
    local = local_backend(runner_s3, events)
    yield local
    local.shutdown(wait=False)


def invocation(runner_s3: RunnerS3, job_pk: str, attempt: int = 1, timeout: int = 60) -> str:
    key = invocation_key(job_pk, attempt)
    body = {
        "pk": job_pk,
        "inputs": [],
        "output_bucket_name": runner_s3.bucket,
        "output_prefix": io_output_prefix(job_pk, attempt),
        "timeout": timeout,
    }
    runner_s3.client.put_object(Bucket=runner_s3.bucket, Key=key, Body=json.dumps(body).encode())
    return f"s3://{runner_s3.bucket}/{key}"


def algorithm(*command: str) -> Any:
    return make_image(image="local", entrypoint=None, command=list(command), workdir=str(REPO))


def keys(value: dict[str, Any]) -> set[str]:
    return set(value)


@pytest.mark.slow
def test_noop_runs_and_reports_running_then_succeeded(backend, events, runner_s3):
    job = make_job()
    uri = invocation(runner_s3, job.pk)
    image = algorithm(sys.executable, "examples/algorithms/noop/main.py")

    job_id = backend.submit(job, image, uri)
    succeeded = events.wait(job_id, "SUCCEEDED")

    assert [e["detail"]["status"] for e in events.of(job_id)] == ["RUNNING", "SUCCEEDED"]
    detail = succeeded["detail"]
    assert detail["jobName"] == f"gantry-{job.pk}-1"
    assert detail["statusReason"] == REASON_EXITED
    assert detail["container"]["exitCode"] == 0
    assert detail["attempts"][-1]["container"]["exitCode"] == 0
    assert detail["tags"] == {"gantry:job": job.pk, "gantry:attempt": "1"}
    assert detail["createdAt"] <= detail["startedAt"] <= detail["stoppedAt"]
    # The signing key never leaves in an event.
    assert job.signing_key not in json.dumps(succeeded)

    state = state_from_event(succeeded)
    assert state is not None
    assert (state.status, state.exit_code, state.job_pk, state.attempt) == (
        "succeeded",
        0,
        job.pk,
        1,
    )
    described = backend.describe(job_id)
    assert described is not None and described.status == "succeeded"

    stored = runner_s3.client.get_object(
        Bucket=runner_s3.bucket, Key=result_key(io_output_prefix(job.pk, 1))
    )
    result = verify_result(
        body=stored["Body"].read(),
        signature_hex=stored["Metadata"].get(SIGNATURE_METADATA_KEY),
        key_hex=job.signing_key,
        expected_pk=job.pk,
    )
    assert result.return_code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root runner runs algorithms as nobody")
def test_an_unsandboxed_command_nobody_can_reach_fails_saying_why(runner_s3, events):
    """A checkout in a folder only root may enter (a fresh ``mktemp -d``, root's home): run
    without the sandbox, the algorithm is nobody, who cannot start the checkout's interpreter.
    The job ends with a message naming the folder, not a bare 'permission denied'."""
    settings = Settings(
        region="us-east-1",
        endpoint_url=runner_s3.endpoint,
        bucket_name=runner_s3.bucket,
        compute_backend="local",
    )
    local = LocalBackend(settings, events, sandbox="off", extra_env=runner_s3.env())
    closed = Path(tempfile.mkdtemp(prefix="gantry-checkout-"))  # 0700, root's
    try:
        command = closed / "bin" / "python"
        command.parent.mkdir()
        command.write_text("#!/bin/sh\nexit 0\n")
        command.chmod(0o755)
        job = make_job()
        job_id = local.submit(job, algorithm(str(command)), invocation(runner_s3, job.pk))
        events.wait(job_id, "SUCCEEDED")  # the runner wrote its result; the job failed
        stored = runner_s3.client.get_object(
            Bucket=runner_s3.bucket, Key=result_key(io_output_prefix(job.pk, 1))
        )
        message = json.loads(stored["Body"].read())["user_safe_error_message"]
        assert f"algorithm user 65534:65534: it may not enter {closed}." in message
        assert "GANTRY_ALGORITHM_USER" in message
    finally:
        local.shutdown(wait=True)
        shutil.rmtree(closed, ignore_errors=True)


@pytest.mark.slow
def test_events_have_the_keys_of_aws_events(backend, events, runner_s3):
    job = make_job()
    job_id = backend.submit(
        job,
        algorithm(sys.executable, "examples/algorithms/noop/main.py"),
        invocation(runner_s3, job.pk),
    )
    for status, name in (("RUNNING", "batch_running.json"), ("SUCCEEDED", "batch_succeeded.json")):
        local = events.wait(job_id, status)
        aws = json.loads((FIXTURES / name).read_text())
        assert keys(local) == keys(aws)
        assert keys(local["detail"]) == keys(aws["detail"]), status
        # Local jobs have no ECS task, role or log configuration; nothing beyond AWS's keys.
        assert keys(local["detail"]["container"]) <= keys(aws["detail"]["container"])
        for mine, theirs in zip(
            local["detail"]["attempts"], aws["detail"]["attempts"], strict=True
        ):
            assert keys(mine) == keys(theirs)
            assert keys(mine["container"]) <= keys(theirs["container"])


@pytest.mark.slow
def test_runner_failure_is_a_failed_job_with_its_exit_code(backend, events, runner_s3):
    job = make_job()
    missing = f"s3://{runner_s3.bucket}/io/{job.pk}/1/no-such-invocation.json"
    job_id = backend.submit(job, algorithm(sys.executable, "-c", "pass"), missing)
    failed = events.wait(job_id, "FAILED")["detail"]
    # Exit code 2: the runner could not read its task.
    assert failed["container"]["exitCode"] == 2
    assert failed["statusReason"] == REASON_EXITED
    state = backend.describe(job_id)
    assert state is not None and (state.status, state.retryable) == ("failed", False)


@pytest.mark.slow
def test_cancel_running_and_queued_jobs(backend, events, runner_s3):
    sleeper = algorithm(sys.executable, "-c", "import time; time.sleep(120)")
    first, second = make_job(), make_job()
    running = backend.submit(first, sleeper, invocation(runner_s3, first.pk))
    # One worker: the second job waits in the queue.
    queued = backend.submit(second, sleeper, invocation(runner_s3, second.pk))
    events.wait(running, "RUNNING")

    backend.cancel(queued)
    queued_failed = events.wait(queued, "FAILED")["detail"]
    assert queued_failed["statusReason"] == REASON_CANCELLED
    assert [e["detail"]["status"] for e in events.of(queued)] == ["FAILED"]

    started = time.monotonic()
    backend.cancel(running)
    failed = events.wait(running, "FAILED")["detail"]
    assert time.monotonic() - started < 30
    assert failed["statusReason"] == REASON_CANCELLED
    assert failed["container"]["exitCode"] != 0
    # Cancelling again, or an unknown job, changes nothing.
    backend.cancel(running)
    backend.cancel("unknown")
    assert [e["detail"]["status"] for e in events.of(running)] == ["RUNNING", "FAILED"]
    assert backend.describe("unknown") is None


@pytest.mark.slow
def test_time_limit_stops_the_runner(runner_s3, events):
    settings = Settings(
        region="us-east-1", endpoint_url=runner_s3.endpoint, compute_backend="local"
    )
    local = LocalBackend(settings, events, extra_env=runner_s3.env(), margin_seconds=0)
    try:
        job = make_job(time_limit=2)
        sleeper = algorithm(sys.executable, "-c", "import time; time.sleep(120)")
        job_id = local.submit(job, sleeper, invocation(runner_s3, job.pk))
        failed = events.wait(job_id, "FAILED")["detail"]
        assert failed["statusReason"] == REASON_TIMEOUT
        assert failed["timeout"] == {"attemptDurationSeconds": 2}
        assert failed["stoppedAt"] - failed["startedAt"] < 20_000
    finally:
        local.shutdown(wait=True)


@pytest.mark.slow
def test_shutdown_without_wait_fails_what_is_left(runner_s3, events):
    settings = Settings(
        region="us-east-1",
        endpoint_url=runner_s3.endpoint,
        compute_backend="local",
        local_workers=1,
    )
    local = LocalBackend(settings, events, extra_env=runner_s3.env())
    sleeper = algorithm(sys.executable, "-c", "import time; time.sleep(120)")
    jobs = [make_job(), make_job()]
    ids = [local.submit(job, sleeper, invocation(runner_s3, job.pk)) for job in jobs]
    events.wait(ids[0], "RUNNING")
    local.shutdown(wait=False)
    for job_id in ids:
        assert events.wait(job_id, "FAILED")["detail"]["statusReason"] == REASON_SHUTDOWN


@pytest.mark.slow
def test_an_image_runs_from_its_root_filesystem_with_its_configuration(runner_s3, events, tmp_path):
    import tempfile

    from gantry.oci import ImageStore, read_archive
    from tests.runner_rootfs import busybox_archive

    archive = busybox_archive(
        tmp_path / "image.tar",
        # Shell form, as `CMD echo ...` in a Dockerfile writes it.
        cmd=["/bin/sh", "-c", 'echo "{\\"uid\\": $(id -u), \\"say\\": \\"$SAY\\"}" > out.json'],
        env=["PATH=/bin", "SAY=from the image"],
        working_dir="/output",
    )
    store_root = Path(tempfile.mkdtemp(prefix="gantry-images-"))
    store_root.chmod(0o755)
    try:
        store = ImageStore(store_root)
        prepared = store.prepare(archive)
        assert read_archive(archive).config.digest == prepared.config.digest
        local = local_backend(runner_s3, events, image_store=store_root)
        try:
            job = make_job()
            # The record carries the image's own command, as registering an archive stores it.
            image = make_image(image=prepared.ref, entrypoint=None, command=prepared.config.cmd)
            job_id = local.submit(job, image, invocation(runner_s3, job.pk))
            events.wait(job_id, "SUCCEEDED")
        finally:
            local.shutdown(wait=False)
    finally:
        import shutil

        shutil.rmtree(store_root, ignore_errors=True)
    prefix = io_output_prefix(job.pk, 1)
    result = json.loads(
        runner_s3.client.get_object(Bucket=runner_s3.bucket, Key=result_key(prefix))["Body"].read()
    )
    assert result["return_code"] == 0, result["user_safe_error_message"]
    body = runner_s3.client.get_object(Bucket=runner_s3.bucket, Key=prefix + "out.json")["Body"]
    assert json.loads(body.read()) == {"uid": 1000, "say": "from the image"}


def test_an_unknown_image_reference_is_refused_at_submit(backend):
    from gantry.compute import SubmitError

    image = make_image(image="oci:sha256:" + "0" * 64)
    with pytest.raises(SubmitError, match="no image store"):
        backend.submit(make_job(), image, "s3://bucket/key")


@pytest.mark.slow
def test_an_invoke_image_is_kept_warm_for_further_jobs(runner_s3, events, tmp_path):
    import shutil
    import tempfile

    from gantry.oci import ImageStore
    from tests.integration.test_runner_invoke import HANDLER, SERVER
    from tests.runner_rootfs import WORKDIR, busybox_archive

    archive = busybox_archive(
        tmp_path / "invoke.tar",
        files={"server": SERVER, "handler": HANDLER},
        cmd=[f"{WORKDIR}/server"],
        env=["PATH=/bin"],
        labels={"org.grand-challenge.api-method": "invoke"},
    )
    store_root = Path(tempfile.mkdtemp(prefix="gantry-images-"))
    store_root.chmod(0o755)
    settings = Settings(
        region="us-east-1",
        endpoint_url=runner_s3.endpoint,
        bucket_name=runner_s3.bucket,
        compute_backend="local",
        local_workers=2,
    )
    local = LocalBackend(
        settings,
        events,
        extra_env=runner_s3.env(),
        image_store=store_root,
        invoke_idle_seconds=2,
    )
    try:
        prepared = ImageStore(store_root).prepare(archive)
        image = make_image(image=prepared.ref, entrypoint=None, command=prepared.config.cmd)

        def run_job(threshold: int) -> dict[str, Any]:
            job = make_job()
            key = f"io/{job.pk}/1/input/threshold.json"
            runner_s3.client.put_object(Bucket=runner_s3.bucket, Key=key, Body=b"%d" % threshold)
            uri = invocation(runner_s3, job.pk)
            body = json.loads(
                runner_s3.client.get_object(Bucket=runner_s3.bucket, Key=uri.split("/", 3)[3])[
                    "Body"
                ].read()
            )
            body["inputs"] = [
                {
                    "relative_path": "threshold.json",
                    "bucket_name": runner_s3.bucket,
                    "bucket_key": key,
                }
            ]
            runner_s3.client.put_object(
                Bucket=runner_s3.bucket, Key=uri.split("/", 3)[3], Body=json.dumps(body).encode()
            )
            return {"job": job, "id": local.submit(job, image, uri)}

        jobs = [run_job(n) for n in (1, 2, 3)]
        servers = []
        for n, submitted in zip((1, 2, 3), jobs, strict=True):
            events.wait(submitted["id"], "SUCCEEDED")
            prefix = io_output_prefix(submitted["job"].pk, 1)
            body = runner_s3.client.get_object(Bucket=runner_s3.bucket, Key=prefix + "result.json")
            output = json.loads(body["Body"].read())
            assert output["threshold"] == n
            servers.append(output["server"])
        # Three jobs, one start of the image's server.
        assert len(set(servers)) == 1
        assert local.warm_starts == 1
        # Idle past its time, the warm runner stops; the next job starts the server again.
        deadline = time.monotonic() + WAIT_SECONDS
        while local.warm_runners and time.monotonic() < deadline:
            time.sleep(0.2)
        assert local.warm_runners == 0
        again = run_job(4)
        events.wait(again["id"], "SUCCEEDED")
        assert local.warm_starts == 2
    finally:
        local.shutdown(wait=True)
        shutil.rmtree(store_root, ignore_errors=True)


@pytest.mark.slow
def test_a_deep_tree_the_algorithm_left_is_removed_with_its_job(runner_s3, events, tmp_path):
    # Deeper than a path may be and than Python recurses (shutil.rmtree does before 3.13).
    code = (
        "import os\n"
        "os.chdir(os.environ['OUTPUT_DIR'])\n"
        "for _ in range(3000):\n"
        "    os.mkdir('d')\n"
        "    os.chdir('d')\n"
    )
    local = local_backend(runner_s3, events, scratch_root=tmp_path)
    try:
        job = make_job()
        job_id = local.submit(
            job, algorithm(sys.executable, "-c", code), invocation(runner_s3, job.pk)
        )
        events.wait(job_id, "SUCCEEDED")
        local.shutdown(wait=True)
    finally:
        local.shutdown(wait=False)
        leftover = list(tmp_path.iterdir())
        for path in leftover:
            subprocess.run(["rm", "-rf", str(path)], check=True)

    assert leftover == []
