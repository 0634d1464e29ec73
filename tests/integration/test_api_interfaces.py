"""components/interfaces/ through the handler: create, list, detail, and every rule as a 400."""

from __future__ import annotations

from typing import Any

import pytest
from gcapi.models import ComponentInterface, PaginatedComponentInterfaceList

SEGMENTS = [
    {"name": "background", "voxel_value": 0, "visible": False},
    {"name": "lesion", "voxel_value": 1, "visible": True},
]


def _create(api, **fields: Any) -> tuple[int, dict]:
    body = {"title": "Score", "kind": "Float", "relative_path": "score.json", **fields}
    status, payload, _ = api.post("components/interfaces/", body)
    return status, payload


def test_create_list_detail_and_by_slug(api) -> None:
    status, created = _create(api, title="Lesion Score", description="how sure")
    assert status == 201, created
    assert isinstance(created["pk"], int)
    assert created["slug"] == "lesion-score"
    assert created["kind"] == "Float"
    assert created["super_kind"] == "Value"
    assert created["store_in_database"] is True
    ComponentInterface(**created)

    status, detail, _ = api.get(f"components/interfaces/{created['pk']}/")
    assert status == 200
    assert detail == created

    status, listed, _ = api.get("components/interfaces/")
    assert status == 200
    page = PaginatedComponentInterfaceList(**listed)
    assert page.count == 1
    assert [i.pk for i in page.results] == [created["pk"]]

    _, by_slug, _ = api.get("components/interfaces/", query={"slug": "lesion-score"})
    assert [i["pk"] for i in by_slug["results"]] == [created["pk"]]
    _, none, _ = api.get("components/interfaces/", query={"slug": "nope"})
    assert none == {"count": 0, "next": None, "previous": None, "results": []}


def test_interfaces_are_shared_between_users(api, api_bob) -> None:
    _, created = _create(api)
    status, seen, _ = api_bob.get(f"components/interfaces/{created['pk']}/")
    assert status == 200
    assert seen["slug"] == created["slug"]


def test_image_and_segmentation_interfaces(api) -> None:
    status, image = _create(api, title="CT", kind="Image", relative_path="images/ct")
    assert status == 201, image
    assert image["super_kind"] == "Image"
    assert image["store_in_database"] is False
    status, seg = _create(
        api,
        title="Mask",
        kind="Segmentation",
        relative_path="images/mask",
        overlay_segments=SEGMENTS,
    )
    assert status == 201, seg
    assert seg["overlay_segments"] == SEGMENTS
    ComponentInterface(**seg)


def test_duplicate_title_is_a_409_naming_title(api) -> None:
    assert _create(api)[0] == 201
    status, body = _create(api, title="score")
    assert status == 409
    assert "title" in body
    assert api.get("components/interfaces/")[1]["count"] == 1


def test_default_value_is_kept(api) -> None:
    status, body = _create(
        api, title="Threshold", default_value=0.5, schema={"type": "number", "maximum": 1}
    )
    assert status == 201, body
    assert body["default_value"] == 0.5
    assert body["schema"] == {"type": "number", "maximum": 1}


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"relative_path": "../score.json"}, "relative_path", ".."),
        ({"relative_path": "/abs/score.json"}, "relative_path", "relative"),
        ({"relative_path": "a//score.json"}, "relative_path", "empty"),
        ({"relative_path": "score.txt"}, "relative_path", ".json"),
        ({"relative_path": "images/score.json"}, "relative_path", "images/"),
        ({"kind": "Image", "relative_path": "ct.mha"}, "relative_path", "images/"),
        ({"kind": "Image", "relative_path": "images/ct.mha"}, "relative_path", "directory"),
        ({"kind": "PDF", "relative_path": "report.json"}, "relative_path", ".pdf"),
        (
            {"kind": "Multiple points", "relative_path": "p.json", "store_in_database": True},
            "store_in_database",
            "never stored",
        ),
        (
            {"kind": "PDF", "relative_path": "r.pdf", "store_in_database": True},
            "store_in_database",
            "only JSON kinds",
        ),
        ({"schema": {"type": "no-such-type"}}, "schema", "not a valid JSON schema"),
        ({"schema": {"$ref": "https://example.org/s.json"}}, "schema", "schema"),
        ({"default_value": "high"}, "default_value", "does not match"),
        (
            {"default_value": 2, "schema": {"type": "number", "maximum": 1}},
            "default_value",
            "does not match",
        ),
        (
            {"kind": "PDF", "relative_path": "r.pdf", "default_value": "x"},
            "default_value",
            "only JSON kinds",
        ),
        ({"kind": "Teapot"}, "kind", ""),
        ({"kind": 7}, "kind", ""),
        ({"title": "!!!"}, "title", "letter"),
        ({"title": ""}, "title", ""),
        ({"unexpected": 1}, "unexpected", ""),
        (
            {"kind": "Segmentation", "relative_path": "images/mask"},
            "overlay_segments",
            "required",
        ),
        ({"overlay_segments": SEGMENTS}, "overlay_segments", "only Segmentation"),
        (
            {
                "kind": "Segmentation",
                "relative_path": "images/mask",
                "overlay_segments": [
                    {"name": "a", "voxel_value": 1},
                    {"name": "a", "voxel_value": 2},
                ],
            },
            "overlay_segments",
            "unique",
        ),
        (
            {
                "kind": "Segmentation",
                "relative_path": "images/mask",
                "overlay_segments": [
                    {"name": "a", "voxel_value": 1},
                    {"name": "b", "voxel_value": 3},
                ],
            },
            "overlay_segments",
            "contiguous",
        ),
        (
            {
                "kind": "Segmentation",
                "relative_path": "images/mask",
                "overlay_segments": [{"name": "a", "voxel_value": -1}],
            },
            "overlay_segments",
            "",
        ),
        (
            {
                "kind": "Float",
                "look_up_table": {"title": "Hot", "color": "[0,0,0]", "alpha": "[1]"},
            },
            "look_up_table",
            "only image",
        ),
    ],
)
def test_every_rule_reaches_the_client_as_a_400_naming_the_field(
    api, fields: dict, field: str, words: str
) -> None:
    status, body = _create(api, **fields)
    assert status == 400, body
    named = [key for key in body if key == field or key.startswith(field + ".")]
    assert named, body
    messages = " ".join(m for key in named for m in body[key])
    assert words.lower() in messages.lower(), body
    assert field in body["detail"]
    # Nothing was stored.
    assert api.get("components/interfaces/")[1]["count"] == 0


def test_update_keeps_slug_and_refuses_title_change(api) -> None:
    _, created = _create(api, description="old")
    body = {"title": "Score", "kind": "Float", "relative_path": "score.json", "description": "new"}
    status, updated, _ = api.put(f"components/interfaces/{created['pk']}/", body)
    assert status == 200, updated
    assert (updated["description"], updated["slug"]) == ("new", created["slug"])
    status, refused, _ = api.put(
        f"components/interfaces/{created['pk']}/", {**body, "title": "Other"}
    )
    assert status == 409
    assert "title" in refused


def test_missing_interface_is_404(api) -> None:
    status, body, _ = api.get("components/interfaces/424242/")
    assert status == 404
    assert "detail" in body
