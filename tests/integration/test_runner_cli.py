"""``python -m batch_runner`` (or the static runner, see runner_binary.py) as the compute backend
runs it: a subprocess with env only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch_runner.config import encode_b64j
from tests.integration.runner_binary import runner_argv
from tests.waits import WAIT_SECONDS

REPO = Path(__file__).resolve().parents[2]


def runner(
    args: list[str], env: dict[str, str], timeout: float = WAIT_SECONDS
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*runner_argv(), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli_env(runner_s3, runner_job) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **runner_s3.env(),
        "GANTRY_SIGNING_KEY_HEX": runner_job.key,
        "GANTRY_INPUT_ROOT": str(runner_job.input_root),
        "GANTRY_OUTPUT_ROOT": str(runner_job.output_root),
        "GANTRY_KILL_GRACE_SECONDS": "1",
    }
    return env


@pytest.mark.parametrize(
    "args",
    [
        ["invoke", "--task", "not json", "--", "true"],
        ["invoke", "--task", json.dumps({"pk": "x"}), "--", "true"],
        [
            "invoke",
            "--task",
            json.dumps(
                {
                    "pk": "x",
                    "inputs": [
                        {"relative_path": "../etc/x", "bucket_name": "bucket", "bucket_key": "k"}
                    ],
                    "output_bucket_name": "bucket",
                    "output_prefix": "p/",
                    "timeout": 10,
                }
            ),
            "--",
            "true",
        ],
        ["invoke", "--", "true"],
        ["invoke", "--file", "https://example.com/task.json", "--", "true"],
    ],
)
def test_bad_task_exits_2_with_usage(cli_env, args):
    done = runner(args, cli_env)
    assert done.returncode == 2, done.stderr
    assert "usage:" in done.stderr


def test_missing_signing_key_exits_2(cli_env, runner_job):
    cli_env.pop("GANTRY_SIGNING_KEY_HEX")
    done = runner(["invoke", "--task", json.dumps(runner_job.task()), "--", "true"], cli_env)
    assert done.returncode == 2
    assert "GANTRY_SIGNING_KEY_HEX" in done.stderr


def test_task_from_s3_and_command_from_env(cli_env, runner_s3, runner_job):
    runner_job.add_input("threshold.json", b"0.5")
    runner_job.add_input(
        "bounding-box.json",
        json.dumps(
            {
                "type": "2D bounding box",
                "corners": [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]],
                "version": {"major": 1, "minor": 0},
            }
        ).encode(),
    )
    task_key = f"io/{runner_job.pk}/1/invocation.json"
    runner_s3.client.put_object(
        Bucket=runner_s3.bucket, Key=task_key, Body=json.dumps(runner_job.task()).encode()
    )
    cli_env["GANTRY_ALGORITHM_ENTRYPOINT_B64J"] = encode_b64j([sys.executable])
    cli_env["GANTRY_ALGORITHM_CMD_B64J"] = encode_b64j(["examples/algorithms/json-io/main.py"])
    done = runner(["invoke", "--file", f"s3://{runner_s3.bucket}/{task_key}"], cli_env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(set(line) == {"log", "level", "source", "internal", "task"} for line in lines)
    assert all(line["task"] == runner_job.pk for line in lines)
    result = runner_job.verified()
    assert result.return_code == 0
    assert sorted(o.relative_path for o in result.outputs) == [
        "score.json",
        "shifted-bounding-box.json",
    ]


def test_result_write_failure_exits_1(cli_env, runner_job):
    task = runner_job.task() | {"output_bucket_name": "no-such-bucket-anywhere"}
    done = runner(["invoke", "--task", json.dumps(task), "--", sys.executable, "-c", "0"], cli_env)
    assert done.returncode == 1
    assert "The result could not be written" in done.stdout
