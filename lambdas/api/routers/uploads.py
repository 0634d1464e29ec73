"""uploads/: multipart uploads with presigned part URLs (gcapi's upload protocol)."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, shapes
from gantry.context import Context
from gantry.services import uploads
from gantry.uploads import CompleteUpload, PartNumbers, UploadCreate
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for

BASE = "/uploads/<pk>/<s3_upload_id>"


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.post("/uploads/", summary="Start an upload")
    def create_upload(body: Annotated[UploadCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        return shapes.upload(uploads.create(ctx, user, body), urls_for(ctx, router)), 201

    @router.get("/uploads/", summary="List your uploads (admins: everyone's)")
    def list_uploads(limit: Limit = DEFAULT_LIMIT, offset: Offset = 0) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        if access.sees_everything(user):
            items, count = ctx.store.uploads.page_all(offset=offset, limit=limit)
        else:
            items, count = ctx.store.uploads.page_for(user.username, offset=offset, limit=limit)
        results = [shapes.upload(u, urls) for u in items]
        return shapes.page(results, count, offset, limit, urls, "uploads/", {})

    @router.get("/uploads/<pk>/", summary="Get an upload")
    def get_upload(pk: str) -> dict:
        user = current_user(router)
        return shapes.upload(uploads.get_own(ctx, user, pk), urls_for(ctx, router))

    @router.patch(f"{BASE}/generate-presigned-urls/", summary="Presigned URLs for parts")
    def presign(pk: str, s3_upload_id: str, body: Annotated[PartNumbers, Body()]) -> dict:
        user = current_user(router)
        upload = uploads.get_own(ctx, user, pk, s3_upload_id)
        urls = uploads.presigned_urls(ctx, upload, body)
        return shapes.upload(upload, urls_for(ctx, router), presigned_urls=urls)

    @router.patch(f"{BASE}/complete-multipart-upload/", summary="Complete an upload")
    def complete(pk: str, s3_upload_id: str, body: Annotated[CompleteUpload, Body()]) -> dict:
        user = current_user(router)
        upload = uploads.get_own(ctx, user, pk, s3_upload_id)
        return shapes.upload(uploads.complete(ctx, upload, body), urls_for(ctx, router))

    @router.patch(f"{BASE}/abort-multipart-upload/", summary="Abort an upload")
    def abort(pk: str, s3_upload_id: str) -> dict:
        user = current_user(router)
        upload = uploads.get_own(ctx, user, pk, s3_upload_id)
        return shapes.upload(uploads.abort(ctx, upload), urls_for(ctx, router))

    @router.get(f"{BASE}/list-parts/", summary="List the uploaded parts")
    def parts(pk: str, s3_upload_id: str) -> dict:
        user = current_user(router)
        upload = uploads.get_own(ctx, user, pk, s3_upload_id)
        urls = urls_for(ctx, router)
        return shapes.upload(upload, urls, parts=uploads.list_parts(ctx, upload))

    return router
