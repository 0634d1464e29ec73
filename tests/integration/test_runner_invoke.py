"""Invoke mode with a real server in the image: busybox ``nc`` answering /health and /invoke.

The image's command starts the server once (it reads its model and picks a random id); each
/invoke reads /input and writes /output. Failure paths use the shim's messages.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from batch_runner.server import MSG_NOT_HEALTHY, MSG_START_FAILED, ServerSettings
from batch_runner.serving import InvokeSession
from tests.runner_rootfs import WORKDIR, add_file, build_busybox_root, remove

SERVER = """#!/bin/sh
head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/server-id
echo "server $(cat /tmp/server-id) loaded model $(cat /opt/ml/model/weights.txt 2>/dev/null)"
exec nc -ll -p 4743 -e /srv/app/handler
"""
HANDLER = r"""#!/bin/sh
read -r method path proto
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
done
reply() { printf 'HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1"; }
case "$method $path" in
  "GET /health") reply "200 OK" ;;
  "POST /invoke")
    sleep "${INVOKE_SLEEP:-0}"
    printf '{"server": "%s", "threshold": %s, "model": "%s"}' "$(cat /tmp/server-id)" \
      "$(cat /input/threshold.json)" "$(cat /opt/ml/model/weights.txt 2>/dev/null)" \
      > /output/result.json
    reply "${INVOKE_STATUS:-201} Whatever" ;;
  *) reply "404 Not Found" ;;
esac
"""


@pytest.fixture(scope="module")
def rootfs():
    root = build_busybox_root()
    add_file(root, f"{WORKDIR}/server", SERVER)
    add_file(root, f"{WORKDIR}/handler", HANDLER)
    yield root
    remove(root)


def config(runner_job, rootfs: Path, env=(), command=None, **overrides):
    values = {
        "rootfs": rootfs,
        "image_env": ("PATH=/bin", *env),
        "algorithm_user": "algorithm",
        "workdir": Path(WORKDIR),
        "api_method": "invoke",
        "server": ServerSettings(start_timeout=30, call_timeout=2),
    }
    values.update(overrides)
    return runner_job.config(command or [f"{WORKDIR}/server"], **values)


def add_model(runner_job, text: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("weights.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text.encode()))
    body = buffer.getvalue()
    key = f"models/{runner_job.pk}.tar.gz"
    runner_job.s3.client.put_object(Bucket=runner_job.s3.bucket, Key=key, Body=body)
    model = {
        "bucket_name": runner_job.s3.bucket,
        "bucket_key": key,
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    original = runner_job.task
    runner_job.task = lambda: {**original(), "model": model}


def run(runner_job, rootfs, **kwargs):
    cfg = config(runner_job, rootfs, **kwargs)
    return runner_job.run(cfg.command, **{k: getattr(cfg, k) for k in _FIELDS})


_FIELDS = ("rootfs", "image_env", "algorithm_user", "workdir", "api_method", "server")


def test_invoke_mode_serves_a_task_with_its_model(runner_job, rootfs):
    add_model(runner_job, "w=7")
    runner_job.add_input("threshold.json", b"0.5")
    result, lines = run(runner_job, rootfs)
    assert result.return_code == 0, (result.user_safe_error_message, lines)
    output = json.loads(runner_job.read_output("result.json"))
    assert output["threshold"] == 0.5 and output["model"] == "w=7"
    assert any("loaded model w=7" in line for line in result.user_process_last_stdout_lines)


def test_one_server_start_serves_three_tasks(runner_job, rootfs):
    add_model(runner_job, "w=1")
    cfg = config(runner_job, rootfs)
    session = InvokeSession(cfg, client=runner_job.s3.client)
    servers = []
    try:
        for threshold in (1, 2, 3):
            runner_job.inputs.clear()
            runner_job.add_input("threshold.json", str(threshold).encode())
            result = session.run(runner_job.invocation(), runner_job.key)
            assert result.return_code == 0, result.user_safe_error_message
            output = json.loads(runner_job.read_output("result.json"))
            assert output["threshold"] == threshold
            servers.append(output["server"])
            assert runner_job.verified().pk == runner_job.pk
    finally:
        session.close()
    assert session.starts == 1
    assert len(set(servers)) == 1
    loaded = [line for line in result.user_process_last_stdout_lines if "loaded model" in line]
    assert len(loaded) == 1


def test_a_server_that_never_gets_healthy(runner_job, rootfs):
    server = ServerSettings(start_timeout=2, call_timeout=1)
    result, _ = run(runner_job, rootfs, command=["sleep", "600"], server=server)
    assert result.return_code != 0
    assert result.user_safe_error_message == MSG_NOT_HEALTHY.format(start=2, call=1)
    assert "pass the health check within 2 seconds" in result.user_safe_error_message


def test_a_server_that_exits_at_start(runner_job, rootfs):
    result, lines = run(runner_job, rootfs, command=["/bin/sh", "-c", "echo no model >&2; exit 3"])
    assert result.user_safe_error_message == MSG_START_FAILED
    assert any("the server exited with code 3" in line["log"] for line in lines)


def test_invoke_returning_500(runner_job, rootfs):
    runner_job.add_input("threshold.json", b"1")
    result, _ = run(runner_job, rootfs, env=("INVOKE_STATUS=500",))
    assert result.return_code == 1
    assert result.user_safe_error_message == "Invoke endpoint returned status 500, expected 201"
    assert runner_job.output_keys() == [".sagemaker_shim/inference_result.json"]


def test_time_limit_in_invoke_mode(runner_job, rootfs):
    runner_job.add_input("threshold.json", b"1")
    runner_job.timeout = 2
    result, _ = run(runner_job, rootfs, env=("INVOKE_SLEEP=30",))
    assert result.user_safe_error_message == "Time limit exceeded"
    assert result.return_code == 1


def test_the_root_user_is_refused_in_invoke_mode_too(runner_job, rootfs):
    result, _ = run(runner_job, rootfs, algorithm_user="root")
    assert result.return_code == 125
    assert result.user_safe_error_message.startswith("The algorithm image runs as root")
