"""Fixtures of the integration tests (moto server endpoints, the job runner's S3)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from batch_runner.config import Limits, RunnerConfig
from batch_runner.invoke import run_invocation
from batch_runner.logs import JsonLog
from gantry.contract import InferenceResult, Invocation, new_signing_key, verify_result
from gantry.resources import SIGNATURE_METADATA_KEY, result_key
from tests.integration.runner_binary import run_binary, selected_binary

RUNNER_BUCKET = "runner-test-bucket"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "algorithms"
# Reachable by the unprivileged algorithm user without the sandbox's binds.
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class RunnerS3:
    endpoint: str
    client: Any
    bucket: str

    def env(self) -> dict[str, str]:
        """What a runner subprocess needs to reach this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With GANTRY_RUNNER_BINARY, tests that need the runner in this process skip."""
    binary = selected_binary()
    if binary is None:
        return
    skip = pytest.mark.skip(
        reason=f"patches the runner's own code; runs with the module, not {binary}"
    )
    for item in items:
        if item.get_closest_marker("in_process"):
            item.add_marker(skip)


@pytest.fixture
def runner_s3(runner_s3_server: RunnerS3) -> RunnerS3:
    """The runner's endpoint, with its bucket there for this test."""
    # moto keeps one in-process state: a mock_aws test that ran on this worker since the
    # server started has reset it, bucket included.
    with contextlib.suppress(runner_s3_server.client.exceptions.BucketAlreadyOwnedByYou):
        runner_s3_server.client.create_bucket(Bucket=runner_s3_server.bucket)
    return runner_s3_server


@pytest.fixture(scope="session")
def runner_s3_server() -> Iterator[RunnerS3]:
    """A moto server (real HTTP endpoint) with one bucket, for the job runner's tests."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=RUNNER_BUCKET)
    try:
        yield RunnerS3(endpoint, client, RUNNER_BUCKET)
    finally:
        server.stop()


@dataclass
class RunnerJob:
    s3: Any
    tmp: Path
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] | None = None
    timeout: int = 60
    pk: str = field(default_factory=lambda: str(uuid.uuid4()))
    key: str = field(default_factory=new_signing_key)

    @property
    def prefix(self) -> str:
        return f"io/{self.pk}/1/output/"

    def reachable(self, script: str) -> str:
        """A copy of the checkout's ``script`` that the algorithm user can read without the
        sandbox's mounts: the checkout itself may sit in a folder only its owner may enter (a
        fresh ``mktemp -d`` as root), where nobody cannot open it."""
        copy = self.tmp / "scripts" / script
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / script, copy)
        copy.chmod(0o644)
        for folder in copy.relative_to(self.tmp).parents:
            (self.tmp / folder).chmod(0o755)
        return str(copy)

    @property
    def input_root(self) -> Path:
        return self.tmp / "input"

    @property
    def output_root(self) -> Path:
        return self.tmp / "output"

    def add_input(
        self, relative_path: str, body: bytes, decompress: bool = False
    ) -> dict[str, Any]:
        key = f"io/{self.pk}/1/input/{relative_path}"
        self.s3.client.put_object(Bucket=self.s3.bucket, Key=key, Body=body)
        item = {
            "relative_path": relative_path,
            "bucket_name": self.s3.bucket,
            "bucket_key": key,
            "decompress": decompress,
        }
        self.inputs.append(item)
        return item

    def invocation(self) -> Invocation:
        return Invocation.model_validate(self.task())

    def task(self) -> dict[str, Any]:
        task: dict[str, Any] = {
            "pk": self.pk,
            "inputs": self.inputs,
            "output_bucket_name": self.s3.bucket,
            "output_prefix": self.prefix,
            "timeout": self.timeout,
        }
        if self.outputs is not None:
            task["outputs"] = self.outputs
        return task

    def config(self, command: list[str], **overrides: Any) -> RunnerConfig:
        values: dict[str, Any] = {
            "input_root": self.input_root,
            "output_root": self.output_root,
            "signing_key_hex": self.key,
            "command": command,
            "sandbox": "required",
            "workdir": REPO,
            "limits": Limits(kill_grace_seconds=1.0),
        }
        values.update(overrides)
        return RunnerConfig(**values)

    def run(self, command: list[str], **overrides: Any) -> tuple[InferenceResult, list[dict]]:
        binary = selected_binary()
        if binary is not None:
            # Through the static runner, configured as a backend configures it.
            done, lines = run_binary(
                binary, self.task(), self.config(command, **overrides), self.s3.env()
            )
            assert done.returncode == 0, f"runner exited {done.returncode}: {done.stderr}"
            return self.verified(), lines
        sink = io.StringIO()
        result = run_invocation(
            self.invocation(),
            self.config(command, **overrides),
            client=self.s3.client,
            log=JsonLog(stream=sink),
        )
        lines = [json.loads(line) for line in sink.getvalue().splitlines()]
        return result, lines

    def stored_result(self) -> tuple[bytes, str | None]:
        response = self.s3.client.get_object(Bucket=self.s3.bucket, Key=result_key(self.prefix))
        return response["Body"].read(), response["Metadata"].get(SIGNATURE_METADATA_KEY)

    def verified(self) -> InferenceResult:
        body, signature = self.stored_result()
        return verify_result(
            body=body, signature_hex=signature, key_hex=self.key, expected_pk=self.pk
        )

    def output_keys(self) -> list[str]:
        listing = self.s3.client.list_objects_v2(Bucket=self.s3.bucket, Prefix=self.prefix)
        return sorted(item["Key"].removeprefix(self.prefix) for item in listing.get("Contents", []))

    def read_output(self, relative: str) -> bytes:
        response = self.s3.client.get_object(Bucket=self.s3.bucket, Key=self.prefix + relative)
        return response["Body"].read()


@pytest.fixture
def runner_job(runner_s3: RunnerS3) -> Iterator[RunnerJob]:
    """A job of the runner: add inputs, run a command in-process, read the signed result.

    Its roots live in a world-traversable folder (pytest's are private to root), so the
    unprivileged algorithm user can reach them even without the sandbox's mounts.
    """
    root = Path(tempfile.mkdtemp(prefix="gantry-runner-test-"))
    root.chmod(0o755)
    try:
        yield RunnerJob(runner_s3, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def atomic_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's conditional writes atomic, as DynamoDB's are.

    moto checks a ConditionExpression and then writes without a lock, so two threads can
    both pass ``version = :v``; real DynamoDB serialises writes to an item (the embedded local
    endpoint serialises DynamoDB requests the same way, see gantry/local/endpoint.py). Without this,
    concurrency tests would measure moto's race, not the store's logic.
    """
    from moto.dynamodb.responses import DynamoHandler

    # The whole request, not just the backend's write: the response (ReturnValues) is built
    # from the item after the write, and must not see another thread's later write.
    lock = threading.RLock()
    original = DynamoHandler.call_action

    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(DynamoHandler, "call_action", locked)
