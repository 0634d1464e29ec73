"""Access requests: a user asks to use an algorithm, its editors list and accept or reject
(rejecting takes the use away again), or the algorithm accepts everyone at once."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ApiClient
from tests.integration.test_inputs_support import make_algorithm, make_socket


@pytest.fixture
def http(ctx, api_app) -> dict[str, Any]:
    """alice's algorithm (carol edits it), and the API clients of alice, bob and carol."""
    make_socket(ctx, "Number", "Integer", "number.json")
    make_socket(ctx, "Result", "Float", "result.json")
    algorithm = make_algorithm(ctx, "Adder", ["number"], ["result"])
    clients = {
        name: ApiClient(api_app, ctx.store.users.create_token(name))
        for name in ("alice", "bob", "carol")
    }
    status, body, _ = clients["alice"].patch(f"algorithms/{algorithm.pk}/", {"editors": ["carol"]})
    assert status == 200, body
    return {"pk": algorithm.pk, **clients}


def _requests(client: ApiClient, pk: str) -> list[tuple[str, str]]:
    status, body, _ = client.get(f"algorithms/{pk}/access-requests/")
    assert status == 200, body
    return [(r["user"], r["status"]) for r in body["results"]]


def test_an_editor_accepts_and_then_rejects_a_request(http) -> None:
    pk, alice, bob, carol = http["pk"], http["alice"], http["bob"], http["carol"]
    assert bob.get(f"algorithms/{pk}/")[0] == 404
    status, body, _ = bob.post(f"algorithms/{pk}/access-requests/")
    assert status == 201, body
    assert (body["user"], body["status"]) == ("bob", "PENDING")
    # Asking again keeps the one request.
    assert bob.post(f"algorithms/{pk}/access-requests/")[0] == 201
    assert _requests(carol, pk) == [("bob", "PENDING")]
    assert _requests(bob, pk) == [("bob", "PENDING")]
    # The requester cannot answer their own request.
    status, body, _ = bob.patch(f"algorithms/{pk}/access-requests/bob/", {"status": "ACCEPTED"})
    assert status == 403, body

    status, body, _ = carol.patch(f"algorithms/{pk}/access-requests/bob/", {"status": "ACCEPTED"})
    assert status == 200, body
    assert body["status"] == "ACCEPTED"
    assert bob.get(f"algorithms/{pk}/")[0] == 200
    # Now a user, bob need not ask again.
    assert bob.post(f"algorithms/{pk}/access-requests/")[0] == 400

    status, body, _ = alice.patch(f"algorithms/{pk}/access-requests/bob/", {"status": "REJECTED"})
    assert status == 200, body
    assert bob.get(f"algorithms/{pk}/")[0] == 404
    assert _requests(alice, pk) == [("bob", "REJECTED")]
    # A rejected user may ask again.
    status, body, _ = bob.post(f"algorithms/{pk}/access-requests/")
    assert (status, body["status"]) == (201, "PENDING")


def test_an_algorithm_may_accept_every_request_at_once(http) -> None:
    pk, alice, bob = http["pk"], http["alice"], http["bob"]
    status, body, _ = alice.patch(f"algorithms/{pk}/", {"access_request_handling": "ACCEPT_ALL"})
    assert status == 200, body
    status, body, _ = bob.post(f"algorithms/{pk}/access-requests/")
    assert (status, body["status"]) == (201, "ACCEPTED")
    assert bob.get(f"algorithms/{pk}/")[0] == 200


def test_bad_answers_and_unknown_requests(http) -> None:
    pk, alice, bob = http["pk"], http["alice"], http["bob"]
    status, body, _ = alice.patch(f"algorithms/{pk}/access-requests/bob/", {"status": "ACCEPTED"})
    assert status == 404, body  # bob never asked
    bob.post(f"algorithms/{pk}/access-requests/")
    status, body, _ = alice.patch(f"algorithms/{pk}/access-requests/bob/", {"status": "MAYBE"})
    assert status == 400, body
    assert "status" in str(body)
    assert bob.post("algorithms/no-such-algorithm/access-requests/")[0] == 404
