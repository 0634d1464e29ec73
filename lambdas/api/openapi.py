"""Print the API's OpenAPI document: ``python -m lambdas.api.openapi > docs/openapi.json``."""

from __future__ import annotations

import json

from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Server

from gantry.context import Context
from gantry.settings import Settings
from lambdas.api.app import create_app


def document() -> str:
    app = create_app(Context.create(Settings(region="us-east-1")))
    text = app.get_openapi_json_schema(
        title="Gantry API",
        version="1.0.0",
        summary="grand-challenge-compatible API for algorithms, jobs, interfaces and uploads",
        description=(
            "Every path also answers with a trailing '/', as grand-challenge's do. "
            "Send `Authorization: Bearer <token>` (the scheme in any case); only "
            "`/gcapi/` answers without it."
        ),
        # The routes are mounted under /api/v1 (see create_app's strip_prefixes).
        servers=[Server(url="/api/v1")],
        security_schemes={"bearer": HTTPBearer()},
        security=[{"bearer": []}],
    )
    return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(document(), end="")
