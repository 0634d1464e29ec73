"""Interface kinds: grand-challenge's codes and labels, default schemas, offline validation."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from jsonschema import Draft7Validator

from gantry import kinds
from gantry.kinds import (
    ALL_SPECS,
    Category,
    InterfaceKind,
    InvalidSchemaError,
    SuperKind,
    UnknownKindError,
    accepts_upload,
    check_schema,
    spec,
    super_kind,
    validate_json,
    validate_kind_value,
)

V = {"major": 1, "minor": 0}
P = [1.0, 2.0, 0.5]

# One valid and one invalid value per JSON kind; the valid ones are grand-challenge's examples
# (trimmed), the invalid ones break one rule each.
EXAMPLES: dict[InterfaceKind, tuple[Any, Any]] = {
    InterfaceKind.STRING: ("Example String", 42),
    InterfaceKind.INTEGER: (42, 4.5),
    InterfaceKind.FLOAT: (42.0, "42"),
    InterfaceKind.BOOL: (True, "true"),
    InterfaceKind.ANY: ({"key": "value", "None": None}, float("nan")),
    InterfaceKind.CHART: (
        {
            "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "data": {"values": [{"a": 1}]},
            "mark": "bar",
            "encoding": {"x": {"field": "a", "type": "quantitative"}},
        },
        {"data": {"values": []}},  # neither a mark nor a composition
    ),
    InterfaceKind.TWO_D_BOUNDING_BOX: (
        {
            "name": "ROI",
            "type": "2D bounding box",
            "corners": [P, P, P, P],
            "probability": 0.95,
            "version": V,
        },
        {"type": "2D bounding box", "corners": [P, P, P], "version": V},
    ),
    InterfaceKind.MULTIPLE_TWO_D_BOUNDING_BOXES: (
        {
            "name": "ROIs",
            "type": "Multiple 2D bounding boxes",
            "boxes": [{"name": "ROI 1", "corners": [P, P, P, P], "probability": 0.9}],
            "version": V,
        },
        {"type": "Multiple 2D bounding boxes", "boxes": [{"corners": [P]}], "version": V},
    ),
    InterfaceKind.DISTANCE_MEASUREMENT: (
        {"type": "Distance measurement", "start": P, "end": P, "version": V},
        {"type": "Distance measurement", "start": P, "version": V},
    ),
    InterfaceKind.MULTIPLE_DISTANCE_MEASUREMENTS: (
        {
            "type": "Multiple distance measurements",
            "lines": [{"name": "d1", "start": P, "end": P}],
            "version": V,
        },
        {"type": "Multiple distance measurements", "lines": [{"start": P}], "version": V},
    ),
    InterfaceKind.POINT: (
        {"name": "POI", "type": "Point", "point": P, "probability": 0.5, "version": V},
        {"type": "Point", "point": P, "probability": 1.5, "version": V},
    ),
    InterfaceKind.MULTIPLE_POINTS: (
        {"type": "Multiple points", "points": [{"point": P}, {"point": P}], "version": V},
        {"type": "Multiple points", "points": [{"point": [1, 2]}], "version": V},
    ),
    InterfaceKind.POLYGON: (
        {
            "type": "Polygon",
            "seed_point": P,
            "path_points": [P, P, P],
            "sub_type": "brush",
            "groups": [],
            "version": V,
        },
        {"type": "Polygon", "seed_point": P, "path_points": [P], "version": V},
    ),
    InterfaceKind.MULTIPLE_POLYGONS: (
        {
            "type": "Multiple polygons",
            "polygons": [
                {"seed_point": P, "path_points": [P, P], "sub_type": "brush", "groups": ["a"]}
            ],
            "version": V,
        },
        {"type": "Multiple polygons", "polygons": [{"seed_point": P}], "version": V},
    ),
    InterfaceKind.LINE: (
        {"type": "Line", "seed_points": [P, P], "path_point_lists": [[P, P]], "version": V},
        {"type": "Line", "seed_points": [P, P], "version": V},
    ),
    InterfaceKind.MULTIPLE_LINES: (
        {
            "type": "Multiple lines",
            "lines": [{"seed_points": [P], "path_point_lists": [[P]]}],
            "version": V,
        },
        {"type": "Multiple lines", "lines": [{"seed_points": [P]}], "version": V},
    ),
    InterfaceKind.ANGLE: (
        {"type": "Angle", "lines": [[P, P], [P, P]], "version": V},
        {"type": "Angle", "lines": [[P, P]], "version": V},
    ),
    InterfaceKind.MULTIPLE_ANGLES: (
        {"type": "Multiple angles", "angles": [{"lines": [[P, P], [P, P]]}], "version": V},
        {"type": "Multiple angles", "angles": [{"lines": [[P], [P]]}], "version": V},
    ),
    InterfaceKind.ELLIPSE: (
        {"type": "Ellipse", "major_axis": [P, P], "minor_axis": [P, P], "version": V},
        {"type": "Ellipse", "major_axis": [P, P], "version": V},
    ),
    InterfaceKind.MULTIPLE_ELLIPSES: (
        {
            "type": "Multiple ellipses",
            "ellipses": [{"major_axis": [P, P], "minor_axis": [P, P], "probability": 0.7}],
            "version": V,
        },
        {"type": "Multiple ellipses", "ellipses": [{"major_axis": [P, P]}], "version": V},
    ),
    InterfaceKind.THREE_POINT_ANGLE: (
        {"type": "Three-point angle", "angle": [P, P, P], "version": V},
        {"type": "Three-point angle", "angle": [P, P], "version": V},
    ),
    InterfaceKind.MULTIPLE_THREE_POINT_ANGLES: (
        {"type": "Multiple three-point angles", "angles": [{"angle": [P, P, P]}], "version": V},
        {"type": "Multiple three-point angles", "angles": [{"angle": [P]}], "version": V},
    ),
    InterfaceKind.AFFINE_TRANSFORM_REGISTRATION: (
        {"3d_affine_transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]},
        {"3d_affine_transform": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
    ),
    InterfaceKind.CHOICE: ("Choice 1", ["Choice 1"]),
    InterfaceKind.MULTIPLE_CHOICE: (["Choice 1", "Choice 2"], "Choice 1"),
}

JSON_KINDS = [s.kind for s in ALL_SPECS if s.category is Category.JSON]


def test_every_json_kind_has_examples() -> None:
    assert set(EXAMPLES) == set(JSON_KINDS)


@pytest.mark.parametrize("kind", JSON_KINDS, ids=str)
def test_default_schema_accepts_valid_example(kind: InterfaceKind) -> None:
    valid, _ = EXAMPLES[kind]
    assert validate_kind_value(kind, valid) == []
    assert validate_json(valid, [spec(kind).schema]) == []


@pytest.mark.parametrize("kind", JSON_KINDS, ids=str)
def test_default_schema_rejects_invalid_example(kind: InterfaceKind) -> None:
    _, invalid = EXAMPLES[kind]
    if kind is InterfaceKind.ANY:
        # Anything accepts every JSON value; NaN is not JSON, so the schema is unusable for it.
        assert validate_kind_value(kind, {"any": [1, None]}) == []
        return
    assert validate_kind_value(kind, invalid) != []


# Charts and affine transforms are open objects, as on grand-challenge; annotations are closed.
def _schema(kind: InterfaceKind) -> dict[str, Any]:
    schema = spec(kind).schema
    assert schema is not None, kind  # every JSON kind has one
    return schema


CLOSED_KINDS = [k for k in JSON_KINDS if _schema(k).get("additionalProperties") is False]


def test_closed_kinds_are_the_annotations() -> None:
    objects = {k for k in JSON_KINDS if _schema(k).get("type") == "object"}
    open_objects = {InterfaceKind.CHART, InterfaceKind.AFFINE_TRANSFORM_REGISTRATION}
    assert set(CLOSED_KINDS) == objects - open_objects
    assert len(CLOSED_KINDS) == 16


@pytest.mark.parametrize("kind", CLOSED_KINDS, ids=str)
def test_annotations_forbid_unknown_fields(kind: InterfaceKind) -> None:
    valid, _ = EXAMPLES[kind]
    errors = validate_kind_value(kind, {**valid, "colour": "red"})
    assert errors == ["Additional properties are not allowed ('colour' was unexpected)"]


def test_annotations_require_type_and_version() -> None:
    box = dict(EXAMPLES[InterfaceKind.TWO_D_BOUNDING_BOX][0])
    del box["version"]
    assert validate_kind_value("2DBB", box) == ["'version' is a required property"]
    box = {**EXAMPLES[InterfaceKind.TWO_D_BOUNDING_BOX][0], "type": "Point"}
    assert validate_kind_value("2DBB", box) == ["type: '2D bounding box' was expected"]
    assert validate_kind_value("POIN", {"type": "Point", "point": P, "version": {"major": 1}}) == [
        "version: 'minor' is a required property"
    ]


@pytest.mark.parametrize("spec_", ALL_SPECS, ids=lambda s: s.code)
def test_default_schemas_are_valid_draft7_and_self_contained(spec_: kinds.KindSpec) -> None:
    if spec_.schema is None:
        assert spec_.category is not Category.JSON
        return
    Draft7Validator.check_schema(spec_.schema)
    check_schema(spec_.schema)  # rejects any $ref that would need a fetch
    assert "vega.github.io" not in str(spec_.schema.get("$ref", ""))


def test_kinds_match_grand_challenge() -> None:
    assert len(ALL_SPECS) == 40
    by_category = {c: {s.code for s in ALL_SPECS if s.category is c} for c in Category}
    assert len(by_category[Category.JSON]) == 25
    assert by_category[Category.IMAGE] == {"IMG", "SEG", "HMAP", "DSPF", "DCMIS"}
    assert by_category[Category.FILE] == {
        "PDF",
        "SQREG",
        "JPEG",
        "PNG",
        "OBJ",
        "MP4",
        "NEWCK",
        "BIOM",
        "CSV",
        "ZIP",
    }
    assert spec("M3AN").label == "Multiple three-point angles"
    assert spec("HMAP").label == "Heat Map"
    assert spec("DCMIS").label == "DICOM Image Set"
    assert spec("NEWCK").label == "Newick tree-format file"
    assert spec("JPEG").extension == ".jpeg"
    assert spec("2DBB").code == "2DBB"


def test_extensions() -> None:
    assert {s.extension for s in ALL_SPECS if s.category is Category.JSON} == {".json"}
    assert spec("PDF").extension == ".pdf"
    assert spec("ZIP").extension == ".zip"
    assert spec("Image").extension == ".mha"
    assert ".tif" in spec("Segmentation").stored_extensions
    assert spec("DICOM Image Set").extension == ".dcm"


def test_multiple_kinds() -> None:
    multiple = {s.code for s in ALL_SPECS if s.is_multiple}
    assert multiple == {"M2DB", "MDIS", "MPOI", "MPOL", "MLIN", "MANG", "MELL", "M3AN"}
    assert not spec("Multiple choice").is_multiple


@pytest.mark.parametrize(
    "given", ["2DBB", "2dbb", "2D bounding box", "2D BOUNDING BOX", "TWO_D_BOUNDING_BOX", " 2DBB "]
)
def test_lookup_by_code_label_or_name(given: str) -> None:
    assert spec(given).kind is InterfaceKind.TWO_D_BOUNDING_BOX


def test_lookup_other_forms() -> None:
    assert spec(InterfaceKind.CSV).label == "CSV file"
    assert spec("anything").kind is InterfaceKind.ANY
    assert spec("json").kind is InterfaceKind.ANY
    assert spec("Thumbnail jpg").kind is InterfaceKind.THUMBNAIL_JPG
    assert spec("img").kind is InterfaceKind.IMAGE


@pytest.mark.parametrize("given", ["nope", "", 3, None])
def test_unknown_kind_lists_valid_kinds(given: Any) -> None:
    with pytest.raises(UnknownKindError) as raised:
        spec(given)
    message = str(raised.value)
    assert repr(given) in message
    assert "2D bounding box (2DBB)" in message
    assert "DICOM Image Set (DCMIS)" in message
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("kind", "in_db", "expected"),
    [
        ("INT", True, SuperKind.VALUE),
        ("INT", False, SuperKind.FILE),
        ("MPOI", False, SuperKind.FILE),
        ("IMG", False, SuperKind.IMAGE),
        ("SEG", True, SuperKind.IMAGE),
        ("PDF", False, SuperKind.FILE),
        ("PDF", True, SuperKind.FILE),
    ],
)
def test_super_kind(kind: str, in_db: bool, expected: SuperKind) -> None:
    assert super_kind(kind, in_db) is expected


def test_super_kind_labels_are_grand_challenges() -> None:
    assert [s.value for s in SuperKind] == ["Image", "File", "Value"]


def test_accepts_upload() -> None:
    assert accepts_upload("PDF", "report.PDF")
    assert accepts_upload("CSV", "data", "text/csv; charset=utf-8")
    assert not accepts_upload("PDF", "report.docx", "application/msword")
    assert accepts_upload("Newick tree-format file", "tree.nwk")
    assert accepts_upload("Image", "ct.nii.gz")
    assert accepts_upload("2DBB", "box.json")


@pytest.mark.parametrize("name", ["photo.png", "PHOTO.PNG", "slide.jpg", "slide.jpeg"])
def test_image_kinds_accept_the_formats_the_importer_converts(name: str) -> None:
    assert accepts_upload("Image", name)
    assert accepts_upload("Segmentation", name)
    assert accepts_upload("Heat Map", name)
    assert not accepts_upload("DICOM Image Set", name)


def test_image_kinds_accept_dicom_slices() -> None:
    assert accepts_upload("Image", "slice-001.dcm", "application/dicom")
    assert accepts_upload("Segmentation", "SLICE.DCM")


def test_image_kinds_refuse_formats_the_importer_cannot_read() -> None:
    assert not accepts_upload("Image", "photo.gif")
    assert not accepts_upload("Image", "photo.bmp")


# --- validate_json ----------------------------------------------------------------------------


def test_errors_name_the_path() -> None:
    value = {"type": "Multiple 2D bounding boxes", "version": V, "boxes": [{"corners": [[1, 2]]}]}
    errors = validate_kind_value("M2DB", value)
    assert "boxes[0].corners: [[1, 2]] is too short" in errors
    assert "boxes[0].corners[0]: [1, 2] is too short" in errors


def test_default_and_extra_schema_both_apply() -> None:
    extra = {"type": "integer", "minimum": 10}
    assert validate_kind_value("INT", 12, extra) == []
    assert validate_kind_value("INT", 5, extra) == ["5 is less than the minimum of 10"]
    # The default schema still applies: a string never passes an Integer interface.
    assert validate_kind_value("INT", "12", {"minimum": 10}) == ["'12' is not of type 'integer'"]
    # Errors of every schema are reported, in order.
    assert validate_json(5.5, [spec("INT").schema, extra]) == [
        "5.5 is not of type 'integer'",
        "5.5 is less than the minimum of 10",
        "5.5 is not of type 'integer'",
    ]


@pytest.mark.parametrize(
    "draft",
    [
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-03/schema#",
    ],
)
def test_extra_schema_drafts(draft: str) -> None:
    schema = {"$schema": draft, "type": "string", "maxLength": 3}
    check_schema(schema)
    assert validate_json("abc", [schema]) == []
    assert validate_json("abcd", [schema]) == ["'abcd' is too long"]


def test_draft3_semantics_are_used() -> None:
    # Draft 3 marks required on the property itself; Draft 7 would ignore this.
    schema = {
        "$schema": "http://json-schema.org/draft-03/schema#",
        "type": "object",
        "properties": {"a": {"type": "string", "required": True}},
    }
    assert validate_json({}, [schema]) == ["a: 'a' is a required property"]
    assert validate_json({"a": "x"}, [schema]) == []


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$schema": "https://json-schema.org/draft/2020-12/schema"}, "only Draft 7, 6, 4 or 3"),
        ({"$schema": "http://example.com/my-draft"}, "only Draft 7, 6, 4 or 3"),
        ({"$schema": 7}, "'$schema' must be a string"),
        ({"type": "strin"}, "type"),
        ({"minimum": "3"}, "minimum"),
        ({"$ref": "https://example.com/schema.json"}, "cannot be resolved"),
        ({"properties": {"a": {"$ref": "other.json#/a"}}}, "cannot be resolved"),
        ([], "must be a JSON object"),
    ],
)
def test_invalid_schemas_are_rejected(schema: Any, message: str) -> None:
    with pytest.raises(InvalidSchemaError) as raised:
        check_schema(schema)
    assert message in str(raised.value)


def test_local_references_are_allowed() -> None:
    check_schema({"definitions": {"a": {"type": "string"}}, "items": {"$ref": "#/definitions/a"}})
    check_schema(
        {
            "$id": "http://example.com/root.json",
            "definitions": {"a": {"type": "string"}},
            "items": {"$ref": "http://example.com/root.json#/definitions/a"},
        }
    )
    meta = {"$ref": "http://json-schema.org/draft-07/schema#"}
    check_schema(meta)
    assert validate_json({"type": "string"}, [meta]) == []
    assert validate_json({"type": 5}, [meta]) != []


def test_invalid_schema_is_reported_not_raised() -> None:
    assert validate_json(1, [{"type": "strin"}]) != []
    assert validate_json(1, [{"$schema": "https://json-schema.org/draft/2020-12/schema"}]) == [
        "schema: '$schema' 'https://json-schema.org/draft/2020-12/schema' is not supported: "
        "only Draft 7, 6, 4 or 3 schemas are"
    ]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record, and refuse, every attempt to open a connection."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


def test_remote_ref_fails_without_fetching(no_network: list[Any]) -> None:
    schema = {"properties": {"a": {"$ref": "https://example.com/remote.json"}}}
    errors = validate_json({"a": 1}, [schema])
    assert errors == [
        "schema: cannot resolve '$ref' 'https://example.com/remote.json': nothing is fetched"
    ]
    assert no_network == []


def test_chart_validates_without_network(no_network: list[Any]) -> None:
    valid, invalid = EXAMPLES[InterfaceKind.CHART]
    assert validate_kind_value("CHART", valid) == []
    assert validate_kind_value("CHART", invalid) != []
    # A value that names a remote $schema is data, not a reference: nothing is fetched.
    assert validate_kind_value("CHART", {**valid, "$ref": "https://example.com/x.json"}) == []
    assert no_network == []


def test_validators_are_cached() -> None:
    schema = {"type": "integer", "multipleOf": 7}
    validate_json(1, [schema])
    before = kinds._compiled.cache_info().hits
    validate_json(14, [dict(schema)])
    assert kinds._compiled.cache_info().hits == before + 1


def test_recursive_schema_is_reported() -> None:
    assert validate_json(1, [{"$ref": "#"}]) == ["schema: references recurse without end"]


def test_many_errors_are_capped() -> None:
    errors = validate_json(list(range(100)), [{"items": {"type": "string"}}])
    assert len(errors) == 21
    assert errors[-1] == "... and 80 more errors"


# Values of every JSON type, edge cases of the type checks (bools are no numbers, 1.0 is an
# integer) and lists with errors past the cap, ordered by index as text.
PLAIN_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -3,
    1.0,
    2.5,
    float("nan"),
    float("inf"),
    "",
    "12",
    "x" * 400,
    [],
    ["a", "b"],
    ["a", 1, None, [2], True, 2.0],
    list(range(100)),
    [str(i) for i in range(12)] + [i for i in range(15)],
    {},
    {"a": [1]},
]


def test_plain_kinds_are_the_simple_ones() -> None:
    K = InterfaceKind
    simple = {K.STRING, K.INTEGER, K.FLOAT, K.BOOL, K.ANY, K.CHOICE, K.MULTIPLE_CHOICE}
    assert simple == kinds._PLAIN_KINDS


@pytest.mark.parametrize("kind", sorted(kinds._PLAIN_KINDS))
def test_plain_kinds_get_jsonschemas_messages(kind: InterfaceKind) -> None:
    validator = Draft7Validator(spec(kind).schema)
    for value in PLAIN_VALUES:
        expected = kinds._errors(validator, value)
        assert validate_kind_value(kind, value) == expected, value


PLAIN_PROBE = """
import sys
from gantry.kinds import validate_kind_value
assert validate_kind_value("INT", "12") == ["'12' is not of type 'integer'"]
assert validate_kind_value("Multiple choice", ["a", 1]) == ["[1]: 1 is not of type 'string'"]
print("jsonschema" in sys.modules)
assert validate_kind_value("INT", 5, {"minimum": 10}) == ["5 is less than the minimum of 10"]
print("jsonschema" in sys.modules)
"""


def test_plain_kinds_are_checked_without_jsonschema() -> None:
    """Creating a job with an Integer input does not load jsonschema on the API's cold path;
    an interface's extra schema still goes through it."""
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_PROBE], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "True"]
