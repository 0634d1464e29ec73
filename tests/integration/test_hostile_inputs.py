"""Hostile input refused with a message, never an unhandled error: deeply nested JSON."""

from __future__ import annotations

import pytest

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in Python's parser
NESTED = "[" * 900 + "]" * 900  # parses, but pydantic cannot store it


def _deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("body", [DEEP, '{"title": ' * 5000 + "1" + "}" * 5000])
@pytest.mark.parametrize(
    "path", ["algorithms/jobs/", "components/interfaces/", "algorithms/", "uploads/"]
)
def test_a_deeply_nested_request_body_is_a_400(api, path, body) -> None:
    status, answer, _ = api.post(path, raw_body=body)
    assert status == 400, answer
    assert "nested" in answer["detail"]


def test_a_nested_value_too_deep_to_store_is_a_400(api) -> None:
    status, answer, _ = api.post(
        "components/interfaces/",
        {
            "title": "Blob",
            "kind": "Anything",
            "relative_path": "blob.json",
            "default_value": _deep(900),
        },
    )
    assert status == 400, answer
    assert "nested" in answer["detail"]
    # What clients send in practice still passes.
    status, answer, _ = api.post(
        "components/interfaces/",
        {
            "title": "Blob",
            "kind": "Anything",
            "relative_path": "blob.json",
            "default_value": _deep(20),
        },
    )
    assert status == 201, answer
