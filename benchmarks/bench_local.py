"""The local platform end to end, through its HTTPS gateway: ``python -m benchmarks local``.

Starts the embedded local stack (moto endpoint, HTTPS API, event dispatch, local compute
backend with its default worker count, the real runner) and measures:

- API latency over TLS with one keep-alive client (GET algorithms/, GET a job);
- create → Succeeded of the smallest job that succeeds, one at a time and as a burst;
- 100 cases through the S3 drop folder, until every ``job.json`` result exists, and any
  job made beyond one per case.

The job is ``examples/algorithms/sleep`` with 0 seconds (start Python, read a JSON input,
write a JSON output): ``examples/algorithms/noop`` writes no output, so its jobs fail, and an
algorithm needs at least one output. Tunables: ``GANTRY_BENCH_LOCAL_REQUESTS``,
``…_SEQUENTIAL``, ``…_BURST``, ``…_DROPS``.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.figures import percentile

REPO = Path(__file__).resolve().parents[1]
SLEEP_EXAMPLE = REPO / "examples" / "algorithms" / "sleep"
REQUESTS = int(os.environ.get("GANTRY_BENCH_LOCAL_REQUESTS", "200"))
SEQUENTIAL = int(os.environ.get("GANTRY_BENCH_LOCAL_SEQUENTIAL", "8"))
BURST = int(os.environ.get("GANTRY_BENCH_LOCAL_BURST", "20"))
DROPS = int(os.environ.get("GANTRY_BENCH_LOCAL_DROPS", "100"))
TERMINAL = ("Succeeded", "Failed", "Cancelled")
# Fine enough not to dominate a ~1 s job, coarse enough not to load the API much.
POLL_SECONDS = 0.05
DEADLINE_SECONDS = 300.0


def _ok(response: Any) -> Any:
    if not response.is_success:
        raise RuntimeError(f"{response.request.method} {response.url}: {response.text}")
    return response.json()


def _setup(http: Any) -> dict[str, Any]:
    """The sleep example's sockets and algorithm, the drop folder's user among its users."""
    for title in ("Seconds", "Slept"):
        body = {"title": title, "kind": "Float", "relative_path": f"{title.lower()}.json"}
        _ok(http.post("components/interfaces/", json=body))
    algorithm = _ok(
        http.post(
            "algorithms/",
            json={
                "title": "Sleep bench",
                "interfaces": [{"inputs": ["seconds"], "outputs": ["slept"]}],
                "users": ["dropbox"],
            },
        )
    )
    _ok(
        http.post(
            "algorithms/images/",
            json={
                "algorithm": algorithm["api_url"],
                "image": "local",
                "command": [sys.executable, "main.py"],
                "workdir": str(SLEEP_EXAMPLE),
            },
        )
    )
    return algorithm


def _create(http: Any, algorithm: dict[str, Any]) -> str:
    empty = dict.fromkeys(
        ("file", "image", "upload_session", "user_upload", "user_uploads", "image_name")
    )
    body = {
        "algorithm": algorithm["api_url"],
        "inputs": [{"interface": "seconds", "value": 0, **empty}],
    }
    return str(_ok(http.post("algorithms/jobs/", json=body))["pk"])


def _wait(http: Any, pks: list[str]) -> None:
    """Until every job has ended; raises if one did not succeed. One request at a time, so
    the polling does not compete much with the jobs for the CPU."""
    started = time.perf_counter()
    pending = list(pks)
    while pending:
        job = _ok(http.get(f"algorithms/jobs/{pending[0]}/"))
        if job["status"] in TERMINAL:
            if job["status"] != "Succeeded":
                raise RuntimeError(f"job {job['pk']} {job['status']}: {job['error_message']}")
            pending.pop(0)
            continue
        if time.perf_counter() - started > DEADLINE_SECONDS:
            raise RuntimeError(f"{len(pending)} jobs unfinished after {DEADLINE_SECONDS} s")
        time.sleep(POLL_SECONDS)


def _latency(http: Any, path: str) -> tuple[list[float], bool]:
    """Latencies, and whether the server closed the connection after each request (then the
    client's keep-alive cannot help: every request pays a TCP and TLS handshake)."""
    closes = http.get(path).headers.get("connection", "").lower() == "close"
    samples = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        _ok(http.get(path))
        samples.append(time.perf_counter() - started)
    return samples, closes


def _drop_folder(stack: Any, algorithm: dict[str, Any]) -> tuple[float, int, int]:
    """(seconds until every case has job.json, jobs made beyond one per case, error.json)."""
    import boto3

    from gantry import resources

    s3 = boto3.client(
        "s3", endpoint_url=stack.settings.endpoint_url, region_name=stack.settings.region
    )
    bucket, slug = stack.settings.bucket_name, algorithm["slug"]
    results = f"{resources.PREFIX_DROPBOX_RESULTS}{slug}/"
    started = time.perf_counter()
    for case in range(DROPS):
        key = f"{resources.PREFIX_DROPBOX}{slug}/case-{case:03d}/seconds.json"
        s3.put_object(Bucket=bucket, Key=key, Body=b"0")
    while True:
        keys = [
            obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=results)
            for obj in page.get("Contents", [])
        ]
        finished = sum(key.endswith("/job.json") for key in keys)
        errors = sum(key.endswith("/error.json") for key in keys)
        if finished >= DROPS:
            break
        if time.perf_counter() - started > DEADLINE_SECONDS:
            raise RuntimeError(f"{finished}/{DROPS} drop-folder results after {DEADLINE_SECONDS} s")
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    time.sleep(1.0)  # room for a late duplicate to show up
    owner = stack.settings.dropbox_owner
    _, made = stack.ctx.store.jobs.page_for(owner, offset=0, limit=1, algorithm=algorithm["pk"])
    return elapsed, made - DROPS, errors


