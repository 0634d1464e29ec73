"""A cold API request as Lambda serves it: a fresh interpreter imports the handler module
(init), then its ``handler`` answers one request (the first, which builds the Context, the
boto3 clients and the resolver, and imports the routers the request needs).

The AWS endpoint is moto's server in the benchmark's process, on 127.0.0.1: the child's CPU
time is its own work (botocore included), its wall time also the round trips to moto.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.figures import local_credentials
from tests.noop_jobs import job_body, register_algorithm, register_sockets

JOBS = 100  # at most this many jobs are created, one per run of POST algorithms/jobs/

# The child: init, then one request through the deployed entry point; it fails loudly if the
# request is not answered with success, so a figure is never that of an error.
CHILD = """
import json, os, sys
import lambdas.api.app as api

class LambdaContext:
    function_name = "gantry-api"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:gantry-api"
    memory_limit_in_mb = 1024
    aws_request_id = "cold"
    log_group_name = "/aws/lambda/gantry-api"
    log_stream_name = "cold"

    def get_remaining_time_in_millis(self):
        return 29_000

event = os.environ.get("BENCH_EVENT")
if event:
    import logging
    logging.disable(logging.INFO)  # one log line per answer: not what is measured
    response = api.handler(json.loads(event), LambdaContext())
    if response["statusCode"] >= 300:
        sys.exit(f"{response['statusCode']} {response['body']}")
"""

# The least any authenticated request does: import boto3, create a DynamoDB client, get an item.
REQUEST_FLOOR = """
import os, boto3
boto3.client("dynamodb", endpoint_url=os.environ["GANTRY_ENDPOINT_URL"]).get_item(
    TableName=os.environ["GANTRY_TABLE_NAME"], Key={"PK": {"S": "none"}, "SK": {"S": "none"}}
)
"""


@contextmanager
def served_endpoint() -> Iterator[dict[str, str]]:
    """moto's server with Gantry's table, bucket and uploads queue, a user, and an algorithm
    with an image that jobs can be created for; yields the environment a child needs (the
    deployed function's GANTRY_* variables pointing at it)."""
    import logging

    from moto.server import ThreadedMotoServer

    from gantry.context import Context
    from gantry.local.client import InProcessApi
    from gantry.provision import ensure_data
    from gantry.settings import Settings

    local_credentials()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        # moto's state outlives its server in this process: names of this run's own.
        run = uuid.uuid4().hex[:8]
        values: dict[str, Any] = {
            "table_name": f"cold-{run}",
            "bucket_name": f"cold-{run}",
            "region": "us-east-1",
            "endpoint_url": f"http://{host}:{port}",
            "compute_backend": "local",
            "max_active_jobs_per_user": JOBS,
            "max_active_jobs_per_algorithm": JOBS,
            "max_active_jobs": JOBS,
            "complimentary_editor_jobs": JOBS,
        }
        ctx = Context.create(Settings(**values))
        ensure_data(ctx.clients, ctx.settings)
        queue = ctx.clients.sqs.create_queue(QueueName=f"uploads-{run}")
        values["uploads_queue_url"] = queue["QueueUrl"]
        token = ctx.store.users.create_token("alice")
        api = InProcessApi(ctx, token)
        register_sockets(api.request)
        algorithm = register_algorithm(api.request, "Cold", {"image": "local", "command": ["run"]})
        env = {f"GANTRY_{name.upper()}": str(value) for name, value in values.items()}
        env.update(
            {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
            AWS_DEFAULT_REGION="us-east-1",
            BENCH_TOKEN=token,
            BENCH_ALGORITHM=algorithm["api_url"],
        )
        yield env
    finally:
        server.stop()


def _event(method: str, path: str, token: str, body: Any = None) -> str:
    from gantry.local.client import proxy_event

    headers = {"Host": "api.gantry.bench", "Authorization": f"BEARER {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    text = json.dumps(body) if body is not None else None
    return json.dumps(proxy_event(method, path, headers=headers, body=text, stage="prod"))


def first_requests(env: dict[str, str]) -> dict[str, str]:
    """The requests a cold start is measured with, by label: the event of each."""
    job = job_body(env["BENCH_ALGORITHM"], 1)
    token = env["BENCH_TOKEN"]
    return {
        "GET algorithms/": _event("GET", "algorithms/", token),
        "POST algorithms/jobs/": _event("POST", "algorithms/jobs/", token, job),
    }
