"""Call the API handler in-process with API Gateway proxy events, as API Gateway would."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context


class LambdaContextStub(LambdaContext):
    """The attributes Powertools reads from a Lambda context, for in-process calls."""

    _function_name = "gantry-api"
    _memory_limit_in_mb = 512
    _invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:gantry-api"
    _aws_request_id = "local"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def proxy_event(
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    body: str | None = None,
    query: dict[str, Any] | None = None,
    stage: str = "local",
    base64_body: bool = False,
    source_ip: str = "",
) -> dict[str, Any]:
    """An API Gateway (REST, proxy integration) event for ``/api/v1/<path>``, trailing
    slash normalised as the deployed handler does. A query value may be a list (a repeated
    parameter); ``base64_body`` marks a binary body, as API Gateway sends one."""
    from lambdas.api.app import normalise_path

    multi = {
        k: [str(x) for x in v] if isinstance(v, list) else [str(v)]
        for k, v in (query or {}).items()
    }
    event = {
        "resource": "/api/v1/{proxy+}",
        "path": "/api/v1/" + path.lstrip("/"),
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": {"proxy": path},
        "stageVariables": None,
        "requestContext": {
            "stage": stage,
            "httpMethod": method,
            "path": path,
            "identity": {"sourceIp": source_ip},
        },
        "body": body,
        "isBase64Encoded": base64_body,
    }
    return normalise_path(event)


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.body = body


class InProcessApi:
    def __init__(self, ctx: Context, token: str, host: str = "127.0.0.1") -> None:
        from lambdas.api.app import create_app

        self.app = create_app(ctx)
        self.token = token
        self.host = host

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None) -> Any:
        headers = {"Host": self.host, "Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        event = proxy_event(
            method,
            path,
            headers=headers,
            body=json.dumps(body) if body is not None else None,
            query=query,
        )
        response = self.app.resolve(event, LambdaContextStub())
        status = response["statusCode"]
        text = response.get("body") or ""
        payload = json.loads(text) if text and text[:1] in "{[" else text
        if status >= 400:
            raise ApiError(status, payload)
        if status in (301, 302):
            headers_out = response.get("headers") or {}
            return (
                headers_out.get("Location")
                or (response.get("multiValueHeaders") or {}).get("Location", [None])[0]
            )
        return payload
