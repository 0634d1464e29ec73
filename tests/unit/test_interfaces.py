"""Interfaces (sockets): the create/update rules, value validation, updates, the API shape."""

from __future__ import annotations

from typing import Any

import pytest
from gcapi import models as gcapi_models
from pydantic import ValidationError

from gantry.interfaces import (
    MAX_JSON_BYTES,
    ImmutableFieldError,
    Interface,
    InterfaceFields,
    InterfaceValueError,
    LookUpTable,
    OverlaySegment,
    check_update,
    format_errors,
    slugify,
    to_api,
    validate_value,
    value_errors,
)
from gantry.kinds import InterfaceKind, SuperKind

SEGMENTS = [
    {"name": "background", "visible": False, "voxel_value": 0},
    {"name": "tumour", "voxel_value": 1},
]
LUT = {"title": "Hot Metal", "color": "[0, 0, 0, 255]", "alpha": "[0, 1]"}
V = {"major": 1, "minor": 0}
BOX = {"type": "2D bounding box", "version": V, "corners": [[0, 0, 0]] * 4}


def fields(**overrides: Any) -> InterfaceFields:
    data: dict[str, Any] = {"title": "Nodule count", "kind": "Integer", "relative_path": "n.json"}
    data.update(overrides)
    return InterfaceFields.model_validate(data)


def stored(**overrides: Any) -> Interface:
    f = fields(**overrides)
    return Interface(
        **f.model_dump(by_alias=False),
        pk=7,
        slug=f"{slugify(f.title)}",
        created="2024-05-01T12:00:00Z",
    )


def errors_of(**overrides: Any) -> dict[str, str]:
    """{field: message} of the validation errors the overrides cause."""
    with pytest.raises(ValidationError) as raised:
        fields(**overrides)
    return {
        ".".join(map(str, e["loc"])): e["msg"].removeprefix("Value error, ")
        for e in raised.value.errors()
    }


# --- Fields -----------------------------------------------------------------------------------


def test_minimal_payload() -> None:
    f = fields(title="  Nodule count  ")
    assert f.title == "Nodule count"
    assert f.kind is InterfaceKind.INTEGER
    assert f.description == ""
    assert f.extra_schema == {}
    assert f.default_value is None
    assert f.store_in_database is True
    assert f.super_kind is SuperKind.VALUE


@pytest.mark.parametrize("kind", ["INT", "Integer", "integer", "INTEGER", InterfaceKind.INTEGER])
def test_kind_by_code_label_or_name(kind: Any) -> None:
    assert fields(kind=kind).kind is InterfaceKind.INTEGER


def test_unknown_kind_names_the_field() -> None:
    errors = errors_of(kind="Integr")
    assert list(errors) == ["kind"]
    assert "Unknown interface kind 'Integr'" in errors["kind"]
    assert "Integer (INT)" in errors["kind"]


@pytest.mark.parametrize("title", ["", "   ", "x" * 256, "!!!"])
def test_title_rules(title: str) -> None:
    assert list(errors_of(title=title)) == ["title"]


def test_unknown_fields_are_rejected() -> None:
    assert list(errors_of(colour="red")) == ["colour"]


def test_schema_alias() -> None:
    by_alias = fields(schema={"maximum": 3})
    by_name = fields(extra_schema={"maximum": 3})
    assert by_alias.extra_schema == by_name.extra_schema == {"maximum": 3}
    assert by_alias.model_dump(by_alias=True)["schema"] == {"maximum": 3}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("INT", True),
        ("CHART", True),
        ("MCHO", True),
        ("2DBB", True),
        ("MPOI", False),
        ("M2DB", False),
    ],
)
def test_store_in_database_default(kind: str, expected: bool) -> None:
    assert fields(kind=kind).store_in_database is expected


def test_store_in_database_default_for_images_and_files() -> None:
    assert fields(kind="PDF", relative_path="report.pdf").store_in_database is False
    image = fields(kind="IMG", relative_path="images/ct")
    assert image.store_in_database is False
    assert image.super_kind is SuperKind.IMAGE


