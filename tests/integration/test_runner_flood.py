"""A flooding algorithm: output is streamed with bounded memory, tails kept."""

from __future__ import annotations

import sys
import tracemalloc

import pytest

from batch_runner.logs import JsonLog


class CountingSink:
    """Counts the log lines the runner writes without keeping them."""

    def __init__(self) -> None:
        self.lines = 0
        self.bytes = 0

    def write(self, text: str) -> None:
        self.lines += text.count("\n")
        self.bytes += len(text)

    def flush(self) -> None:
        pass


@pytest.mark.slow
def test_flood_is_streamed_with_bounded_memory(runner_job, monkeypatch):
    from batch_runner.invoke import run_invocation

    monkeypatch.setenv("FLOOD_MB", "20")
    sink = CountingSink()
    config = runner_job.config([sys.executable, "examples/algorithms/flood-stdout/main.py"])
    tracemalloc.start()
    try:
        result = run_invocation(
            runner_job.invocation(), config, client=runner_job.s3.client, log=JsonLog(stream=sink)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.return_code == 0
    # 20 MiB of short lines and 21 lines of 1 MiB went through ...
    assert sink.lines > 20 * 1024
    # ... while the runner held a few MiB at most.
    assert peak < 8 * 1024 * 1024, peak
    tail = result.user_process_last_stdout_lines
    assert len(tail) == 100
    assert tail[-1] == "last line"
    assert tail[-2] == "nulbyte"
    assert all(len(line) <= 16 * 1024 for line in tail)
    assert result.user_process_last_stderr_lines == ["stderr tail"]
    assert runner_job.verified().user_process_last_stdout_lines == tail


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
