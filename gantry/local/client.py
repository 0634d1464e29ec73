"""Call the API handler in-process with API Gateway proxy events, as API Gateway would."""

from __future__ import annotations

import json
from typing import Any

from gantry.context import Context


class _LambdaContext:
    function_name = "gantry-api"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:gantry-api"
    aws_request_id = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


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
        from lambdas.api.app import normalise_path

        headers = {"Host": self.host, "Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        event = {
            "resource": "/api/v1/{proxy+}",
            "path": "/api/v1/" + path.lstrip("/"),
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": {k: str(v) for k, v in (query or {}).items()} or None,
            "multiValueQueryStringParameters": None,
            "pathParameters": {"proxy": path},
            "requestContext": {"stage": "local", "httpMethod": method, "path": path},
            "body": json.dumps(body) if body is not None else None,
            "isBase64Encoded": False,
        }
        response = self.app.resolve(normalise_path(event), _LambdaContext())
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
