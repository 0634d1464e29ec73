"""Memory, process and CPU limits on the algorithm (batch_runner.limits), with small figures.

The algorithms are the busybox image's own shell and awk (tests/runner_rootfs.py), run as
the image's non-root user in the sandbox, as the local backend runs images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batch_runner import limits
from gantry.failures import OUT_OF_MEMORY
from tests.runner_rootfs import WORKDIR, build_busybox_root, remove

# Doubles a string until something stops it: 32 MiB are reached in a few steps.
MEMORY_HOG = ["awk", 'BEGIN { s = "0123456789abcdef"; while (1) { s = s s } }']
# Asks for 40 background processes, then counts what it got in its own PID namespace.
MANY_PROCESSES = [
    "/bin/sh",
    "-c",
    "i=0; while [ $i -lt 40 ]; do (sleep 30 &) 2>/dev/null; i=$((i+1)); done; "
    "ls /proc | grep -c '^[0-9]' > /output/count.json",
]
# The bomb, started from a subshell, then a loop of shell builtins (no fork) that only the
# time limit ends. The looping shell forks once, before the bomb exists: were it to start the
# bomb itself, a fork it lost to the bomb's first processes (a busy machine) would end it early.
FORK_BOMB = ["/bin/sh", "-c", "(f() { f | f & }; f); while :; do :; done"]
cgroups_writable = os.access("/sys/fs/cgroup", os.W_OK) or os.geteuid() == 0


@pytest.fixture(scope="module")
def rootfs():
    root = build_busybox_root()
    yield root
    remove(root)


def run(runner_job, rootfs: Path, command: list[str], **overrides):
    values = {
        "rootfs": rootfs,
        "image_env": ("PATH=/bin",),
        "algorithm_user": "algorithm",
        "workdir": Path(WORKDIR),
    }
    values.update(overrides)
    return runner_job.run(command, **values)


def leftover_groups(lines: list[dict]) -> list[str]:
    """This run's groups (named in the runner's log) that still exist."""
    line = next(line["log"] for line in lines if line["log"].startswith("Resource limits"))
    if not line.endswith(")"):
        return []
    name = line.rsplit("(", 1)[1].rstrip(")")
    found = []
    for hierarchy in ("memory", "pids", "cpu", "", "unified"):
        folder = Path("/sys/fs/cgroup") / hierarchy
        if (folder / name).exists():
            found.append(str(folder / name))
    return found


def test_over_its_memory_limit_the_job_fails_with_the_memory_message(runner_job, rootfs):
    result, lines = run(runner_job, rootfs, MEMORY_HOG, memory_limit_mb=32)
    assert result.return_code == 137, (result.user_safe_error_message, lines)
    assert result.user_safe_error_message == OUT_OF_MEMORY
    mechanism = next(line["log"] for line in lines if line["log"].startswith("Resource limits"))
    if cgroups_writable:
        assert "enforced by cgroup v" in mechanism
    assert leftover_groups(lines) == []
    # The control: the same image with enough memory for a small string succeeds.
    small = ["awk", 'BEGIN { s = "0123456789abcdef"; for (i = 0; i < 10; i++) s = s s }']
    result, _ = run(runner_job, rootfs, small, memory_limit_mb=32)
    assert result.return_code == 0, result.user_safe_error_message


def test_processes_are_bounded(runner_job, rootfs):
    result, _ = run(runner_job, rootfs, MANY_PROCESSES, pids_limit=12)
    # The shell's 12th fork fails, and the shell says so. Whether its last words are that
    # or a later command's (run when short-lived subshells freed a pid) depends on timing.
    assert result.return_code != 0
    assert result.user_safe_error_message
    assert "/bin/sh: can't fork: Resource temporarily unavailable" in (
        result.user_process_last_stderr_lines
    )
    # The control: without the small limit all 40 start.
    result, _ = run(runner_job, rootfs, MANY_PROCESSES)
    assert result.return_code == 0
    assert int(runner_job.read_output("count.json")) >= 40


def test_a_fork_bomb_is_bounded_and_ends_with_the_time_limit(runner_job, rootfs):
    runner_job.timeout = 3
    result, lines = run(runner_job, rootfs, FORK_BOMB, pids_limit=24)
    assert result.user_safe_error_message == "Time limit exceeded"
    assert leftover_groups(lines) == []


@pytest.mark.in_process
def test_without_cgroups_rlimits_still_bound_memory(runner_job, rootfs, monkeypatch):
    monkeypatch.setattr(limits, "_try_v2", lambda *_: None)
    monkeypatch.setattr(limits, "_try_v1", lambda *_: None)
    result, lines = run(runner_job, rootfs, MEMORY_HOG, memory_limit_mb=32)
    assert any(line["log"].endswith("enforced by rlimit") for line in lines)
    assert leftover_groups(lines) == []
    # The allocation fails inside the algorithm instead of an OOM kill.
    assert result.return_code != 0
    assert result.user_process_last_stderr_lines


def test_memory_limit_reaches_the_runner_from_its_environment():
    from batch_runner.config import RunnerConfig
    from gantry.resources import ENV_MEMORY_LIMIT_MB

    config = RunnerConfig.from_env({ENV_MEMORY_LIMIT_MB: "4096"}, command=["true"])
    assert config.resource_limits == limits.ResourceLimits(4096 * 1024**2, 2.0, 512)
    config = RunnerConfig.from_env({"GANTRY_PIDS_LIMIT": "none"}, command=["true"])
    assert config.resource_limits.pids is None and config.resource_limits.memory_bytes is None
    with pytest.raises(ValueError, match="GANTRY_MEMORY_LIMIT_MB must be a positive number"):
        RunnerConfig.from_env({ENV_MEMORY_LIMIT_MB: "-1"}, command=["true"])
    assert json.dumps(config.resource_limits.cpus) == "2.0"
