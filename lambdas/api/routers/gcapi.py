"""The version check gcapi makes before anything else (no authentication)."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry.context import Context

# gcapi compares its own version with these (from 0.13 on; older releases make no check).
# Gantry is tested with 0.16.1, 0.13.4, 0.12.0 and 0.5.4 (tests/e2e/test_gcapi_tutorial.py).
LATEST_VERSION = "0.16.1"
LOWEST_SUPPORTED_VERSION = "0.13.0"


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get("/gcapi/", summary="Client version check")
    def version() -> dict:
        return {
            "latest_version": LATEST_VERSION,
            "lowest_supported_version": LOWEST_SUPPORTED_VERSION,
        }

    return router