def test_json_kind_may_be_stored_as_file() -> None:
    f = fields(store_in_database=False)
    assert f.super_kind is SuperKind.FILE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "MPOI", "relative_path": "p.json"}, "never stored"),
        ({"kind": "Multiple polygons", "relative_path": "p.json"}, "never stored"),
        ({"kind": "PDF", "relative_path": "r.pdf"}, "only JSON kinds"),
        ({"kind": "IMG", "relative_path": "images/ct"}, "only JSON kinds"),
    ],
)
def test_store_in_database_rules(overrides: dict[str, Any], message: str) -> None:
    errors = errors_of(store_in_database=True, **overrides)
    assert list(errors) == ["store_in_database"]
    assert message in errors["store_in_database"]


# --- relative_path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../n.json",
        "a/../n.json",
        "/n.json",
        "./n.json",
        "a//n.json",
        "a/n.json/",
        "inputs.json",
        "case-0b7c0e1a-8e4c-4d43-9f7a-0a1b2c3d4e5f.json",
        "a b.json",
        "",
    ],
)
def test_unsafe_relative_paths(path: str) -> None:
    assert list(errors_of(relative_path=path)) == ["relative_path"]


@pytest.mark.parametrize(
    ("kind", "path", "message"),
    [
        ("INT", "n.txt", "ending with '.json'"),
        ("INT", ".json", "ending with '.json'"),
        ("INT", "images/n.json", "must not start with 'images/'"),
        ("PDF", "report.json", "ending with '.pdf'"),
        ("Thumbnail jpg", "thumb.jpg", "ending with '.jpeg'"),
        ("IMG", "ct", "must start with 'images/'"),
        ("IMG", "images", "must start with 'images/'"),
        ("IMG", "images/ct.mha", "must name a directory"),
        ("DCMIS", "images/study.dcm", "must name a directory"),
    ],
)
def test_relative_path_must_fit_kind(kind: str, path: str, message: str) -> None:
    errors = errors_of(kind=kind, relative_path=path)
    assert list(errors) == ["relative_path"]
    assert message in errors["relative_path"]


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("IMG", "images/ct"),
        ("HMAP", "images/heat-map/lungs"),
        ("DCMIS", "images/study"),
        ("MPOI", "nested/points.json"),
        ("ZIP", "predictions.zip"),
        ("NEWCK", "tree.newick"),
    ],
)
def test_relative_path_accepted(kind: str, path: str) -> None:
    assert fields(kind=kind, relative_path=path).relative_path == path


# --- schema and default_value -----------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"$schema": "http://json-schema.org/draft-07/schema#", "maximum": 10},
        {"$schema": "http://json-schema.org/draft-06/schema#", "maximum": 10},
        {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 10},
        {"$schema": "http://json-schema.org/draft-03/schema#", "maximum": 10},
        {"maximum": 10},
    ],
)
def test_extra_schema_drafts_accepted(schema: dict[str, Any]) -> None:
    assert fields(schema=schema).extra_schema == schema


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "strin"}, "is not a valid JSON schema"),
        ({"$schema": "https://json-schema.org/draft/2020-12/schema"}, "only Draft 7, 6, 4 or 3"),
        ({"$ref": "https://example.com/s.json"}, "cannot be resolved"),
        ({"enum": ["x" * MAX_JSON_BYTES]}, "at most 64 KiB"),
    ],
)
def test_extra_schema_rejected(schema: dict[str, Any], message: str) -> None:
    errors = errors_of(schema=schema)
    assert list(errors) == ["schema"]
    assert message in errors["schema"]


def test_extra_schema_must_be_an_object() -> None:
    assert list(errors_of(schema=["not", "an", "object"])) == ["schema"]


def test_default_value_validated_against_default_and_extra_schema() -> None:
    assert fields(default_value=3, schema={"maximum": 10}).default_value == 3
    errors = errors_of(default_value=11, schema={"maximum": 10})
    assert errors == {
        "default_value": "does not match the schema: 11 is greater than the maximum of 10"
    }
    errors = errors_of(default_value="3")
    assert errors == {"default_value": "does not match the schema: '3' is not of type 'integer'"}


def test_falsy_default_values_are_kept_and_checked() -> None:
    assert fields(kind="Bool", default_value=False).default_value is False
    assert fields(default_value=0).default_value == 0
    assert list(errors_of(kind="Bool", default_value=0)) == ["default_value"]


