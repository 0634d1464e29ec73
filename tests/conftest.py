"""Shared fixtures: AWS through moto (never hand-written fakes), a Gantry context, API calls."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gantry.local.stack import LocalStack

# No test may reach a real AWS account.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


def sqs_event(
    bodies: list[str], *, queue: str = "gantry-uploads", first: int = 0
) -> dict[str, Any]:
    """An SQS event for a Lambda handler, as the event source mapping delivers it."""
    return {
        "Records": [
            {
                "messageId": f"m{first + i}",
                "receiptHandle": f"r{first + i}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


@pytest.fixture
def aws() -> Iterator[None]:
    from moto import mock_aws

    from gantry.local import transactions

    # The embedded endpoint's TransactWriteItems (an item-by-item rollback) in every test, not
    # only in workers that happened to start a local stack first: moto's own copies each whole
    # table per transaction, so a test's time grew with the square of the jobs it made.
    transactions.install()
    with mock_aws():
        yield


@pytest.fixture
def settings():
    from gantry.settings import Settings

    return Settings(
        table_name="gantry-test",
        bucket_name="gantry-test-data",
        region="us-east-1",
        api_base_url="https://api.gantry.test/api/v1/",
        compute_backend="local",
    )


@pytest.fixture
def ctx(aws, settings):
    from gantry.context import Context
    from gantry.provision import ensure_data

    context = Context.create(settings)
    ensure_data(context.clients, settings)
    return context


def serve_local_stack(prefix: str, state_dir: Path) -> LocalStack:
    """The local stack with its HTTPS API on a free port and two workers; a table and bucket
    named for this caller, since stacks in one process share moto's state. Stop it after use."""
    from gantry.local.stack import LocalStack
    from gantry.settings import Settings

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    return LocalStack.start(
        Settings(table_name=name, bucket_name=name, local_workers=2),
        state_dir=state_dir,
        serve_api=True,
        api_port=0,
    )


class ApiClient:
    """Calls the API handler with API Gateway proxy events, as API Gateway would."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        token: str | bool | None = True,
        headers: dict[str, str] | None = None,
        raw_body: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        from gantry.local.client import LambdaContextStub, proxy_event

        all_headers = {"Host": "api.gantry.test", **(headers or {})}
        use = self.token if token is True else token
        if use:
            all_headers["Authorization"] = f"Bearer {use}"
        if body is not None or raw_body is not None:
            all_headers["Content-Type"] = "application/json"
        event = proxy_event(
            method,
            path,
            headers=all_headers,
            body=raw_body
            if raw_body is not None
            else (json.dumps(body) if body is not None else None),
            query=query,
            stage="prod",
        )
        response = self.app.resolve(event, LambdaContextStub())
        headers_out = {k: v for k, v in (response.get("headers") or {}).items()}
        for key, values in (response.get("multiValueHeaders") or {}).items():
            headers_out.setdefault(key, values[0])
        text = response.get("body") or ""
        try:
            payload = json.loads(text) if text else None
        except json.JSONDecodeError:
            payload = text
        return response["statusCode"], payload, headers_out

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("POST", path, body, **kwargs)

    def patch(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("PATCH", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("PUT", path, body, **kwargs)


@pytest.fixture
def api_app(ctx):
    from lambdas.api.app import create_app

    return create_app(ctx)


@pytest.fixture
def alice_token(ctx) -> str:
    return ctx.store.users.create_token("alice")


@pytest.fixture
def bob_token(ctx) -> str:
    return ctx.store.users.create_token("bob")


@pytest.fixture
def api(api_app, alice_token) -> ApiClient:
    return ApiClient(api_app, alice_token)


@pytest.fixture
def api_bob(api_app, bob_token) -> ApiClient:
    return ApiClient(api_app, bob_token)
