"""cases/upload-sessions/: turn completed uploads into images (gcapi up to 0.13 starts jobs
on uploaded images this way)."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, shapes
from gantry.context import Context
from gantry.services import upload_sessions
from gantry.upload_sessions import UploadSessionCreate
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for

PATH = "cases/upload-sessions/"


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.post(f"/{PATH}", summary="Import uploaded images (status Queued, then Succeeded)")
    def create_session(body: Annotated[UploadSessionCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        urls = urls_for(ctx, router)
        return shapes.upload_session(upload_sessions.create(ctx, user, body, urls), urls), 201

    @router.get(f"/{PATH}", summary="List your upload sessions (admins: everyone's)")
    def list_sessions(limit: Limit = DEFAULT_LIMIT, offset: Offset = 0) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        if access.sees_everything(user):
            items, count = ctx.store.upload_sessions.page_all(offset=offset, limit=limit)
        else:
            sessions = ctx.store.upload_sessions
            items, count = sessions.page_for(user.username, offset=offset, limit=limit)
        results = [shapes.upload_session(s, urls) for s in items]
        return shapes.page(results, count, offset, limit, urls, PATH, {})

    @router.get(f"/{PATH}<pk>/", summary="Get an upload session")
    def get_session(pk: str) -> dict:
        user = current_user(router)
        session = upload_sessions.get_visible(ctx, user, pk)
        return shapes.upload_session(session, urls_for(ctx, router))

    return router
