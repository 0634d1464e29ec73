"""tokens/ (a Gantry extension): list, create (with an expiry) and revoke API tokens.

Users manage their own; admins anyone's (``?user=`` / ``"user"``) and list everyone's. A
token's secret is shown once, in the answer that creates it; only its hash is stored.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from pydantic import BaseModel, ConfigDict, Field

from gantry import access, shapes, timeutil
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound, PermissionDenied, ValidationFailed
from gantry.users import User
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for

MAX_EXPIRY_DAYS = 3650


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user: str | None = Field(
        default=None,
        min_length=1,
        max_length=150,
        pattern=r"^[A-Za-z0-9_.@+-]+$",
        description="whose token (admins only; default: yours)",
    )
    expires_in_days: int | None = Field(
        default=None, ge=1, le=MAX_EXPIRY_DAYS, description="none: it never expires"
    )


def _owner(caller: User, named: str | None) -> str:
    owner = named or caller.username
    if not access.token(caller, Action.CHANGE, owner):
        raise PermissionDenied("Only admins manage other users' tokens")
    return owner


def _within_callers_token(expires: datetime | None, limit: datetime | None) -> None:
    """A token expires no later than the token that creates it: a short-lived token, leaked,
    must not become one that never expires."""
    if limit is None or (expires is not None and expires <= limit):
        return
    days = (limit - timeutil.now()).days
    allowed = (
        f"ask for at most {days} day{'s' if days != 1 else ''} (expires_in_days)"
        if days >= 1
        else "it expires in less than a day, so it cannot create tokens"
    )
    raise ValidationFailed(
        f"The token of this request expires at {timeutil.iso(limit)}; a token it creates must "
        f"expire by then: {allowed}",
        field="expires_in_days",
    )


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get("/tokens/", summary="List your API tokens (admins: everyone's, or ?user=)")
    def list_tokens(
        user: Annotated[str | None, Query(max_length=150)] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        caller = current_user(router)
        if user is None and access.sees_everything(caller):
            tokens, count = ctx.store.users.tokens_page_all(offset=offset, limit=limit)
        else:
            owner = _owner(caller, user)
            tokens, count = ctx.store.users.tokens_page(owner, offset=offset, limit=limit)
        urls = urls_for(ctx, router)
        results = [t.model_dump() for t in tokens]
        return shapes.page(results, count, offset, limit, urls, "tokens/", {"user": user})

    @router.post("/tokens/", summary="Create an API token (shown once)")
    def create_token(body: Annotated[TokenCreate, Body()]) -> tuple[dict, int]:
        caller = current_user(router)
        owner = _owner(caller, body.user)
        expires = (
            timeutil.now() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
        )
        _within_callers_token(expires, router.context.get("token_expires"))
        token, info = ctx.store.users.issue_token(owner, expires=expires)
        return {**info.model_dump(), "token": token}, 201

    # No return annotation: Powertools cannot describe a Response in the OpenAPI document.
    @router.delete("/tokens/<pk>/", summary="Revoke an API token")
    def revoke_token(pk: str):
        caller = current_user(router)
        info = ctx.store.users.get_token(pk)
        if not access.token(caller, Action.DELETE, info.user):
            raise NotFound(f"Token {pk} not found")
        ctx.store.users.revoke_token(pk)
        return Response(status_code=204, content_type="application/json", body="")

    return router
