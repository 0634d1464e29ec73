"""Properties of the sandbox, proved from inside it by real algorithms."""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator

import pytest

from batch_runner import sandbox

pytestmark = pytest.mark.skipif(
    not sandbox.probe().available, reason=f"no sandbox here: {sandbox.probe().reason}"
)


@pytest.fixture
def listening_server() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on the host's 127.0.0.1 that records what it receives."""
    received: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                received.append(connection.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def network_command(port: int, python: str = sys.executable) -> list[str]:
    return [python, "examples/algorithms/network/main.py", "127.0.0.1", str(port)]


def test_no_network_inside_the_sandbox(runner_job, listening_server):
    port, received = listening_server
    result, _ = runner_job.run(network_command(port))
    assert result.return_code == 0
    assert result.sandboxed is True
    report = json.loads(runner_job.read_output("network.json"))
    assert report["connected"] is False
    assert received == []


def test_the_same_algorithm_reaches_the_server_without_sandbox(runner_job, listening_server):
    # The control: proves the test above can fail.
    port, received = listening_server
    command = network_command(port, "/usr/bin/python3")
    command[1] = runner_job.reachable(command[1])
    result, _ = runner_job.run(command, sandbox="off")
    assert result.sandboxed is False
    assert json.loads(runner_job.read_output("network.json"))["connected"] is True
    assert received == [b"hello\n"]


def test_input_is_read_only_and_nothing_outside_output_persists(runner_job):
    runner_job.add_input("threshold.json", b"1.5")
    marker = f"gantry-sandbox-marker-{uuid.uuid4()}"
    code = f"""
    import json, os
    report = {{"uid": os.getuid(), "cwd": os.getcwd(), "pid": os.getpid()}}
    def attempt(name, path):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            report[name] = "written"
        except OSError as error:
            report[name] = type(error).__name__
    attempt("input_new", "/input/new.txt")
    attempt("input_existing", "/input/threshold.json")
    attempt("tmp", "/tmp/{marker}")
    attempt("home", os.path.join(os.environ["HOME"], "{marker}"))
    attempt("workdir", "{marker}")
    attempt("etc", "/etc/{marker}")
    report["input_listing"] = sorted(os.listdir("/input"))
    with open("/output/report.json", "w") as handle:
        json.dump(report, handle)
    """
    result, _ = runner_job.run([sys.executable, "-c", textwrap.dedent(code)])
    assert result.return_code == 0, result.user_process_last_stderr_lines
    report = json.loads(runner_job.read_output("report.json"))
    assert report["uid"] == 65534
    # A new PID namespace: bwrap's init is 1, the algorithm right after it.
    assert report["pid"] < 10
    assert report["input_new"] != "written"
    assert report["input_existing"] != "written"
    assert report["workdir"] != "written"
    assert report["etc"] != "written"
    # Private /tmp (and HOME inside it) works during the run ...
    assert report["tmp"] == "written"
    assert report["home"] == "written"
    # The runner adds nothing of its own to /input.
    assert report["input_listing"] == ["threshold.json"]
    # ... and is gone afterwards, on the host.
    assert not os.path.exists(f"/tmp/{marker}")
    assert (runner_job.input_root / "threshold.json").read_bytes() == b"1.5"
    assert sorted(os.listdir(runner_job.input_root)) == ["threshold.json"]
    assert not os.path.exists(os.path.join(str(runner_job.config([]).workdir), marker))


@pytest.mark.in_process
def test_required_sandbox_fails_cleanly_when_unavailable(runner_job, monkeypatch):
    from batch_runner.sandbox import Probe

    monkeypatch.setattr(sandbox, "probe", lambda: Probe(False, "not here"))
    result, _ = runner_job.run([sys.executable, "examples/algorithms/noop/main.py"])
    assert result.return_code == 125
    assert result.user_safe_error_message == "The job could not be run in a sandbox"
    assert runner_job.verified().pk == runner_job.pk


@pytest.mark.in_process
def test_auto_falls_back_and_says_so(runner_job, monkeypatch):
    from batch_runner.sandbox import Probe

    monkeypatch.setattr(sandbox, "probe", lambda: Probe(False, "not here"))
    result, lines = runner_job.run(
        ["/usr/bin/python3", runner_job.reachable("examples/algorithms/noop/main.py")],
        sandbox="auto",
    )
    assert result.return_code == 0
    assert result.sandboxed is False
    assert any(
        line["internal"] and "unsandboxed" in line["log"] and "isolation" in line["log"]
        for line in lines
    )
