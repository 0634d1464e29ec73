"""Authentication, content type, body limits and paging limits, through the API handler."""

from __future__ import annotations

import pytest

JSON = "application/json"


def _content_type(headers: dict[str, str]) -> str | None:
    return {k.lower(): v for k, v in headers.items()}.get("content-type")


def test_version_check_needs_no_token(api) -> None:
    # gcapi's Client() calls this before it sends any credentials.
    status, body, headers = api.get("gcapi/", token=None)
    assert status == 200
    assert set(body) >= {"latest_version", "lowest_supported_version"}
    assert _content_type(headers) == JSON


def test_gcapi_accepts_its_own_version(api) -> None:
    from importlib.metadata import version

    from packaging.version import Version

    _, body, _ = api.get("gcapi/", token=None)
    installed = Version(version("gcapi"))
    assert Version(body["lowest_supported_version"]) <= installed
    assert Version(body["latest_version"]) >= installed


@pytest.mark.parametrize(
    "path", ["algorithms/", "algorithms/jobs/", "components/interfaces/", "uploads/"]
)
def test_no_token_is_401(api, path: str) -> None:
    status, body, headers = api.get(path, token=None)
    assert status == 401
    assert body == {"detail": "Authentication credentials were not provided."}
    assert _content_type(headers) == JSON


@pytest.mark.parametrize("token", ["wrong", "gnt_" + "x" * 43])
def test_bad_token_is_401(api, token: str) -> None:
    status, body, _ = api.get("algorithms/", token=token)
    assert status == 401
    assert body == {"detail": "Invalid token."}


@pytest.mark.parametrize("scheme", ["BEARER", "Bearer", "bearer", "Token"])
def test_scheme_is_matched_case_insensitively(api, alice_token, scheme: str) -> None:
    # gcapi sends "BEARER <token>".
    status, _, _ = api.get(
        "algorithms/", token=None, headers={"Authorization": f"{scheme} {alice_token}"}
    )
    assert status == 200


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer ", "abc"])
def test_other_schemes_are_not_credentials(api, header: str) -> None:
    status, _, _ = api.get("algorithms/", token=None, headers={"Authorization": header})
    assert status == 401


def test_lower_case_header_name_works(api, alice_token) -> None:
    status, _, _ = api.get(
        "algorithms/", token=None, headers={"authorization": f"Bearer {alice_token}"}
    )
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "gcapi/", None, 200),
        ("GET", "algorithms/", None, 200),
        ("GET", "algorithms/no-such/", None, 404),
        ("GET", "components/interfaces/999999/", None, 404),
        ("GET", "components/interfaces/not-an-int/", None, 400),
        ("GET", "no/such/route/", None, 404),
        ("POST", "components/interfaces/", {"title": "x"}, 400),
        ("POST", "uploads/", {"filename": "a.mha"}, 201),
        ("GET", "algorithms/jobs/", None, 200),
    ],
)
def test_every_response_is_exactly_application_json(
    api, method: str, path: str, body: object, expected: int
) -> None:
    # gcapi parses a body only when the Content-Type is exactly application/json.
    status, payload, headers = api.request(method, path, body)
    assert status == expected, payload
    assert _content_type(headers) == JSON
    assert isinstance(payload, dict)


def test_malformed_json_body_is_400(api) -> None:
    status, body, headers = api.post("components/interfaces/", raw_body='{"title": ')
    assert status == 400, body
    assert "detail" in body
    assert _content_type(headers) == JSON


def test_oversize_body_is_413(api) -> None:
    big = '{"filename": "' + "a" * (1024 * 1024 + 10) + '"}'
    status, body, headers = api.post("uploads/", raw_body=big)
    assert status == 413
    assert "larger than" in body["detail"]
    assert _content_type(headers) == JSON
    # Nothing was created.
    assert api.get("uploads/")[1]["count"] == 0


def test_oversize_body_is_413_before_authentication(api) -> None:
    big = "x" * (1024 * 1024 + 1)
    status, _, _ = api.post("uploads/", raw_body=big, token=None)
    assert status == 413


@pytest.mark.parametrize("path", ["algorithms/", "algorithms/jobs/", "uploads/"])
def test_limit_above_1000_is_400_naming_limit(api, path: str) -> None:
    status, body, _ = api.get(path, query={"limit": 1001})
    assert status == 400
    assert "limit" in body


@pytest.mark.parametrize("path", ["algorithms/", "algorithms/jobs/", "components/interfaces/"])
def test_limit_1000_is_fine(api, path: str) -> None:
    status, body, _ = api.get(path, query={"limit": 1000})
    assert status == 200
    assert body == {"count": 0, "next": None, "previous": None, "results": []}


@pytest.mark.parametrize("query", [{"limit": 0}, {"offset": -1}, {"limit": "ten"}])
def test_bad_paging_parameters_are_400(api, query: dict) -> None:
    status, body, _ = api.get("algorithms/jobs/", query=query)
    assert status == 400
    assert set(query) <= set(body)


def test_anonymous_invalid_body_is_401_not_a_validation_report(api) -> None:
    # Credentials are checked before the body is parsed: no schema details leak to strangers.
    status, body, _ = api.post("components/interfaces/", raw_body="{not json", token=None)
    assert status == 401
    assert body == {"detail": "Authentication credentials were not provided."}