def test_default_value_only_for_json_kinds() -> None:
    errors = errors_of(kind="PDF", relative_path="r.pdf", default_value="x")
    assert list(errors) == ["default_value"]
    assert "only JSON kinds" in errors["default_value"]


def test_default_value_must_be_json_and_small() -> None:
    assert list(errors_of(kind="FLT", default_value=float("nan"))) == ["default_value"]
    errors = errors_of(kind="STR", default_value="x" * MAX_JSON_BYTES)
    assert "at most 64 KiB" in errors["default_value"]


def test_annotation_default_value() -> None:
    assert fields(kind="2DBB", relative_path="box.json", default_value=BOX).default_value == BOX
    bad = {**BOX, "corners": [[0, 0, 0]]}
    errors = errors_of(kind="2DBB", relative_path="box.json", default_value=bad)
    assert errors == {
        "default_value": "does not match the schema: corners: [[0, 0, 0]] is too short"
    }


# --- overlay segments and look-up table -------------------------------------------------------


def seg(**overrides: Any) -> InterfaceFields:
    return fields(kind="Segmentation", relative_path="images/lesions", **overrides)


def test_segmentation_with_segments() -> None:
    f = seg(overlay_segments=SEGMENTS)
    assert f.overlay_segments == [
        OverlaySegment(name="background", visible=False, voxel_value=0),
        OverlaySegment(name="tumour", visible=True, voxel_value=1),
    ]
    # 0 is the implicit background: 1..n alone is contiguous.
    assert seg(overlay_segments=[{"name": "a", "voxel_value": 1}]).overlay_segments


def segment_errors(segments: Any, **overrides: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as raised:
        fields(
            **{"kind": "SEG", "relative_path": "images/lesions", **overrides},
            overlay_segments=segments,
        )
    return {
        ".".join(map(str, e["loc"])): e["msg"].removeprefix("Value error, ")
        for e in raised.value.errors()
    }


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        (None, "are required for Segmentation"),
        ([], "are required for Segmentation"),
        ([{"name": "a", "voxel_value": 0}, {"name": "b", "voxel_value": 2}], "missing [1]"),
        ([{"name": "a", "voxel_value": 2}, {"name": "b", "voxel_value": 3}], "missing [1]"),
        (
            [{"name": "a", "voxel_value": 1}, {"name": "a", "voxel_value": 2}],
            "names must be unique",
        ),
        (
            [{"name": "a", "voxel_value": 1}, {"name": "b", "voxel_value": 1}],
            "voxel values must be unique",
        ),
        ([{"name": f"s{i}", "voxel_value": i} for i in range(65)], "at most 64"),
    ],
)
def test_overlay_segment_rules(segments: Any, message: str) -> None:
    errors = segment_errors(segments)
    assert list(errors) == ["overlay_segments"]
    assert message in errors["overlay_segments"]


@pytest.mark.parametrize(
    "segment",
    [
        {"name": "", "voxel_value": 1},
        {"name": "a", "voxel_value": -1},
        {"name": "a", "voxel_value": 1, "colour": "red"},
        {"voxel_value": 1},
    ],
)
def test_overlay_segment_fields(segment: dict[str, Any]) -> None:
    errors = segment_errors([segment])
    assert all(loc.startswith("overlay_segments.0") for loc in errors)


def test_overlay_segments_only_for_segmentations() -> None:
    errors = errors_of(kind="IMG", relative_path="images/ct", overlay_segments=SEGMENTS)
    assert list(errors) == ["overlay_segments"]
    assert "only Segmentation" in errors["overlay_segments"]
    assert fields(overlay_segments=[]).overlay_segments is None


def test_look_up_table() -> None:
    f = seg(overlay_segments=SEGMENTS, look_up_table=LUT)
    assert f.look_up_table is not None
    assert f.look_up_table.slug == "hot-metal"
    assert f.look_up_table.color_interpolation == "RGB"
    errors = errors_of(look_up_table=LUT)
    assert list(errors) == ["look_up_table"]
    with pytest.raises(ValidationError):
        LookUpTable(title="x", color="c", alpha="a", color_interpolation="CMYK")
    with pytest.raises(ValidationError):
        LookUpTable(title="x", color="c", alpha="a", range_min=10, range_max=1)


