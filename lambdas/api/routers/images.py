"""cases/images/: the images you uploaded or your jobs produced, and their files."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, shapes
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound
from gantry.images import Image
from gantry.services.archives import referenced_archive
from gantry.users import User
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for
from lambdas.api.files import redirect_to_object


def visible_image(ctx: Context, user: User, pk: str) -> Image:
    image = ctx.store.images.get(pk)
    if not access.image(user, Action.READ, image, ctx.store.archives.holding(pk)):
        raise NotFound(f"Image {pk} not found")
    return image


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get("/cases/images/", summary="List your images, or an archive's (?archive=)")
    def list_images(
        archive: Annotated[str | None, Query(max_length=1024)] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        if archive is not None:
            found = referenced_archive(ctx, user, urls, archive)
            pks, count = ctx.store.archives.page_images(found.pk, offset=offset, limit=limit)
            by_pk = ctx.store.images.get_many(pks)
            images = [by_pk[pk] for pk in pks if pk in by_pk]
        else:
            images, count = ctx.store.images.page_for(user.username, offset=offset, limit=limit)
        results = [shapes.image(i, urls) for i in images]
        query = {"archive": archive}
        return shapes.page(results, count, offset, limit, urls, "cases/images/", query)

    @router.get("/cases/images/<pk>/", summary="Get an image")
    def get_image(pk: str) -> dict:
        user = current_user(router)
        return shapes.image(visible_image(ctx, user, pk), urls_for(ctx, router))

    @router.get("/cases/images/<pk>/files/<file_pk>/<filename>", summary="Download an image file")
    def get_image_file(pk: str, file_pk: str, filename: str):
        user = current_user(router)
        image = visible_image(ctx, user, pk)
        for image_file in image.files:
            if image_file.pk == file_pk and image_file.filename == filename:
                return redirect_to_object(ctx, image_file.key, filename)
        raise NotFound(f"File {file_pk} of image {pk} not found")

    return router
