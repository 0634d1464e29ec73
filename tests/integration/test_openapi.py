"""The committed OpenAPI document is the one the code generates."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from lambdas.api.openapi import document

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_document_matches_the_code() -> None:
    generated = document()
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    if generated != committed:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "docs/openapi.json (committed)",
                    "generated",
                )
            )[:60]
        )
        raise AssertionError(
            "docs/openapi.json is out of date with the API code; run `make openapi` and commit "
            f"the result.\n{diff}"
        )


def test_document_describes_every_resource_and_the_auth() -> None:
    spec = json.loads(document())
    paths = set(spec["paths"])
    for path in (
        "/gcapi",
        "/algorithms",
        "/algorithms/{pk}",
        "/algorithms/images",
        "/algorithms/jobs",
        "/algorithms/jobs/{pk}",
        "/components/interfaces",
        "/components/interfaces/{pk}",
        "/cases/images",
        "/uploads",
        "/uploads/{pk}/{s3_upload_id}/generate-presigned-urls",
        "/uploads/{pk}/{s3_upload_id}/complete-multipart-upload",
        "/uploads/{pk}/{s3_upload_id}/abort-multipart-upload",
        "/uploads/{pk}/{s3_upload_id}/list-parts",
    ):
        assert path in paths, path
    assert spec["servers"] == [{"url": "/api/v1"}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"].lower() == "bearer"
    assert set(spec["paths"]["/algorithms/jobs"]) == {"get", "post"}
    # Request bodies are documented from the same models that validate them.
    job_post = spec["paths"]["/algorithms/jobs"]["post"]["requestBody"]
    assert "JobCreate" in json.dumps(job_post)


def test_document_gives_the_statuses_the_api_answers() -> None:
    spec = json.loads(document())
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            # Validation errors are answered 400 with the API's own body, never 422.
            assert "422" not in responses, (method, path)
            if path != "/gcapi":
                invalid = responses["400"]["content"]["application/json"]["schema"]
                assert invalid == {"$ref": "#/components/schemas/InvalidRequest"}
                assert "401" in responses
    paths = spec["paths"]
    assert min(paths["/algorithms/jobs"]["post"]["responses"]) == "201"
    assert min(paths["/algorithms/jobs/{pk}/cancel"]["post"]["responses"]) == "200"
    assert min(paths["/tokens/{pk}"]["delete"]["responses"]) == "204"
    job = paths["/algorithms/jobs/{pk}"]["get"]["responses"]["200"]["content"]
    assert job["application/json"]["schema"] == {"$ref": "#/components/schemas/HyperlinkedJob"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
