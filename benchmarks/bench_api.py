"""API figures: cold import cost of the API Lambda and handler latency against moto.

``python -m benchmarks api``. Latencies are in-process (moto's ``mock_aws``): they measure
Gantry's own work per request plus moto's, not network round trips to DynamoDB/S3.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.figures import local_credentials, percentile

REPO = Path(__file__).resolve().parents[1]
IMPORT_RUNS = 9
ITERATIONS = 300


def _import_seconds(modules: tuple[str, ...]) -> dict[str, float]:
    """Median wall time of ``python -c "import <module>"`` in a fresh interpreter, for each
    module; the runs alternate between the modules so a busy machine slows each alike."""
    times: dict[str, list[float]] = {module: [] for module in modules}
    for _ in range(IMPORT_RUNS):
        for module in modules:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", f"import {module}"],
                check=True,
                cwd=REPO,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
            times[module].append(time.perf_counter() - started)
    return {module: statistics.median(samples) for module, samples in times.items()}


# What the API's import is made of, each measured alone: where the time over boto3 goes.
IMPORT_STAGES = (
    ("import boto3", "boto3"),
    ("  Powertools' event handler", "aws_lambda_powertools.event_handler"),
    ("  pydantic-settings (gantry.settings)", "pydantic_settings"),
    ("  gantry.context (boto3, settings, store)", "gantry.context"),
    ("import lambdas.api.app", "lambdas.api.app"),
)


def print_import_figures() -> None:
    """The cold import cost of the API Lambda next to boto3's, their ratio (goal: 1.5), and
    the parts it is made of."""
    medians = _import_seconds(tuple(module for _, module in IMPORT_STAGES))
    boto3_import, app_import = medians["boto3"], medians["lambdas.api.app"]
    print(f"Import time, fresh interpreter, median of {IMPORT_RUNS} (includes interpreter start):")
    print(f"  {'':<42} {'time':>8} {'/ boto3':>8}")
    for label, module in IMPORT_STAGES:
        seconds = medians[module]
        print(f"  {label:<42} {seconds * 1000:5.0f} ms {seconds / boto3_import:8.2f}")
    print(f"  {'the API on top of boto3':<42} {(app_import - boto3_import) * 1000:5.0f} ms")
    print(f"  {'ratio API / boto3 (goal: at most 1.5)':<42} {app_import / boto3_import:8.2f}")


def _event(method: str, path: str, token: str, body: Any = None) -> dict[str, Any]:
    from gantry.local.client import proxy_event

    headers = {"Host": "api.gantry.bench", "Authorization": f"BEARER {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    text = json.dumps(body) if body is not None else None
    return proxy_event(method, path, headers=headers, body=text, stage="prod")


def _latencies() -> dict[str, list[float]]:
    local_credentials()
    from moto import mock_aws

    from gantry.context import Context
    from gantry.local.client import LambdaContextStub
    from gantry.provision import ensure_data
    from gantry.settings import Settings
    from lambdas.api.app import create_app

    with mock_aws():
        settings = Settings(
            table_name="bench",
            bucket_name="bench-data",
            region="us-east-1",
            compute_backend="local",
        )
        ctx = Context.create(settings)
        ensure_data(ctx.clients, settings)
        token = ctx.store.users.create_token("alice")
        app = create_app(ctx)
        lambda_context = LambdaContextStub()

        def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
            response = app.resolve(_event(method, path, token, body), lambda_context)
            if response["statusCode"] >= 300:
                raise RuntimeError(f"{method} {path}: {response['statusCode']} {response['body']}")
            return json.loads(response["body"])

        for title, path in (("Number", "number.json"), ("Result", "result.json")):
            call(
                "POST",
                "components/interfaces/",
                {"title": title, "kind": "Integer", "relative_path": path},
            )
        algorithm = call(
            "POST",
            "algorithms/",
            {"title": "Bench", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
        )
        call(
            "POST",
            "algorithms/images/",
            {"image": "local", "command": ["run"], "algorithm": algorithm["pk"]},
        )
        job_input = {
            "interface": "number",
            "value": 1,
            "file": None,
            "image": None,
            "upload_session": None,
            "user_upload": None,
            "user_uploads": None,
            "image_name": None,
        }
        created: list[float] = []
        fetched: list[float] = []
        for _ in range(ITERATIONS):
            started = time.perf_counter()
            job = call(
                "POST",
                "algorithms/jobs/",
                {"algorithm": algorithm["api_url"], "inputs": [job_input]},
            )
            created.append(time.perf_counter() - started)
            started = time.perf_counter()
            call("GET", f"algorithms/jobs/{job['pk']}/")
            fetched.append(time.perf_counter() - started)
        return {
            "create job (POST algorithms/jobs/)": created,
            "get job (GET algorithms/jobs/<pk>/)": fetched,
        }


def main() -> None:
    print_import_figures()
    print()
    print(f"Handler latency against moto (in-process), {ITERATIONS} requests each:")
    print(f"  {'request':<40} {'p50':>8} {'p99':>8} {'max':>8}")
    for name, samples in _latencies().items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        print(f"  {name:<40} {p50 * 1000:6.1f}ms {p99 * 1000:6.1f}ms {max(samples) * 1000:6.1f}ms")
        first, last = statistics.median(samples[:50]), statistics.median(samples[-50:])
        print(f"  {'  median of first / last 50':<40} {first * 1000:6.1f}ms {last * 1000:6.1f}ms")
    # moto copies every table on each TransactWriteItems and scans for each Query, so its
    # share of a create grows with the table; DynamoDB's does not.
    print("  (moto's cost per transaction grows with the table: compare first and last 50)")


if __name__ == "__main__":
    main()