def test_format_errors_names_fields() -> None:
    with pytest.raises(ValidationError) as raised:
        fields(kind="IMG", relative_path="ct.mha")
    assert format_errors(raised.value) == [
        "relative_path: must start with 'images/' for Image interfaces"
    ]


def test_slugify() -> None:
    assert slugify("  Nodule Count (mm)! ") == "nodule-count-mm"
    assert slugify("Ünïcödé  title") == "unicode-title"
    assert slugify("a -- b__c") == "a-b__c"
    assert slugify("😀") == ""
    assert len(slugify("a" * 300)) == 255


# --- Values -----------------------------------------------------------------------------------


def test_validate_value_default_and_extra_schema() -> None:
    interface = stored(title="Box", kind="2DBB", relative_path="box.json")
    validate_value(interface, BOX)
    with pytest.raises(InterfaceValueError) as raised:
        validate_value(interface, {**BOX, "corners": [[1, 2]]})
    assert raised.value.slug == "box"
    assert str(raised.value) == (
        "Value for 'box' is invalid: corners: [[1, 2]] is too short; "
        "corners[0]: [1, 2] is too short"
    )
    limited = stored(schema={"maximum": 10})
    validate_value(limited, 10)
    with pytest.raises(InterfaceValueError, match="11 is greater than the maximum of 10"):
        validate_value(limited, 11)
    with pytest.raises(InterfaceValueError, match="'10' is not of type 'integer'"):
        validate_value(limited, "10")


def test_validate_value_on_fields_uses_title_slug() -> None:
    with pytest.raises(InterfaceValueError) as raised:
        validate_value(fields(title="Nodule Count"), "x")
    assert raised.value.slug == "nodule-count"


@pytest.mark.parametrize(
    ("kind", "path", "word"),
    [("IMG", "images/ct", "an image"), ("PDF", "r.pdf", "a file")],
)
def test_inline_values_rejected_for_images_and_files(kind: str, path: str, word: str) -> None:
    interface = stored(kind=kind, relative_path=path)
    with pytest.raises(InterfaceValueError, match=f"uploaded as {word}"):
        validate_value(interface, "anything")
    assert value_errors(interface, "anything")


# --- Updates ----------------------------------------------------------------------------------


def test_any_change_without_values() -> None:
    existing = stored()
    check_update(existing, fields(kind="FLT", relative_path="x.json"), has_values=False)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "FLT"}, "kind"),
        ({"relative_path": "other.json"}, "relative_path"),
        ({"store_in_database": False}, "store_in_database"),
    ],
)
def test_immutable_once_values_exist(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ImmutableFieldError) as raised:
        check_update(stored(), fields(**change), has_values=True)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_mutable_fields_once_values_exist() -> None:
    check_update(
        stored(schema={"maximum": 5}),
        fields(description="New", schema={"maximum": 5}),
        has_values=True,
    )
    # Dropping the schema accepts every stored value still.
    check_update(stored(schema={"maximum": 5}), fields(), has_values=True)


@pytest.mark.parametrize(
    "used", [{"has_values": True}, {"has_values": False, "in_algorithm": True}]
)
@pytest.mark.parametrize("default", [3, None])
def test_the_default_jobs_take_is_fixed_once_used(used: dict[str, bool], default: Any) -> None:
    # Jobs on any algorithm that uses the interface take its default for an input left out.
    with pytest.raises(ImmutableFieldError) as raised:
        check_update(stored(default_value=2), fields(default_value=default), **used)
    assert raised.value.field == "default_value"
    check_update(stored(default_value=2), fields(default_value=2), **used)


@pytest.mark.parametrize(
    "used", [{"has_values": True}, {"has_values": False, "in_algorithm": True}]
)
def test_a_new_schema_could_narrow_what_is_stored_or_written(used: dict[str, bool]) -> None:
    with pytest.raises(ImmutableFieldError) as raised:
        check_update(stored(), fields(schema={"maximum": 5}), **used)
    assert raised.value.field == "schema"
    assert "kept or removed" in str(raised.value)


