"""cases/images/: the images you uploaded or your jobs produced, and their files."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, shapes
from gantry.access import Action
from gantry.context import Context
from gantry.errors import NotFound
from gantry.images import Image
from gantry.users import User
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for
from lambdas.api.files import redirect_to_object


def visible_image(ctx: Context, user: User, pk: str) -> Image:
    image = ctx.store.images.get(pk)
    if not access.image(user, Action.READ, image):
        raise NotFound(f"Image {pk} not found")
    return image


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get("/cases/images/", summary="List your images")
    def list_images(limit: Limit = DEFAULT_LIMIT, offset: Offset = 0) -> dict:
        user = current_user(router)
        urls = urls_for(ctx, router)
        images, count = ctx.store.images.page_for(user.username, offset=offset, limit=limit)
        results = [shapes.image(i, urls) for i in images]
        return shapes.page(results, count, offset, limit, urls, "cases/images/", {})

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
