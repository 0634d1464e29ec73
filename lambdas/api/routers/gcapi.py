"""The version check gcapi makes before anything else (no authentication)."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry.context import Context

# gcapi compares its own version with these; 0.16 is the client Gantry is tested with.
LATEST_VERSION = "0.16.1"
LOWEST_SUPPORTED_VERSION = "0.16.0"


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get("/gcapi/", summary="Client version check")
    def version() -> dict:
        return {
            "latest_version": LATEST_VERSION,
            "lowest_supported_version": LOWEST_SUPPORTED_VERSION,
        }

    return router
