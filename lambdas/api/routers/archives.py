"""archives/ and archives/items/: grand-challenge's archives, plus creating and changing them."""

from __future__ import annotations

import posixpath
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import shapes
from gantry.archives import ArchiveFields, ArchiveItem, ArchiveUpdate
from gantry.context import Context
from gantry.errors import NotFound
from gantry.services import archives
from gantry.services.archives import ArchiveItemCreate, ArchiveItemUpdate
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for
from lambdas.api.files import redirect_to_object

Text = Annotated[str | None, Query(max_length=1024)]


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    def render_items(items: list[ArchiveItem]) -> list[dict]:
        urls = urls_for(ctx, router)
        slugs = sorted({v.socket for item in items for v in item.values})
        sockets = ctx.store.sockets.get_many_by_slug(slugs)
        return [shapes.archive_item(item, sockets, urls) for item in items]

    # Items first: "archives/items/" must not be taken for the archive with the pk "items".
    @router.get("/archives/items/", summary="List the items of archives you are a member of")
    def list_items(archive: Text = None, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        items, count = archives.items_page(ctx, user, archive, urls, offset=offset, limit=limit)
        results = render_items(items)
        query = {"archive": archive}
        return shapes.page(results, count, offset, limit, urls, "archives/items/", query)

    @router.post("/archives/items/", summary="Add an item to an archive (editors, uploaders)")
    def create_item(body: Annotated[ArchiveItemCreate, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        urls = urls_for(ctx, router)
        item = archives.create_item(ctx, user, body, urls)
        return shapes.archive_item_post(item, urls), 201

    @router.get("/archives/items/<pk>/", summary="Get an archive item")
    def get_item(pk: str) -> dict:
        user = current_user(router)
        item, _ = archives.visible_item(ctx, user, pk)
        return render_items([item])[0]

    @router.patch(
        "/archives/items/<pk>/",
        summary="Add or replace values of an archive item (editors, uploaders)",
    )
    def update_item(pk: str, body: Annotated[ArchiveItemUpdate, Body()]) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        return shapes.archive_item_post(archives.update_item(ctx, user, pk, body, urls), urls)

    @router.delete(
        "/archives/items/<pk>/",
        summary="Delete an archive item (editors); its images stay, outside the archive",
    )
    def delete_item(pk: str):
        user = current_user(router)
        archives.delete_item(ctx, user, pk)
        return Response(status_code=204, content_type="application/json", body="")

    @router.get(
        "/archives/items/<pk>/values/<value_pk>/<filename>", summary="Download an item's file"
    )
    def get_item_file(pk: str, value_pk: int, filename: str):
        user = current_user(router)
        item, _ = archives.visible_item(ctx, user, pk)
        for value in item.values:
            if value.pk == value_pk and value.file and posixpath.basename(value.file) == filename:
                return redirect_to_object(ctx, value.file, filename)
        raise NotFound(f"Value {value_pk} of archive item {pk} not found")

    @router.get("/archives/", summary="List the archives you are a member of")
    def list_archives(
        slug: Text = None,
        name: Text = None,
        title: Text = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        found, count = archives.archives_page(
            ctx, user, offset=offset, limit=limit, slug=slug, title=title or name
        )
        results = [shapes.archive(a, urls) for a in found]
        query = {"slug": slug, "name": name, "title": title}
        return shapes.page(results, count, offset, limit, urls, "archives/", query)

    @router.post("/archives/", summary="Create an archive (you become its editor)")
    def create_archive(body: Annotated[ArchiveFields, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        archive = archives.create_archive(ctx, user, body)
        return shapes.archive(archive, urls_for(ctx, router)), 201

    @router.get("/archives/<pk>/", summary="Get an archive")
    def get_archive(pk: str) -> dict:
        user = current_user(router)
        return shapes.archive(archives.visible_archive(ctx, user, pk), urls_for(ctx, router))

    @router.patch("/archives/<pk>/", summary="Change an archive's title or members (editors)")
    def update_archive(pk: str, body: Annotated[ArchiveUpdate, Body()]) -> dict:
        user = current_user(router)
        archive = archives.update_archive(ctx, user, pk, body)
        return shapes.archive(archive, urls_for(ctx, router))

    return router
