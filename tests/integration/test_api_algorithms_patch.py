"""PATCH algorithms/<pk>/: editors change an algorithm after creation, within its jobs' needs."""

from __future__ import annotations

from typing import Any

import pytest
from gcapi.models import Algorithm

from tests.integration.test_api_algorithms import IMAGE, _algorithm

SET = {"inputs": ["number"], "outputs": ["result"]}
CT_SET = {"inputs": ["ct"], "outputs": ["result"]}


@pytest.fixture
def adder(api) -> dict:
    for title, kind, path in [
        ("Number", "Integer", "number.json"),
        ("Result", "Float", "result.json"),
        ("CT", "Image", "images/ct"),
    ]:
        status, body, _ = api.post(
            "components/interfaces/", {"title": title, "kind": kind, "relative_path": path}
        )
        assert status == 201, body
    status, created = _algorithm(api)
    assert status == 201, created
    status, image, _ = api.post("algorithms/images/", {**IMAGE, "algorithm": created["pk"]})
    assert status == 201, image
    return created


def _patch(client, algorithm: dict, **fields: Any) -> tuple[int, Any]:
    status, body, _ = client.patch(f"algorithms/{algorithm['pk']}/", fields)
    return status, body


def _job(client, algorithm: dict) -> tuple[int, Any]:
    keys = ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
    item = {"interface": "number", **dict.fromkeys(keys), "image_name": None, "value": 1}
    status, body, _ = client.post(
        "algorithms/jobs/", {"algorithm": algorithm["api_url"], "inputs": [item]}
    )
    return status, body


def test_editors_change_the_settings(api, adder) -> None:
    status, changed = _patch(
        api,
        adder,
        title="Adder v2",
        description="adds two",
        time_limit=600,
        requires_gpu_type="T4",
        requires_memory_gb=16,
    )
    assert status == 200, changed
    Algorithm(**changed)
    assert (changed["title"], changed["description"]) == ("Adder v2", "adds two")
    assert changed["slug"] == adder["slug"]  # drop folders and clients keep using it
    detail = api.get(f"algorithms/{adder['pk']}/")[1]
    assert (detail["time_limit"], detail["requires_gpu_type"]) == (600, "T4")
    assert detail["requires_memory_gb"] == 16


def test_users_added_and_removed_see_it_come_and_go(api, api_bob, adder) -> None:
    assert api_bob.get(f"algorithms/{adder['pk']}/")[0] == 404
    assert _patch(api_bob, adder, users=["bob"])[0] == 404  # a stranger learns nothing

    assert _patch(api, adder, users=["bob"])[0] == 200
    _, listed, _ = api_bob.get("algorithms/")
    assert [a["pk"] for a in listed["results"]] == [adder["pk"]]
    assert listed["count"] == 1
    assert _job(api_bob, adder)[0] == 201
    # A user is not an editor.
    status, body = _patch(api_bob, adder, title="Mine")
    assert status == 403, body

    assert _patch(api, adder, users=[])[0] == 200
    assert api_bob.get(f"algorithms/{adder['pk']}/")[0] == 404
    _, listed, _ = api_bob.get("algorithms/")
    assert (listed["count"], listed["results"]) == (0, [])


def test_an_added_editor_may_change_it(api, api_bob, adder) -> None:
    assert _patch(api, adder, editors=["bob"])[0] == 200
    status, changed = _patch(api_bob, adder, description="bob's words")
    assert status == 200, changed
    assert changed["description"] == "bob's words"


def test_socket_sets_are_added_and_unused_ones_removed(api, adder) -> None:
    status, changed = _patch(api, adder, interfaces=[SET, CT_SET])
    assert status == 200, changed
    assert len(changed["interfaces"]) == 2
    status, changed = _patch(api, adder, interfaces=[SET])
    assert status == 200, changed
    assert len(changed["interfaces"]) == 1


def test_a_socket_set_a_job_used_stays(api, adder) -> None:
    assert _patch(api, adder, interfaces=[SET, CT_SET])[0] == 200
    assert _job(api, adder)[0] == 201  # uses the first set
    status, body = _patch(api, adder, interfaces=[CT_SET])
    assert status == 400, body
    assert "jobs used it" in body["interfaces"][0]
    # The unused one may still go.
    assert _patch(api, adder, interfaces=[SET])[0] == 200


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"time_limit": 10}, "time_limit"),
        ({"requires_gpu_type": "A100"}, "requires_gpu_type"),
        ({"interfaces": [{"inputs": ["nope"], "outputs": ["result"]}]}, "interfaces"),
        ({"slug": "x"}, "slug"),
    ],
)
def test_bad_changes_name_the_field(api, adder, fields: dict, field: str) -> None:
    status, body = _patch(api, adder, **fields)
    assert status == 400, body
    assert field in body
