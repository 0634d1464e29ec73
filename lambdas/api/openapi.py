"""Print the API's OpenAPI document: ``python -m lambdas.api.openapi > docs/openapi.json``.

Powertools documents every route as answering 200, and 422 for a request that does not
validate. The API answers otherwise, so ``document()`` rewrites each route's responses:
its real success status (201 for a create, 204 for a delete, 302 for a download), 400 with
the API's own error body, and the errors every authenticated route can answer. Where a route
answers what grand-challenge's does, its success body is grand-challenge's model, as gcapi
(generated from grand-challenge's own schema) has it; Gantry's extra fields come after.
``tests/integration/test_access_policy.py`` checks every route's answers against this.
Generated offline with the dev extras: the API's cold path never imports this module.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Server

from gantry.context import Context
from gantry.settings import Settings
from lambdas.api.app import PUBLIC_PATHS, create_app

JSON = "application/json"
COMPONENTS = "#/components/schemas/"

# POST routes that act on something that exists rather than create something: 200.
ACTIONS = frozenset(
    {
        ("post", "/algorithms/jobs/{pk}/cancel"),
        ("post", "/algorithms/images/{pk}/cancel"),
        ("post", "/algorithms/{pk}/archive-runs/{run_pk}/cancel"),
    }
)
# Routes that can refuse for a quota: too many unfinished jobs (with Retry-After).
QUOTA_LIMITED = frozenset({("post", "/algorithms/jobs")})

# The success body of the main routes: gcapi's model of grand-challenge's answer.
RESPONSE_MODELS: dict[tuple[str, str], str] = {
    ("get", "/algorithms"): "PaginatedAlgorithmList",
    ("post", "/algorithms"): "Algorithm",
    ("get", "/algorithms/{pk}"): "Algorithm",
    ("patch", "/algorithms/{pk}"): "Algorithm",
    ("get", "/algorithms/images"): "PaginatedAlgorithmImageList",
    ("post", "/algorithms/images"): "AlgorithmImage",
    ("get", "/algorithms/images/{pk}"): "AlgorithmImage",
    ("get", "/algorithms/jobs"): "PaginatedHyperlinkedJobList",
    ("post", "/algorithms/jobs"): "JobPost",
    ("get", "/algorithms/jobs/{pk}"): "HyperlinkedJob",
    ("post", "/algorithms/jobs/{pk}/cancel"): "HyperlinkedJob",
    ("get", "/components/interfaces"): "PaginatedComponentInterfaceList",
    ("post", "/components/interfaces"): "ComponentInterface",
    ("get", "/components/interfaces/{pk}"): "ComponentInterface",
    ("put", "/components/interfaces/{pk}"): "ComponentInterface",
    ("get", "/cases/images"): "PaginatedHyperlinkedImageList",
    ("get", "/cases/images/{pk}"): "HyperlinkedImage",
    ("get", "/uploads"): "PaginatedUserUploadList",
    ("post", "/uploads"): "UserUpload",
    ("get", "/uploads/{pk}"): "UserUpload",
}

ERROR_SCHEMAS: dict[str, Any] = {
    "Error": {
        "title": "Error",
        "description": "Every error answer: what went wrong, in words.",
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
    "InvalidRequest": {
        "title": "InvalidRequest",
        "description": (
            "A request that does not validate: `detail` sums it up and each field in error "
            'maps to its messages (`{"detail": "title: Field required", "title": '
            '["Field required"]}`).'
        ),
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    },
}
ERRORS = {
    400: ("InvalidRequest", "The request does not validate; each field in error is named"),
    401: ("Error", "No credentials, or a token that is not valid"),
    403: ("Error", "The caller may see this but not do this"),
    404: ("Error", "Not found, or not the caller's to see"),
    409: ("Error", "Conflicts with what exists (a taken title or slug, a changed field)"),
    413: ("Error", "The request body is larger than 1 MiB"),
    429: ("Error", "Too many unfinished jobs; Retry-After says when to try again"),
}


def success_status(method: str, path: str) -> int:
    """The status a route answers when it succeeds."""
    if path.endswith("/{filename}"):
        return 302  # a presigned URL of the stored file
    if method == "delete":
        return 204
    if method == "post" and (method, path) not in ACTIONS:
        return 201
    return 200


def error_statuses(method: str, path: str) -> list[int]:
    """The error statuses a route can answer."""
    if path + "/" in PUBLIC_PATHS:
        return []
    statuses = [400, 401, 403, 404]
    if method in ("post", "put", "patch"):
        statuses += [409, 413]
    if (method, path) in QUOTA_LIMITED:
        statuses.append(429)
    return statuses


def _grand_challenge_schemas(names: set[str], taken: set[str]) -> dict[str, Any]:
    """JSON schemas of gcapi's models ``names`` and of the models they refer to; one named
    like a schema in ``taken`` (Gantry's request models) gets a ``GrandChallenge`` prefix."""
    from gcapi import models
    from pydantic.json_schema import models_json_schema

    _, schema = models_json_schema(
        [(getattr(models, name), "serialization") for name in sorted(names)],
        ref_template=COMPONENTS + "{model}",
    )
    defs = dict(schema["$defs"])
    renamed = {name: "GrandChallenge" + name for name in set(defs) & taken}
    for name, new in renamed.items():
        defs[new] = defs.pop(name)
    text = json.dumps(defs)
    for name, new in renamed.items():
        text = text.replace(json.dumps(COMPONENTS + name), json.dumps(COMPONENTS + new))
    return dict(json.loads(text))


def _responses(method: str, path: str, old: dict[str, Any]) -> dict[str, Any]:
    status = success_status(method, path)
    model = RESPONSE_MODELS.get((method, path))
    if status == 302:
        success: dict[str, Any] = {
            "description": "Redirect to a short-lived download URL of the file",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
    elif status == 204:
        success = {"description": "Done; no body"}
    else:
        schema: dict[str, Any] = {"$ref": COMPONENTS + model} if model else {"type": "object"}
        if model is None:
            # The schema Powertools made of the route's return annotation.
            schema = old.get("200", {}).get("content", {}).get(JSON, {}).get("schema", schema)
        success = {"description": "Successful Response", "content": {JSON: {"schema": schema}}}
    responses = {str(status): success}
    for code in error_statuses(method, path):
        name, description = ERRORS[code]
        responses[str(code)] = {
            "description": description,
            "content": {JSON: {"schema": {"$ref": COMPONENTS + name}}},
        }
    return responses


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
    spec = json.loads(text)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            operation["responses"] = _responses(method, path, operation["responses"])
    schemas = spec["components"]["schemas"]
    # Powertools' 422 shapes: the API never answers them.
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        schemas.pop(unused, None)
    gc_schemas = _grand_challenge_schemas(set(RESPONSE_MODELS.values()), set(schemas))
    schemas.update({**ERROR_SCHEMAS, **gc_schemas})
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(document(), end="")
