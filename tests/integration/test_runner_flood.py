"""A flooding algorithm: output is streamed with bounded memory, tails kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.runner_binary import runner_argv

REPO = Path(__file__).resolve().parents[2]


def peak_rss_kib(command: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run ``command`` and poll its VmHWM (peak RSS, kept by the kernel) until it exits."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak = 0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    assert process.stderr is not None  # stderr=PIPE
    process.stderr.close()
    return process.returncode, peak


@pytest.mark.slow
def test_flood_is_streamed_with_bounded_memory(runner_s3, runner_job):
    command = [
        *runner_argv(),
        "invoke",
        "--task",
        json.dumps(runner_job.task()),
        "--",
        sys.executable,
        "examples/algorithms/flood-stdout/main.py",
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **runner_s3.env(),
        "GANTRY_SIGNING_KEY_HEX": runner_job.key,
        "GANTRY_INPUT_ROOT": str(runner_job.input_root),
        "GANTRY_OUTPUT_ROOT": str(runner_job.output_root),
    }
    code_small, peak_small = peak_rss_kib(command, env | {"FLOOD_MB": "2"})
    code_big, peak_big = peak_rss_kib(command, env | {"FLOOD_MB": "40"})
    assert (code_small, code_big) == (0, 0)
    assert peak_small > 10 * 1024
    # 20x the output (and 41 lines of 1 MiB) costs the runner no more than a few MiB.
    assert peak_big - peak_small < 8 * 1024, (peak_small, peak_big)
    result = runner_job.verified()
    assert result.return_code == 0
    tail = result.user_process_last_stdout_lines
    assert len(tail) == 100
    assert tail[-1] == "last line"
    assert tail[-2] == "nulbyte"
    assert all(len(line) <= 16 * 1024 for line in tail)
    assert result.user_process_last_stderr_lines == ["stderr tail"]


def test_long_lines_become_warnings(runner_job):
    code = "import sys; sys.stdout.write('a' * 100000 + '\\nshort\\n' + 'b' * 20000)"
    result, lines = runner_job.run([sys.executable, "-c", code])
    warning = "A log line was skipped as it was longer than 16384 bytes"
    assert result.user_process_last_stdout_lines == [warning, "short", warning]
    user = [line for line in lines if not line["internal"]]
    assert [(line["log"], line["level"]) for line in user] == [
        (warning, "WARNING"),
        ("short", "INFO"),
        (warning, "WARNING"),
    ]
