"""Per-request helpers shared by the routers: the caller, URLs, paging parameters."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

from gantry.context import Context
from gantry.errors import NotAuthenticated, ValidationFailed
from gantry.urls import Urls
from gantry.users import User

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def current_user(router: BaseRouter) -> User:
    user = router.context.get("user")
    if user is None:
        raise NotAuthenticated("Authentication credentials were not provided.")
    return user


def urls_for(ctx: Context, router: BaseRouter) -> Urls:
    if ctx.settings.api_base_url:
        return Urls(ctx.settings.api_base_url)
    event = router.current_event
    headers = {k.lower(): v for k, v in (event.headers or {}).items()}
    host = headers.get("x-forwarded-host") or headers.get("host") or "localhost"
    stage = (event.raw_event.get("requestContext") or {}).get("stage")
    # On the default execute-api host the stage is part of the path; on a custom domain not.
    prefix = f"/{stage}" if stage and ".execute-api." in host else ""
    return Urls(f"https://{host}{prefix}/api/v1/")


def paging(router: BaseRouter) -> tuple[int, int]:
    params = router.current_event.query_string_parameters or {}
    return (
        _int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        _int_param(params, "offset", 0, 0, 10**9),
    )


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError) as error:
        raise ValidationFailed(f"{name} must be an integer", field=name) from error
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}", field=name)
    return value


def query(router: BaseRouter) -> dict[str, str]:
    return dict(router.current_event.query_string_parameters or {})
