"""components/interfaces/: list, detail, create, update."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import shapes
from gantry.context import Context
from gantry.interfaces import InterfaceFields
from gantry.services import catalog
from lambdas.api.deps import DEFAULT_LIMIT, Limit, Offset, current_user, urls_for


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()
    path = "components/interfaces/"

    @router.get("/components/interfaces/", summary="List interfaces")
    def list_interfaces(
        slug: Annotated[str | None, Query(max_length=255)] = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict:
        current_user(router)
        urls = urls_for(ctx, router)
        if slug is not None:
            found = ctx.store.sockets.get_many_by_slug([slug])
            results = [shapes.interface(s) for s in found.values()]
            return shapes.page(results, len(results), 0, limit, urls, path, {"slug": slug})
        sockets, count = ctx.store.sockets.page(offset=offset, limit=limit)
        results = [shapes.interface(s) for s in sockets]
        return shapes.page(results, count, offset, limit, urls, path, {})

    @router.get("/components/interfaces/<pk>/", summary="Get an interface")
    def get_interface(pk: int) -> dict:
        current_user(router)
        return shapes.interface(ctx.store.sockets.get(pk))

    @router.post("/components/interfaces/", summary="Create an interface")
    def create_interface(body: Annotated[InterfaceFields, Body()]) -> tuple[dict, int]:
        user = current_user(router)
        return shapes.interface(ctx.store.sockets.create(body, creator=user.username)), 201

    @router.put("/components/interfaces/<pk>/", summary="Update an interface")
    def update_interface(pk: int, body: Annotated[InterfaceFields, Body()]) -> dict:
        user = current_user(router)
        return shapes.interface(catalog.update_interface(ctx, user, pk, body))

    return router
