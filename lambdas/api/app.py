"""The HTTP API: one Lambda behind API Gateway, grand-challenge's paths under /api/v1/.

Thin: authenticate, route, map errors to HTTP. Rules live in ``gantry``. The cold path
imports no imaging libraries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import import_module
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import ResponseBuilder
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

# Every request looks its caller's token up in DynamoDB, so boto3 and the users' store are
# imported at init (where provisioned concurrency or SnapStart take them off the request path);
# the routers, each with its services and models, and the other entities' stores are imported
# by the first request that may need them, and domain models are built when first used
# (``defer_build``).
from gantry import jsonlimits
from gantry.context import Context
from gantry.errors import GantryError, PayloadTooLarge
from gantry.store import users as _users_store  # noqa: F401
from gantry.users import parse_authorization

logger = Logger(service="gantry-api")
JSON = "application/json"
MAX_BODY_BYTES = 1024 * 1024
PUBLIC_PATHS = frozenset({"/gcapi/"})
PREFIX = "/api/v1"

# The routers (modules of lambdas.api.routers), in the order their routes are tried, each with
# the requests it answers: a request imports only the routers that may match it. A pattern is
# a path, segment by segment ("*" stands for any one segment, a final "**" for any number of
# further ones), after the methods it is limited to, if any ("GET PATCH algorithms/*": without
# them, POST algorithms/jobs/ would import the algorithms router too). tests/unit/
# test_api_routers.py checks that every route of a router lies within its patterns.
ROUTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gcapi", ("gcapi",)),
    ("uploads", ("uploads/**",)),
    ("upload_sessions", ("cases/upload-sessions/**",)),
    ("jobs", ("algorithms/jobs/**",)),
    ("images", ("cases/images/**",)),
    ("interfaces", ("components/interfaces/**",)),
    ("algorithm_models", ("algorithms/models/**", "POST algorithms/*/models")),
    ("algorithms", ("algorithms", "GET PATCH algorithms/*", "algorithms/images/**")),
    ("access_requests", ("algorithms/*/access-requests/**",)),
    ("users", ("users/**",)),
    ("tokens", ("tokens/**",)),
    ("archives", ("archives/**",)),
    ("archive_runs", ("algorithms/*/archive-runs/**",)),
)
ROUTER_NAMES = tuple(name for name, _ in ROUTERS)


def pattern_matches(pattern: str, method: str, segments: list[str]) -> bool:
    """Whether a request of this method for a path of these segments lies within ``pattern``
    (see ROUTERS)."""
    *methods, path = pattern.split(" ")
    if methods and method.upper() not in methods:
        return False
    parts = path.split("/")
    if parts[-1] == "**":
        parts = parts[:-1]
        segments = segments[: len(parts)]
    if len(segments) != len(parts):
        return False
    return all(p in ("*", s) for p, s in zip(parts, segments, strict=True))


def routers_for(method: str, path: str) -> tuple[str, ...]:
    """The routers that may answer a request for ``path`` (under /api/v1 or not)."""
    if path == PREFIX or path.startswith(PREFIX + "/"):
        path = path[len(PREFIX) :]
    segments = path.strip("/").split("/")
    return tuple(
        name
        for name, patterns in ROUTERS
        if any(pattern_matches(pattern, method, segments) for pattern in patterns)
    )


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


def _too_deep(body: str) -> str | None:
    """Why a JSON body nested too deeply is refused (the parser behind the request models
    raises RecursionError past some 1,000 levels, pydantic refuses to store a few hundred);
    None for any other body, malformed ones included (their validation says why)."""
    if body.count("[") + body.count("{") <= jsonlimits.MAX_DEPTH:
        return None
    try:
        jsonlimits.loads(body)
    except jsonlimits.TooDeep as error:
        return str(error)
    except ValueError:
        return None
    return None


class GantryResolver(APIGatewayRestResolver):
    """The REST resolver with the checks that must come before anything reads the body.

    Powertools runs request validation before every middleware, so a size or credentials
    check in a middleware came too late: an oversize body was parsed and answered 400, and
    an anonymous caller got validation details instead of 401. Both run here, first.
    """

    def __init__(self, ctx: Context) -> None:
        super().__init__(strip_prefixes=[PREFIX], enable_validation=True)
        self.ctx = ctx
        self._mounted: set[str] = set()
        # Each included route's router, by its place in ROUTERS.
        self._rank: dict[int, int] = {}

    def resolve(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        early = self._gate(event)
        if early is not None:
            proxy = self._to_proxy_event(dict(event))
            builder = ResponseBuilder[BaseProxyEvent](early, serializer=self._serializer)
            return builder.build(proxy, self._cors)
        self.mount(routers_for(str(event.get("httpMethod") or ""), str(event.get("path") or "")))
        return super().resolve(event, context)

    def mount(self, names: Iterable[str]) -> None:
        """Import and include these routers, those not included yet."""
        new = [name for name in names if name not in self._mounted]
        for name in new:
            module = import_module(f"lambdas.api.routers.{name}")
            self._mounted.add(name)
            self.include_router(module.build(self.ctx))
            rank = ROUTER_NAMES.index(name)
            for route in self._static_routes + self._dynamic_routes:
                self._rank.setdefault(id(route), rank)
        if new:
            # Powertools tries static routes first, then dynamic ones, each in the order they
            # were added: sorted back into the order of ROUTERS (a stable sort keeps each
            # router's own order), which router answers never depends on earlier requests.
            self._static_routes.sort(key=lambda route: self._rank[id(route)])
            self._dynamic_routes.sort(key=lambda route: self._rank[id(route)])

    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        # The document describes every route, mounted by a request yet or not.
        self.mount(ROUTER_NAMES)
        return super().get_openapi_schema(*args, **kwargs)

    def _gate(self, event: Mapping[str, Any]) -> Response | None:
        body = event.get("body") or ""
        if len(body) > MAX_BODY_BYTES:
            error = PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
            return _error(error.status_code, error.to_dict())
        headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
        token = parse_authorization(headers.get("authorization"))
        holder = self.ctx.store.users.token_holder(token) if token else None
        user, token_expires = holder if holder is not None else (None, None)
        path = str(event.get("path") or "")
        route_path = "/" + path.removeprefix("/api/v1").strip("/") + "/"
        if user is None and route_path not in PUBLIC_PATHS:
            message = "Invalid token." if token else "Authentication credentials were not provided."
            return _error(401, {"detail": message})
        deep = _too_deep(body)
        if deep is not None:
            return _error(400, {"detail": f"body: {deep}", "body": [deep]})
        # Cleared by resolve() when the request is done.
        self.append_context(user=user, token_expires=token_expires)
        return None


def create_app(ctx: Context) -> GantryResolver:
    app = GantryResolver(ctx)

    @app.exception_handler(GantryError)
    def gantry_error(error: GantryError) -> Response:
        response = _error(error.status_code, error.to_dict())
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            # gcapi (httpx) and well-behaved clients wait this long before trying again.
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    def request_invalid(error: RequestValidationError) -> Response:
        return _validation_response(list(error.errors()))

    @app.exception_handler(ValidationError)
    def model_invalid(error: ValidationError) -> Response:
        return _validation_response([dict(e) for e in error.errors()])

    @app.not_found
    def not_found(_: NotFoundError) -> Response:
        return _error(404, {"detail": "Not found."})

    return app


def normalise_path(event: dict[str, Any]) -> dict[str, Any]:
    """grand-challenge's collection paths end in '/'; accept them without it too."""
    path = event.get("path") or ""
    last = path.rsplit("/", 1)[-1]
    if path and not path.endswith("/") and "." not in last:
        event = {**event, "path": path + "/"}
    return event


_app: APIGatewayRestResolver | None = None


# Every log line of a request carries Lambda's request id and API Gateway's (correlation_id),
# which its access log and the client's x-amzn-requestid header show.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    global _app
    if _app is None:
        from lambdas.runtime import context

        # Creating a job answers at once; on_upload copies the inputs and submits.
        _app = create_app(context(provision_on_queue=True))
    response = _app.resolve(normalise_path(event), lambda_context)
    logger.info(
        "answered",
        method=event.get("httpMethod"),
        path=event.get("path"),
        status=response.get("statusCode"),
    )
    return response
