"""Pipeline figures: the platform's own time per job, end to end on the embedded local stack.

``python -m benchmarks pipeline``. Jobs are created through the API handler (in-process), run
by the local compute backend (the real runner as a subprocess, its sandbox, the default
worker count) and finished by the callback, all against the embedded AWS endpoint. The
algorithm is the no-op example plus the one output every algorithm must declare: the noop
example alone writes nothing, so its jobs end Failed ("Output file … was not produced")
before the outputs are parsed, which would leave that part out of the figures.

Sizes by environment variables: ``GANTRY_BENCH_PIPELINE_JOBS`` (sequential jobs, default 15)
and ``GANTRY_BENCH_PIPELINE_BURST`` (jobs created at once, default 30).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.figures import local_credentials, percentile

REPO = Path(__file__).resolve().parents[1]
NOOP = REPO / "examples" / "algorithms" / "noop"
POLL_SECONDS = 0.02
JOB_TIMEOUT_SECONDS = 120.0
# The noop example's "work", plus the single output the socket set requires.
ALGORITHM = (
    "import os, runpy; runpy.run_path('main.py'); "
    "open(os.path.join(os.environ['OUTPUT_DIR'], 'result.json'), 'w').write('0')"
)


def _input(value: int) -> dict[str, Any]:
    """One input as gcapi sends it: all eight keys."""
    return {
        "interface": "number",
        "value": value,
        "file": None,
        "image": None,
        "upload_session": None,
        "user_upload": None,
        "user_uploads": None,
        "image_name": None,
    }


@dataclass
class Timing:
    """One job's figures, in seconds."""

    create_call: float  # the POST, which provisions and submits the job before it returns
    client_wall: float  # from the POST until the client first sees the job final
    to_start: float  # created -> the runner process started (started_at)
    process: float  # the runner process, start to exit (interpreter and imports included)
    runner: float  # the runner's own time: staging, algorithm, uploads, result
    algorithm: float  # the algorithm process alone
    callback: float  # the runner process exited -> the job is Succeeded
    total: float  # created -> completed_at, from the job's record


def _seconds(start: str, end: str) -> float:
    from gantry import timeutil

    return (timeutil.parse_iso(end) - timeutil.parse_iso(start)).total_seconds()


def _wait(stack: Any, pks: list[str]) -> dict[str, tuple[Any, float]]:
    """Each job once final, with the perf_counter moment it was first seen final."""
    pending, done = set(pks), {}
    deadline = time.perf_counter() + JOB_TIMEOUT_SECONDS * max(1, len(pks))
    while pending:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(pending)} jobs did not finish")
        for pk in list(pending):
            job = stack.ctx.store.jobs.get(pk)
            if job.status.is_terminal:
                done[pk] = (job, time.perf_counter())
                pending.discard(pk)
        time.sleep(POLL_SECONDS)
    return done


def _timing(stack: Any, job: Any, posted: float, create_call: float, seen: float) -> Timing:
    from gantry import timeutil

    if job.status.label != "Succeeded":
        raise RuntimeError(f"job {job.pk} ended {job.status.label}: {job.error_message}")
    # The backend's record of the compute job: when the runner process started and exited.
    state = stack.ctx.compute.describe(job.compute_job_id)
    process = (state.stopped_at - state.started_at) / 1000
    exited = timeutil.parse_iso(job.completed_at).timestamp() - state.stopped_at / 1000
    return Timing(
        create_call=create_call,
        client_wall=seen - posted,
        to_start=_seconds(job.created, job.started_at),
        process=process,
        runner=job.invoke_duration or 0.0,
        algorithm=job.exec_duration or 0.0,
        callback=exited,
        total=_seconds(job.created, job.completed_at),
    )


