"""Per-request helpers shared by the routers: the caller, URLs, paging parameters."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
from aws_lambda_powertools.event_handler.openapi.params import Query

from gantry.context import Context
from gantry.errors import NotAuthenticated
from gantry.urls import Urls
from gantry.users import User

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

# Paging query parameters, validated (and documented in OpenAPI) by Powertools.
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0)]


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
