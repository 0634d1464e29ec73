"""An archive of small items run as one batch on the local stack: ``python -m benchmarks
archive``.

Starts the embedded local stack (HTTPS API, event dispatch, local compute backend with its
default worker count, the real runner), creates an archive of ``GANTRY_BENCH_ARCHIVE_ITEMS``
(default 1,000) items through the API, each one JSON value, and starts
``POST algorithms/<pk>/archive-runs/`` over it. Prints the time until the run has made every
job (the SQS fan-out, a page of 100 items per message) and until every job has ended, read
from the run's own progress (``GET …/archive-runs/<pk>/``).

The job is ``examples/algorithms/sleep`` with (nearly) 0 seconds, a distinct value per item
(items with the inputs of a job that succeeded are skipped). The active-job limits are
raised to the item count for this run, so the fan-out itself is measured; with the default
limits (16 per user) the run makes 16 jobs and makes each further one as a slot frees.
The algorithm's editors get a free job per item (credits are not what is measured).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_local import served_stack

REPO = Path(__file__).resolve().parents[1]
SLEEP_EXAMPLE = REPO / "examples" / "algorithms" / "sleep"
ITEMS = int(os.environ.get("GANTRY_BENCH_ARCHIVE_ITEMS", "1000"))
DEADLINE_SECONDS = float(os.environ.get("GANTRY_BENCH_ARCHIVE_DEADLINE", "3600"))


def _ok(response: Any) -> Any:
    if not response.is_success:
        raise RuntimeError(f"{response.request.method} {response.url}: {response.text}")
    return response.json()


def _setup(http: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    for title in ("Seconds", "Slept"):
        body = {"title": title, "kind": "Float", "relative_path": f"{title.lower()}.json"}
        _ok(http.post("components/interfaces/", json=body))
    algorithm = _ok(
        http.post(
            "algorithms/",
            json={
                "title": "Sleep archive bench",
                "interfaces": [{"inputs": ["seconds"], "outputs": ["slept"]}],
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
    archive = _ok(http.post("archives/", json={"title": "Bench cases"}))
    return algorithm, archive


def _fill(http: Any, archive: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def add(n: int) -> None:
        # Distinct inputs: items with the same inputs as a job that succeeded are skipped.
        value = {"interface": "seconds", "value": n * 1e-6}
        _ok(http.post("archives/items/", json={"archive": archive["pk"], "values": [value]}))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(add, range(ITEMS)))


def main() -> None:
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    limits = {
        "max_active_jobs_per_user": ITEMS,
        "max_active_jobs_per_algorithm": ITEMS,
        "max_active_jobs": ITEMS,
        # The run's creator edits the algorithm: as many free jobs as items (a job's price in
        # credits grows with monthly_credits, so raising those would not make room).
        "complimentary_editor_jobs": ITEMS,
    }
    with served_stack(180, **limits) as (stack, http):
        algorithm, archive = _setup(http)
        started = time.perf_counter()
        _fill(http, archive)
        fill_seconds = time.perf_counter() - started

        runs = f"algorithms/{algorithm['pk']}/archive-runs/"
        started = time.perf_counter()
        run = _ok(http.post(runs, json={"archive": archive["pk"]}))
        answered = time.perf_counter() - started
        created_at = None
        while True:
            seen = _ok(http.get(f"{runs}{run['pk']}/"))
            elapsed = time.perf_counter() - started
            if created_at is None and seen["state"] == "All jobs created":
                created_at = elapsed
            if seen["done"]:
                break
            if seen["state"] == "Stopped" or elapsed > DEADLINE_SECONDS:
                raise RuntimeError(f"run not done after {elapsed:.0f} s: {seen}")
            time.sleep(2.0)
        done_at = time.perf_counter() - started

    workers = stack.settings.local_workers
    print(f"Archive run on the local stack ({workers} workers, {os.cpu_count()} CPUs):")
    print(f"  {'measure':<52} {'value':>10}")
    print(f"  {f'{ITEMS} items added through the API (4 clients)':<52} {fill_seconds:9.2f}s")
    print(f"  {'POST archive-runs/ answered':<52} {answered * 1000:8.1f}ms")
    print(
        f"  {f'run started -> all {ITEMS} jobs created':<52} {created_at or done_at:9.2f}s"
        f"  ({ITEMS / (created_at or done_at):.1f} jobs/s)"
    )
    print(
        f"  {f'run started -> all {ITEMS} jobs done':<52} {done_at:9.2f}s"
        f"  ({ITEMS / done_at:.2f} jobs/s)"
    )
    print(f"  jobs per status: {seen['jobs']}; skipped {seen['skipped']}")
    print("  (job: examples/algorithms/sleep with 0 s; active-job limits raised to the item count)")


if __name__ == "__main__":
    main()
