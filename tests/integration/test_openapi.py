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
