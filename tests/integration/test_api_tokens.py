"""tokens/: users list, create (with an expiry) and revoke their own tokens; admins anyone's."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gantry import timeutil
from tests.conftest import ApiClient


@pytest.fixture
def admin(api_app, ctx) -> ApiClient:
    return ApiClient(api_app, ctx.store.users.create_token("root", is_admin=True))


def test_create_list_and_revoke_your_own(api, api_bob) -> None:
    status, created, _ = api.post("tokens/", {"expires_in_days": 30})
    assert status == 201, created
    assert created["user"] == "alice"
    assert created["token"].startswith("gnt_")
    expires = timeutil.parse_iso(created["expires"])
    assert timedelta(days=29) < expires - timeutil.now() <= timedelta(days=30)
    fresh = ApiClient(api.app, created["token"])
    assert fresh.get("users/me/")[1]["username"] == "alice"

    # alice's list: the token she signed in with and the new one; bob's: his own only.
    _, page, _ = api.get("tokens/")
    assert page["count"] == 2
    assert created["pk"] in [t["pk"] for t in page["results"]]
    assert all("token" not in t for t in page["results"])  # the secret is shown once only
    _, bobs, _ = api_bob.get("tokens/")
    assert [t["user"] for t in bobs["results"]] == ["bob"]

    assert api_bob.request("DELETE", f"tokens/{created['pk']}/")[0] == 404
    assert fresh.get("users/me/")[0] == 200
    status, _, _ = api.request("DELETE", f"tokens/{created['pk']}/")
    assert status == 204
    assert fresh.get("users/me/")[0] == 401
    assert api.get("tokens/")[1]["count"] == 1
    # Revoking again: it is gone.
    assert api.request("DELETE", f"tokens/{created['pk']}/")[0] == 404


def test_an_expired_token_no_longer_authenticates(api, monkeypatch) -> None:
    _, created, _ = api.post("tokens/", {"expires_in_days": 1})
    fresh = ApiClient(api.app, created["token"])
    assert fresh.get("users/me/")[0] == 200
    later = timeutil.now() + timedelta(days=1, seconds=1)
    monkeypatch.setattr(timeutil, "now", lambda: later)
    status, body, _ = fresh.get("users/me/")
    assert (status, body) == (401, {"detail": "Invalid token."})


def test_admins_manage_anyones_tokens(api, api_bob, admin) -> None:
    status, created, _ = admin.post("tokens/", {"user": "carol"})
    assert status == 201, created
    carol = ApiClient(api.app, created["token"])
    assert carol.get("users/me/")[1] == {**carol.get("users/me/")[1], "username": "carol"}
    _, page, _ = admin.get("tokens/", query={"user": "carol"})
    assert [t["pk"] for t in page["results"]] == [created["pk"]]
    assert admin.request("DELETE", f"tokens/{created['pk']}/")[0] == 204
    assert carol.get("users/me/")[0] == 401

    status, body, _ = api.post("tokens/", {"user": "bob"})
    assert status == 403, body
    assert api.get("tokens/", query={"user": "bob"})[0] == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [({"expires_in_days": 0}, "expires_in_days"), ({"user": "a b"}, "user"), ({"x": 1}, "x")],
)
def test_bad_requests_name_the_field(api, body: dict, field: str) -> None:
    status, answer, _ = api.post("tokens/", body)
    assert status == 400, answer
    assert field in answer


def test_a_token_creates_none_that_outlives_it(api, admin) -> None:
    """A short-lived token, leaked, must not become one that never expires."""
    _, week, _ = api.post("tokens/", {"expires_in_days": 7})
    short = ApiClient(api.app, week["token"])
    for body in ({}, {"expires_in_days": 8}):
        status, answer, _ = short.post("tokens/", body)
        assert status == 400, answer
        assert answer["expires_in_days"] == [answer["detail"]]
        assert "at most 6 days" in answer["detail"]
    status, made, _ = short.post("tokens/", {"expires_in_days": 6})
    assert status == 201, made
    assert timeutil.parse_iso(made["expires"]) <= timeutil.parse_iso(week["expires"])
    # The same for an admin's short-lived token, for anyone.
    _, admins, _ = admin.post("tokens/", {"expires_in_days": 1})
    status, answer, _ = ApiClient(api.app, admins["token"]).post("tokens/", {"user": "carol"})
    assert status == 400, answer
    assert "cannot create tokens" in answer["detail"]
    # A token that never expires makes any.
    assert api.post("tokens/", {})[0] == 201