def _setup(api: Any) -> str:
    for title, path in (("Number", "number.json"), ("Result", "result.json")):
        api.request(
            "POST",
            "components/interfaces/",
            {"title": title, "kind": "Integer", "relative_path": path},
        )
    algorithm = api.request(
        "POST",
        "algorithms/",
        {"title": "Noop", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    api.request(
        "POST",
        "algorithms/images/",
        {
            "algorithm": algorithm["api_url"],
            "image": "local",
            "command": [sys.executable, "-c", ALGORITHM],
            "workdir": str(NOOP),
        },
    )
    return str(algorithm["api_url"])


def _post(api: Any, algorithm_url: str, value: int) -> tuple[str, float, float]:
    posted = time.perf_counter()
    job = api.request(
        "POST", "algorithms/jobs/", {"algorithm": algorithm_url, "inputs": [_input(value)]}
    )
    return str(job["pk"]), posted, time.perf_counter() - posted


def _sequential(stack: Any, api: Any, algorithm_url: str, count: int) -> list[Timing]:
    timings = []
    for value in range(count):
        pk, posted, create_call = _post(api, algorithm_url, value)
        job, seen = _wait(stack, [pk])[pk]
        timings.append(_timing(stack, job, posted, create_call, seen))
    return timings


def _burst(stack: Any, api: Any, algorithm_url: str, count: int) -> tuple[list[Timing], float]:
    started = time.perf_counter()
    posts = [_post(api, algorithm_url, value) for value in range(count)]
    done = _wait(stack, [pk for pk, _, _ in posts])
    wall = max(seen for _, seen in done.values()) - started
    return [
        _timing(stack, done[pk][0], posted, call, done[pk][1]) for pk, posted, call in posts
    ], wall


def _row(label: str, samples: list[float]) -> str:
    median, p95 = statistics.median(samples), percentile(samples, 95)
    return f"  {label:<44} {median * 1000:8.0f} ms {p95 * 1000:8.0f} ms"


def _table(title: str, timings: list[Timing]) -> None:
    print(f"  {title:<44} {'median':>11} {'p95':>11}")
    print(_row("POST algorithms/jobs/ (provisions, submits)", [t.create_call for t in timings]))
    print(_row("created -> runner process started", [t.to_start for t in timings]))
    print(_row("runner process, start -> exit", [t.process for t in timings]))
    print(_row("  of which the runner's work", [t.runner for t in timings]))
    print(_row("  of which the algorithm", [t.algorithm for t in timings]))
    print(_row("runner exit -> Succeeded (callback)", [t.callback for t in timings]))
    print(_row("created -> Succeeded (job record)", [t.total for t in timings]))
    print(_row("client: POST -> sees Succeeded (polling)", [t.client_wall for t in timings]))


def main() -> None:
    local_credentials()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from gantry.local.client import InProcessApi
    from gantry.local.stack import LocalStack
    from gantry.settings import Settings

    sequential = int(os.environ.get("GANTRY_BENCH_PIPELINE_JOBS", "15"))
    burst = int(os.environ.get("GANTRY_BENCH_PIPELINE_BURST", "30"))
    stack = LocalStack.start(Settings(table_name="bench-pipeline", bucket_name="bench-pipeline"))
    try:
        api = InProcessApi(stack.ctx, stack.ctx.store.users.create_token("bench"))
        algorithm_url = _setup(api)
        _sequential(stack, api, algorithm_url, 1)  # warm-up: imports, first sandbox
        workers = stack.settings.local_workers
        print(
            "End to end on the local stack (embedded AWS endpoint, local backend, "
            f"{workers} workers, {os.cpu_count()} CPUs), noop algorithm writing its one output:"
        )
        one_by_one = _sequential(stack, api, algorithm_url, sequential)
        _table(f"{sequential} jobs, one at a time", one_by_one)
        timings, wall = _burst(stack, api, algorithm_url, burst)
        print()
        _table(f"burst of {burst} jobs", timings)
        print()
        print(
            f"  throughput: {burst / wall:.2f} jobs/s in the burst ({wall:.1f} s from the first "
            f"POST until all were seen Succeeded); one at a time "
            f"{sequential / sum(t.client_wall for t in one_by_one):.2f} jobs/s"
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