@pytest.mark.parametrize(
    ("change", "field"), [({"kind": "FLT"}, "kind"), ({"relative_path": "o.json"}, "relative_path")]
)
def test_kind_and_path_are_fixed_once_an_algorithm_uses_the_interface(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ImmutableFieldError) as raised:
        check_update(stored(), fields(**change), has_values=False, in_algorithm=True)
    assert raised.value.field == field
    assert "an algorithm uses this interface" in str(raised.value)
    # Storage may still change: nothing is stored yet.
    check_update(stored(), fields(store_in_database=False), has_values=False, in_algorithm=True)


def test_overlay_segments_can_grow_but_not_change() -> None:
    existing = stored(kind="SEG", relative_path="images/s", overlay_segments=SEGMENTS)
    grown = [*SEGMENTS, {"name": "cyst", "voxel_value": 2}]
    hidden = [{**s, "visible": False} for s in SEGMENTS]
    for ok in (grown, hidden):
        check_update(
            existing,
            fields(kind="SEG", relative_path="images/s", overlay_segments=ok),
            has_values=True,
        )
    renamed = [SEGMENTS[0], {"name": "lesion", "voxel_value": 1}]
    with pytest.raises(ImmutableFieldError) as raised:
        check_update(
            existing,
            fields(kind="SEG", relative_path="images/s", overlay_segments=renamed),
            has_values=True,
        )
    assert raised.value.field == "overlay_segments"


# --- API shape --------------------------------------------------------------------------------

API_KEYS = {
    "title",
    "description",
    "slug",
    "kind",
    "pk",
    "default_value",
    "super_kind",
    "relative_path",
    "overlay_segments",
    "look_up_table",
}


def test_to_api_shape() -> None:
    interface = stored(title="Lesion box", kind="2DBB", relative_path="box.json", default_value=BOX)
    body = to_api(interface)
    assert set(body) >= API_KEYS
    assert body == {
        "title": "Lesion box",
        "description": "",
        "slug": "lesion-box",
        "kind": "2D bounding box",
        "pk": 7,
        "default_value": BOX,
        "super_kind": "Value",
        "relative_path": "box.json",
        "overlay_segments": [],
        "look_up_table": None,
        "schema": {},
        "store_in_database": True,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"kind": "MPOI", "relative_path": "points.json"},
        {"kind": "IMG", "relative_path": "images/ct"},
        {"kind": "PDF", "relative_path": "report.pdf"},
        {"kind": "DCMIS", "relative_path": "images/study"},
        {
            "kind": "SEG",
            "relative_path": "images/s",
            "overlay_segments": SEGMENTS,
            "look_up_table": LUT,
        },
    ],
)
def test_to_api_parses_with_gcapi(overrides: dict[str, Any]) -> None:
    interface = stored(**overrides)
    body = to_api(interface)
    parsed = gcapi_models.ComponentInterface(**body)
    assert parsed.pk == interface.pk
    assert parsed.slug == interface.slug
    assert parsed.super_kind == interface.super_kind.value
    assert parsed.kind == body["kind"]
    if interface.look_up_table is not None:
        assert isinstance(parsed.look_up_table, gcapi_models.LookUpTable)
        assert parsed.look_up_table.title == "Hot Metal"
        assert parsed.look_up_table.color_interpolation == gcapi_models.ColorInterpolationEnum.RGB


def test_gcapi_reads_super_kind_and_kind_the_way_it_expects() -> None:
    # gcapi's create strategies compare casefolded labels: "image", "file", "value",
    # "dicom image set".
    dicom = to_api(stored(kind="DCMIS", relative_path="images/study"))
    assert dicom["kind"].casefold() == "dicom image set"
    assert dicom["super_kind"].casefold() == "image"


def test_stored_interface_roundtrip() -> None:
    interface = stored(
        kind="SEG", relative_path="images/s", overlay_segments=SEGMENTS, look_up_table=LUT
    )
    again = Interface.model_validate(interface.model_dump(mode="json", by_alias=False))
    assert again == interface
    again = Interface.model_validate(interface.model_dump(mode="json", by_alias=True))
    assert again == interface


@pytest.mark.parametrize("slug", ["", "Has Caps", "a/b"])
def test_stored_slug_rules(slug: str) -> None:
    f = fields()
    with pytest.raises(ValidationError):
        Interface(**f.model_dump(by_alias=False), pk=1, slug=slug, created="2024-01-01")
