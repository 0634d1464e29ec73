"""algorithms/<pk>/access-requests/: ask to use an algorithm; its editors answer."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry.access_requests import AccessRequestReview
from gantry.context import Context
from gantry.services import access_requests
from lambdas.api.deps import current_user


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.post("/algorithms/<pk>/access-requests/", summary="Ask to use an algorithm")
    def ask(pk: str) -> tuple[dict, int]:
        request = access_requests.request_access(ctx, current_user(router), pk)
        return request.model_dump(mode="json"), 201

    @router.get("/algorithms/<pk>/access-requests/", summary="Access requests of an algorithm")
    def listing(pk: str) -> dict:
        found = access_requests.list_requests(ctx, current_user(router), pk)
        return {"count": len(found), "results": [r.model_dump(mode="json") for r in found]}

    @router.patch(
        "/algorithms/<pk>/access-requests/<username>/", summary="Accept or reject a request"
    )
    def answer(pk: str, username: str, body: Annotated[AccessRequestReview, Body()]) -> dict:
        user = current_user(router)
        return access_requests.review(ctx, user, pk, username, body).model_dump(mode="json")

    return router
