"""``gantry local up`` as a user runs it: a foreground process, stopped with Ctrl-C (SIGINT)
and started again on the same state directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.e2e.conftest import (
    ROOT,
    api_client,
    checked,
    make_image,
    register_algorithm,
    register_sockets,
    start_job,
    wait_for_job,
)
from tests.waits import WAIT_SECONDS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# Generous: on a busy machine a start (imports, recovery of the saved state) or a stop (the
# state saved, the runners ended) takes minutes; these bound a hang, not a slow machine.
START_TIMEOUT = 300.0
STOP_TIMEOUT = 300.0
GANTRY_LOCAL_UP = [sys.executable, "-m", "gantry.cli", "local", "up"]


class LocalUp:
    """One ``gantry local up --port 0 --no-live`` process on a state directory."""

    def __init__(self, state_dir: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.log_path = log
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.connection: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        connection_file = self.state_dir / "local.json"
        # A restart finds the previous run's file: wait for this run's.
        previous = connection_file.stat().st_mtime_ns if connection_file.exists() else None
        # The process must not pick up settings meant for this test process.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
        env["PYTHONUNBUFFERED"] = "1"  # its output is read while it runs
        env.update(self.extra_env)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*GANTRY_LOCAL_UP, "--state-dir", str(self.state_dir), "--port", "0", "--no-live"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process.poll() is None, f"gantry local up exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no API after {START_TIMEOUT} s:\n{self.output()}"
            if connection_file.exists() and connection_file.stat().st_mtime_ns != previous:
                connection = json.loads(connection_file.read_text())
                try:
                    httpx.get(connection["api_url"] + "gcapi/", verify=connection["ca_file"])
                except httpx.TransportError:
                    pass
                else:
                    self.connection = connection
                    return connection
            time.sleep(0.2)

    def stop(self) -> str:
        """Ctrl-C, then wait for the process to save its state and exit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"no exit {STOP_TIMEOUT} s after SIGINT:\n{self.output()}"
            ) from None
        assert code == 0, self.output()
        return self.output()

    def wait_for_output(self, text: str, timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert time.monotonic() < deadline, f"{text!r} not printed:\n{self.output()}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def http(self) -> httpx.Client:
        return api_client(self.connection["api_url"], self.connection["token"], self.ca_file)

    @property
    def ca_file(self) -> str:
        return str(self.connection["ca_file"])


@pytest.fixture
def local_up(tmp_path: Path) -> Any:
    runs: list[LocalUp] = []

    def run(env: dict[str, str] | None = None) -> LocalUp:
        up = LocalUp(tmp_path / "state", tmp_path / f"run-{len(runs)}.log", env)
        runs.append(up)
        return up

    yield run
    for up in runs:
        up.kill()


def upload(http: httpx.Client, ca_file: str, filename: str, data: bytes) -> str:
    """An upload through the multipart protocol gcapi uses: one part, then complete."""
    created = checked(http.post("uploads/", json={"filename": filename}))
    base = f"uploads/{created['pk']}/{created['s3_upload_id']}/"
    urls = checked(http.patch(base + "generate-presigned-urls/", json={"part_numbers": [1]}))
    put = httpx.put(urls["presigned_urls"]["1"], content=data, verify=ca_file)
    put.raise_for_status()
    parts = [{"ETag": put.headers["ETag"], "PartNumber": 1}]
    checked(http.patch(base + "complete-multipart-upload/", json={"parts": parts}))
    return str(created["pk"])


def test_state_survives_a_restart(local_up: Any, tmp_path: Path) -> None:
    import gcapi

    first = local_up()
    connection = first.start()
    token = connection["token"]
    with first.http() as http:
        register_sockets(http)
        threshold = register_algorithm(http, "threshold")
        sleep = register_algorithm(http, "sleep")
        client = gcapi.Client(base_url=connection["api_url"], token=token, verify=first.ca_file)
        image = make_image(tmp_path / "case.mha")
        job = client.start_algorithm_job(
            algorithm_slug=threshold["slug"],
            inputs=[gcapi.SocketValueSpec(socket_slug="ct-image", file=image)],
        )
        before = wait_for_job(http, job.pk)
        assert before["status"] == "Succeeded", before["error_message"]
        segmentation_url = next(o["image"] for o in before["outputs"] if o["image"])
        (file,) = checked(http.get(segmentation_url))["files"]
        segmentation = client(url=file["file"], follow_redirects=True).content
        seconds_upload = upload(http, first.ca_file, "seconds.json", b"0.25")
    first.stop()

    second = local_up()
    again = second.start()
    # The saved token is kept, and the old one is accepted by the restarted API.
    assert again["token"] == token
    with api_client(again["api_url"], token, again["ca_file"]) as http:
        slugs = {a["slug"] for a in checked(http.get("algorithms/"))["results"]}
        assert {threshold["slug"], sleep["slug"]} <= slugs

        after = checked(http.get(f"algorithms/jobs/{job.pk}/"))
        assert after["status"] == "Succeeded"
        assert [o["value"] for o in after["outputs"]] == [o["value"] for o in before["outputs"]]
        # The output image still downloads, byte for byte, from the new API address.
        client = gcapi.Client(base_url=again["api_url"], token=token, verify=again["ca_file"])
        image_url = next(o["image"] for o in after["outputs"] if o["image"])
        (file,) = client(url=image_url)["files"]
        assert file["file"].startswith(again["api_url"])
        assert client(url=file["file"], follow_redirects=True).content == segmentation

        # The upload is still there, and its bytes still feed a job.
        assert checked(http.get(f"uploads/{seconds_upload}/"))["status"] == "Completed"
        empty = dict.fromkeys(("value", "file", "image", "upload_session", "user_uploads"))
        body = {
            "algorithm": sleep["api_url"],
            "inputs": [
                {"interface": "seconds", **empty, "user_upload": seconds_upload, "image_name": None}
            ],
        }
        rerun = wait_for_job(http, checked(http.post("algorithms/jobs/", json=body))["pk"])
        assert rerun["status"] == "Succeeded", rerun["error_message"]
        assert [o["value"] for o in rerun["outputs"]] == [0.25]
    second.stop()


def test_job_running_at_shutdown_finishes_after_restart(local_up: Any) -> None:
    first = local_up()
    first.start()
    with first.http() as http:
        register_sockets(http)
        sleep = register_algorithm(http, "sleep")
        # Long enough to be stopped mid-run, short enough for a test.
        pk = start_job(http, sleep, {"seconds": 4.0})
        deadline = time.monotonic() + WAIT_SECONDS
        while (status := checked(http.get(f"algorithms/jobs/{pk}/"))["status"]) != "Executing":
            assert status not in ("Succeeded", "Failed"), status
            assert time.monotonic() < deadline, f"job never started: {status}"
            time.sleep(0.1)
    first.stop()

    second = local_up()
    second.start()
    second.wait_for_output("Resumed 1 unfinished job(s)")
    with second.http() as http:
        job = wait_for_job(http, pk)
        assert job["status"] == "Succeeded", job["error_message"]
        assert [o["value"] for o in job["outputs"]] == [4.0]
    second.stop()