def _connections(stack: Any) -> int:
    """TCP connections the stack's endpoint and gateway have accepted."""
    return int(stack.endpoint.connections_opened + stack.gateway.connections_opened)


@contextlib.contextmanager
def served_stack(timeout: float, **settings: Any) -> Iterator[tuple[Any, Any]]:
    """A local stack serving the API on a free port, and an HTTPS client with a new user's
    token. The callback's metrics are never flushed in-process (every 100 values Powertools
    prints them to stdout), so stdout is kept until the stack has stopped: print figures after."""
    import httpx

    from gantry.local.stack import LocalStack
    from gantry.settings import Settings

    name = f"gantry-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as state, contextlib.redirect_stdout(io.StringIO()):
        stack = LocalStack.start(
            Settings(table_name=name, bucket_name=name, **settings),
            state_dir=Path(state),
            serve_api=True,
            api_port=0,
        )
        try:
            token = stack.ctx.store.users.create_token("bench")
            ca_file = str(Path(state) / "tls" / "ca.pem")
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(
                base_url=stack.api_url, verify=ca_file, headers=headers, timeout=timeout
            ) as http:
                yield stack, http
        finally:
            stack.stop()


def main() -> None:
    # The handlers' INFO lines and metrics would bury the figures.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    with served_stack(60) as (stack, http):
        algorithm = _setup(http)
        warm = _create(http, algorithm)
        _wait(http, [warm])

        latencies = {
            "GET algorithms/": _latency(http, "algorithms/"),
            "GET algorithms/jobs/<pk>/": _latency(http, f"algorithms/jobs/{warm}/"),
        }

        opened = _connections(stack)
        sequential = []
        for _ in range(SEQUENTIAL):
            started = time.perf_counter()
            pk = _create(http, algorithm)
            _wait(http, [pk])
            sequential.append(time.perf_counter() - started)

        sequential_connections = _connections(stack) - opened

        opened, started = _connections(stack), time.perf_counter()
        burst = [_create(http, algorithm) for _ in range(BURST)]
        _wait(http, burst)
        burst_seconds = time.perf_counter() - started
        burst_connections = _connections(stack) - opened

        drop_seconds, duplicates, drop_errors = _drop_folder(stack, algorithm)

    workers = stack.settings.local_workers
    print(f"Local stack through the HTTPS gateway ({workers} workers, {os.cpu_count()} CPUs):")
    print(f"  {'measure':<46} {'median':>10} {'p95':>10}")
    for label, (samples, closes) in latencies.items():
        print(
            f"  {label + f' ({REQUESTS}, keep-alive)':<46} "
            f"{statistics.median(samples) * 1000:8.1f}ms {percentile(samples, 95) * 1000:8.1f}ms"
            + ("  (server closes each connection)" if closes else "")
        )
    print(
        f"  {f'create -> Succeeded, sequential ({SEQUENTIAL})':<46} "
        f"{statistics.median(sequential):9.2f}s {percentile(sequential, 95):9.2f}s"
    )
    print(f"  {'measure':<46} {'value':>10}")
    print(
        f"  {f'burst of {BURST}: create -> all Succeeded':<46} {burst_seconds:9.2f}s"
        f"  ({BURST / burst_seconds:.2f} jobs/s)"
    )
    for label, count, jobs in (
        ("sequential", sequential_connections, SEQUENTIAL),
        ("burst", burst_connections, BURST),
    ):
        print(
            f"  {f'TCP connections opened per job, {label}':<46} {count / jobs:10.1f}"
            "  (endpoint and gateway; the client polls the job)"
        )
    print(
        f"  {f'drop folder, {DROPS} cases -> all job.json':<46} {drop_seconds:9.2f}s"
        f"  ({DROPS / drop_seconds:.2f} jobs/s)"
    )
    print(f"  {'drop folder: jobs beyond one per case':<46} {duplicates:>10}")
    print(f"  {'drop folder: error.json written':<46} {drop_errors:>10}")
    print("  (job: examples/algorithms/sleep with 0 s; noop writes no output and would fail)")


if __name__ == "__main__":
    main()
