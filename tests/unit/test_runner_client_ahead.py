"""The fork server builds the next job's S3 client ahead: a job must still sign with its own.

Every job forked from the server copies the client built there. A job whose environment
differs from the server's (other credentials, another endpoint) must build its own client
from its own environment; one that differs only in the runner's ``GANTRY_`` settings may use
the one built ahead. Each case runs in a forked child of a fresh interpreter, as a job does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server forks")

# Preloads as the fork server does, then forks one child per case. Each child
# takes on the case's environment, sends one request and reports the access key in the
# request's signature and the endpoint it went to (the request is stopped before it leaves).
SCRIPT = r"""
import json, os, sys
from batch_runner import forkserver, transfer

class Stop(Exception):
    pass

forkserver.preload()
for case in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.environ.update(case)
        seen = {}
        def stop(request, **_):
            seen["authorization"] = request.headers["Authorization"].decode()
            seen["url"] = request.url
            raise Stop()
        client = transfer.s3_client()
        client.meta.events.register("before-send.s3.*", stop)
        try:
            client.head_object(Bucket="bucket", Key="key")
        except Stop:
            pass
        os.write(write, json.dumps(seen).encode())
        os._exit(0)
    os.close(write)
    answer = b""
    while chunk := os.read(read, 65536):
        answer += chunk
    os.waitpid(pid, 0)
    print(answer.decode())
"""


def _requests_of_jobs(cases: list[dict[str, str]]) -> list[dict[str, str]]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "GANTRY_"))
    }
    env.update(
        AWS_ACCESS_KEY_ID="SERVERKEY",
        AWS_SECRET_ACCESS_KEY="server-secret",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_jobs_with_other_credentials_or_endpoint_each_sign_with_their_own() -> None:
    first, other_key, same_key, other_endpoint = _requests_of_jobs(
        [
            {"GANTRY_SIGNING_KEY_HEX": "01"},
            {"AWS_ACCESS_KEY_ID": "JOBKEYONE", "AWS_SECRET_ACCESS_KEY": "job-secret"},
            {"GANTRY_SIGNING_KEY_HEX": "02"},
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:10"},
        ]
    )
    assert "Credential=SERVERKEY/" in first["authorization"]
    assert first["url"].startswith("http://127.0.0.1:9/")
    assert "Credential=JOBKEYONE/" in other_key["authorization"]
    assert "Credential=SERVERKEY/" in same_key["authorization"]
    assert other_endpoint["url"].startswith("http://127.0.0.1:10/")
