"""The HTTP API: one Lambda behind API Gateway, grand-challenge's paths under /api/v1/.

Thin: authenticate, route, map errors to HTTP. Rules live in ``gantry``. The cold path
imports no imaging libraries.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from gantry.context import Context
from gantry.errors import GantryError, PayloadTooLarge
from gantry.settings import get_settings
from gantry.users import parse_authorization
from lambdas.api.routers import algorithms, gcapi, images, interfaces, jobs, uploads

logger = Logger(service="gantry-api")
JSON = "application/json"
MAX_BODY_BYTES = 1024 * 1024
PUBLIC_PATHS = frozenset({"/gcapi/"})


def _error(status: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status, content_type=JSON, body=json.dumps(body))


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    # Powertools prefixes body errors with ("body", ...); the client wants the field.
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _validation_response(errors: list[dict[str, Any]]) -> Response:
    fields: dict[str, list[str]] = {}
    for error in errors:
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        fields.setdefault(_location(error.get("loc", ())), []).append(message)
    detail = "; ".join(f"{name}: {', '.join(messages)}" for name, messages in fields.items())
    return _error(400, {"detail": detail, **fields})


def create_app(ctx: Context) -> APIGatewayRestResolver:
    app = APIGatewayRestResolver(strip_prefixes=["/api/v1"], enable_validation=True)

    def authenticate(app: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response:
        event = app.current_event
        body = event.body or ""
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
        headers = {k.lower(): v for k, v in (event.headers or {}).items()}
        token = parse_authorization(headers.get("authorization"))
        user = ctx.store.users.user_for_token(token) if token else None
        app.append_context(user=user)
        route_path = "/" + event.path.removeprefix("/api/v1").strip("/") + "/"
        if user is None and route_path not in PUBLIC_PATHS:
            message = "Invalid token." if token else "Authentication credentials were not provided."
            return _error(401, {"detail": message})
        return next_middleware(app)

    app.use(middlewares=[authenticate])

    @app.exception_handler(GantryError)
    def gantry_error(error: GantryError) -> Response:
        return _error(error.status_code, error.to_dict())

    @app.exception_handler(RequestValidationError)
    def request_invalid(error: RequestValidationError) -> Response:
        return _validation_response(list(error.errors()))

    @app.exception_handler(ValidationError)
    def model_invalid(error: ValidationError) -> Response:
        return _validation_response([dict(e) for e in error.errors()])

    @app.not_found
    def not_found(_: NotFoundError) -> Response:
        return _error(404, {"detail": "Not found."})

    for module in (gcapi, uploads, jobs, images, interfaces, algorithms):
        app.include_router(module.build(ctx))
    return app


def normalise_path(event: dict[str, Any]) -> dict[str, Any]:
    """grand-challenge's collection paths end in '/'; accept them without it too."""
    path = event.get("path") or ""
    last = path.rsplit("/", 1)[-1]
    if path and not path.endswith("/") and "." not in last:
        event = {**event, "path": path + "/"}
    return event


_app: APIGatewayRestResolver | None = None


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    global _app
    if _app is None:
        from gantry.pipeline import wiring

        _app = create_app(wiring.install(Context.create(get_settings())))
    return _app.resolve(normalise_path(event), context)
