"""API figures: cold import cost of the API Lambda and handler latency against moto.

``python -m benchmarks api``. Latencies are in-process (moto's ``mock_aws``): they measure
Gantry's own work per request plus moto's, not network round trips to DynamoDB/S3.
"""

from __future__ import annotations

import json
import os
import resource
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

# The least any API on this stack imports: boto3, Powertools' resolver and one pydantic model.
FLOOR = (
    "import boto3, aws_lambda_powertools.event_handler\n"
    "from pydantic import BaseModel\n"
    "class Model(BaseModel):\n"
    "    x: int"
)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _import_times(
    commands: dict[str, list[str]], envs: dict[str, dict[str, str]] | None = None
) -> dict[str, tuple[float, float]]:
    """Median wall and CPU time (user + system) of each command, a fresh interpreter each
    run; the runs alternate between the commands so a busy machine slows each alike. CPU
    time varies far less than wall time on a shared machine. ``envs``: variables added for
    some of the commands, by name."""
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(IMPORT_RUNS):
        for name, command in commands.items():
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(envs or {}).get(name, {})}
            started, cpu_before = time.perf_counter(), _children_cpu()
            subprocess.run(command, check=True, cwd=REPO, env=env)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(_children_cpu() - cpu_before)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in commands}


def _print_rows(rows: list[tuple[str, str]], times: dict[str, tuple[float, float]]) -> None:
    base_wall, base_cpu = times[rows[0][1]]
    print(f"  {'':<50} {'wall':>8} {'/ boto3':>7} {'cpu':>8} {'/ boto3':>7}")
    for label, name in rows:
        wall, cpu = times[name]
        print(
            f"  {label:<50} {wall * 1000:5.0f} ms {wall / base_wall:7.2f} "
            f"{cpu * 1000:5.0f} ms {cpu / base_cpu:7.2f}"
        )


# What the API's import is made of, each measured alone: where the time over boto3 goes.
IMPORT_STAGES = (
    ("import boto3", "boto3"),
    ("  Powertools' event handler", "aws_lambda_powertools.event_handler"),
    ("  boto3 + Powertools + one pydantic model (floor)", FLOOR),
    ("  gantry.context (boto3, settings, store)", "gantry.context"),
    ("import lambdas.api.app", "lambdas.api.app"),
)


def _python(statement: str) -> list[str]:
    code = statement if "\n" in statement else f"import {statement}"
    return [sys.executable, "-c", code]


def print_import_figures() -> None:
    """The cold import cost of the API Lambda next to boto3's, their ratio (goal: 1.5), the
    parts it is made of, and a cold start as a request sees it (init + the first request);
    then the same for the deployed package."""
    import compileall

    from benchmarks import cold_request

    # The deployed asset ships bytecode (infra/packaging.py); with PYTHONDONTWRITEBYTECODE
    # set, a checkout would have none and every run would compile gantry/ as well.
    for package in ("gantry", "lambdas"):
        compileall.compile_dir(REPO / package, quiet=1)
    with cold_request.served_endpoint() as env:
        commands = {label: _python(module) for label, module in IMPORT_STAGES}
        envs = {REQUEST_FLOOR: env}
        commands[REQUEST_FLOOR] = _python(cold_request.REQUEST_FLOOR)
        for request, event in cold_request.first_requests(env).items():
            label = f"init + first request {request}"
            commands[label] = _python(cold_request.CHILD)
            envs[label] = {**env, "BENCH_EVENT": event}
        times = _import_times(commands, envs)
    rows = [(label, label) for label in commands]
    print(f"Import time in this checkout, fresh interpreter, median of {IMPORT_RUNS}")
    print("(includes the interpreter's start; gantry/ and lambdas/ compiled, as deployed;")
    print(" requests against moto's server in this process):")
    _print_rows(rows, times)
    boto3_wall, app_wall = times[rows[0][0]][0], times[API][0]
    floor_wall = times[IMPORT_STAGES[2][0]][0]
    print(f"  {'the API on top of boto3':<50} {(app_wall - boto3_wall) * 1000:5.0f} ms")
    print(f"  {'the API on top of the floor':<50} {(app_wall - floor_wall) * 1000:5.0f} ms")
    _print_ratio("ratio API import / boto3 (goal: at most 1.5)", times[API], times[rows[0][0]])
    _print_ratio("ratio floor / boto3", times[IMPORT_STAGES[2][0]], times[rows[0][0]])
    for label in commands:
        if label.startswith("init + "):
            _print_ratio(f"ratio {label} / boto3", times[label], times[rows[0][0]])
    print_package_figures()


API = "import lambdas.api.app"
REQUEST_FLOOR = "  boto3 + a DynamoDB client + one GetItem"


def _print_ratio(label: str, time: tuple[float, float], base: tuple[float, float]) -> None:
    print(f"  {label:<50} {time[0] / base[0]:14.2f} {time[1] / base[1]:15.2f}")


def print_package_figures() -> None:
    """Init of the deployed function: its handler module imported from the bundled asset,
    the Powertools layer and the runtime's boto3, as Lambda imports it; and init with the
    first request."""
    from benchmarks import cold_request, lambda_package

    print()
    print("Deployed API function (asset bundled as cdk synth does, for this machine's Python):")
    try:
        package = lambda_package.build()
    except Exception as error:  # pip needs PyPI; say why there is no figure
        print(f"  not measured: the asset could not be built ({error})")
        return
    sources_only = lambda_package.without_bytecode(package)
    boto3 = "import boto3 (runtime)"
    commands = {
        boto3: lambda_package.import_command(package, "boto3"),
        "import lambdas.api.app (asset with bytecode)": lambda_package.import_command(
            package, "lambdas.api.app"
        ),
        "  the same, asset without bytecode": lambda_package.import_command(
            sources_only, "lambdas.api.app"
        ),
    }
    envs = {}
    with cold_request.served_endpoint() as env:
        for request, event in cold_request.first_requests(env).items():
            label = f"init + first request {request}"
            commands[label] = lambda_package.python_command(package, cold_request.CHILD)
            envs[label] = {**env, "BENCH_EVENT": event}
        times = _import_times(commands, envs)
    _print_rows([(name, name) for name in commands], times)
    for label in commands:
        if label != boto3:
            _print_ratio(f"ratio {label.strip()} / boto3", times[label], times[boto3])


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
    from tests.noop_jobs import job_body, register_algorithm, register_sockets

    with mock_aws():
        settings = Settings(
            table_name="bench",
            bucket_name="bench-data",
            region="us-east-1",
            compute_backend="local",
            # The jobs never run: no quota or credit limit may refuse the later ones.
            max_active_jobs_per_user=ITERATIONS,
            max_active_jobs_per_algorithm=ITERATIONS,
            max_active_jobs=ITERATIONS,
            # The creator's jobs are editor jobs: free, so no credit limit stops them either
            # (raising monthly_credits would raise each job's price with it).
            complimentary_editor_jobs=ITERATIONS,
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

        register_sockets(call)
        algorithm = register_algorithm(call, "Bench", {"image": "local", "command": ["run"]})
        job = job_body(algorithm["api_url"], 1)
        created: list[float] = []
        fetched: list[float] = []
        for _ in range(ITERATIONS):
            started = time.perf_counter()
            created_job = call("POST", "algorithms/jobs/", job)
            created.append(time.perf_counter() - started)
            started = time.perf_counter()
            call("GET", f"algorithms/jobs/{created_job['pk']}/")
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
