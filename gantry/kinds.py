"""Interface (socket) kinds: what a value is, how it is stored and how it is validated.

The codes and labels are grand-challenge's, so the API speaks its vocabulary and algorithms
built for grand-challenge find their inputs where they expect them. This module is on the
API Lambdas' cold path: stdlib at import; jsonschema is imported when a JSON value or schema
is first checked (most requests check none), and not at all for the kinds whose schema is a
plain type (String, Integer, Choice, ...) unless an interface adds a schema of its own.
"""

from __future__ import annotations

import copy
import functools
import json
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema.protocols import Validator


class InterfaceKind(StrEnum):
    """Every kind grand-challenge has; the value is its short code."""

    # Values
    STRING = "STR"
    INTEGER = "INT"
    FLOAT = "FLT"
    BOOL = "BOOL"
    ANY = "JSON"
    CHART = "CHART"
    # Annotations
    TWO_D_BOUNDING_BOX = "2DBB"
    MULTIPLE_TWO_D_BOUNDING_BOXES = "M2DB"
    DISTANCE_MEASUREMENT = "DIST"
    MULTIPLE_DISTANCE_MEASUREMENTS = "MDIS"
    POINT = "POIN"
    MULTIPLE_POINTS = "MPOI"
    POLYGON = "POLY"
    MULTIPLE_POLYGONS = "MPOL"
    LINE = "LINE"
    MULTIPLE_LINES = "MLIN"
    ANGLE = "ANGL"
    MULTIPLE_ANGLES = "MANG"
    ELLIPSE = "ELLI"
    MULTIPLE_ELLIPSES = "MELL"
    THREE_POINT_ANGLE = "3ANG"
    MULTIPLE_THREE_POINT_ANGLES = "M3AN"
    # Registration
    AFFINE_TRANSFORM_REGISTRATION = "ATRG"
    # Choices
    CHOICE = "CHOI"
    MULTIPLE_CHOICE = "MCHO"
    # Images
    IMAGE = "IMG"
    SEGMENTATION = "SEG"
    HEAT_MAP = "HMAP"
    DISPLACEMENT_FIELD = "DSPF"
    DICOM_IMAGE_SET = "DCMIS"
    # Files
    PDF = "PDF"
    SQREG = "SQREG"
    THUMBNAIL_JPG = "JPEG"
    THUMBNAIL_PNG = "PNG"
    OBJ = "OBJ"
    MP4 = "MP4"
    NEWICK = "NEWCK"
    BIOM = "BIOM"
    CSV = "CSV"
    ZIP = "ZIP"


class Category(StrEnum):
    JSON = "json"
    IMAGE = "image"
    FILE = "file"


class SuperKind(StrEnum):
    """How a value is held: grand-challenge's API returns these labels as ``super_kind``."""

    IMAGE = "Image"
    FILE = "File"
    VALUE = "Value"


class UnknownKindError(ValueError):
    """Neither a code, a label nor a name of an interface kind."""


class InvalidSchemaError(ValueError):
    """A JSON schema that Gantry cannot use (malformed, unsupported draft, remote $ref)."""


@dataclass(frozen=True)
class KindSpec:
    """Everything the platform needs to know about one kind.

    ``extension`` is the suffix of the file that holds a value. JSON kinds use ``.json``; files
    their format's suffix (grand-challenge's, e.g. ``.jpeg`` for thumbnails). An image socket's
    relative path names a *directory* (``images/<name>``) holding one image file; ``extension``
    is the format Gantry writes (``.mha``), ``stored_extensions`` all it reads (``.mha``,
    ``.tif``/``.tiff``), DICOM image sets hold ``.dcm`` files.

    ``schema`` is the default draft-07 schema every value of a JSON kind must satisfy (None
    otherwise). Treat it as read-only: it is shared.

    ``is_multiple`` marks the collections of annotations (``Multiple points`` ...), whose values
    can be large and are therefore never stored in the database. ``Multiple choice`` is a short
    list of strings and, as on grand-challenge, not one of them.
    """

    kind: InterfaceKind
    label: str
    category: Category
    extension: str
    upload_types: tuple[str, ...]
    schema: dict[str, Any] | None = None
    is_multiple: bool = False
    stored_extensions: tuple[str, ...] = ()

    @property
    def code(self) -> str:
        return self.kind.value

    @property
    def is_json(self) -> bool:
        return self.category is Category.JSON

    @property
    def is_image(self) -> bool:
        return self.category is Category.IMAGE

    @property
    def is_file(self) -> bool:
        return self.category is Category.FILE


# --- Default schemas --------------------------------------------------------------------------
# Modelled on grand-challenge's ANSWER_TYPE_SCHEMA / INTERFACE_VALUE_SCHEMA: the same required
# fields, optional "name" and "probability", no additional properties. Each schema is
# self-contained (local "#/definitions/..." references only) so validation never looks anything
# up elsewhere.

DRAFT_07 = "http://json-schema.org/draft-07/schema#"

_VERSION = {
    "type": "object",
    "properties": {
        # Numbers that are whole, as grand-challenge: 1 and 1.0 both pass.
        "major": {"type": "number", "minimum": 0, "multipleOf": 1.0},
        "minor": {"type": "number", "minimum": 0, "multipleOf": 1.0},
    },
    "required": ["major", "minor"],
    "additionalProperties": False,
}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}


def _point() -> dict[str, Any]:
    """A point in world coordinates: [x, y, z]."""
    return {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}


def _points(count: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": _point()}
    if count is not None:
        schema["minItems"] = schema["maxItems"] = count
    return schema


def _object(
    type_label: str, properties: dict[str, Any], required: list[str], *, single: bool
) -> dict[str, Any]:
    """An annotation object: a whole value (``single``) or an item of a Multiple* value.

    Whole values must carry ``type`` and ``version``; items may repeat ``type`` but need not.
    """
    props: dict[str, Any] = {"name": {"type": "string"}, "type": {"const": type_label}}
    props.update(properties)
    props["probability"] = dict(_PROBABILITY)
    if single:
        props["version"] = {"$ref": "#/definitions/version"}
        required = [*required, "type", "version"]
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def _single(type_label: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "$schema": DRAFT_07,
        "definitions": {"version": copy.deepcopy(_VERSION)},
        **_object(type_label, properties, required, single=True),
    }


def _multiple(
    type_label: str,
    items_key: str,
    item_type_label: str,
    item_properties: dict[str, Any],
    item_required: list[str],
) -> dict[str, Any]:
    item = _object(item_type_label, item_properties, item_required, single=False)
    return {
        "$schema": DRAFT_07,
        "definitions": {"version": copy.deepcopy(_VERSION), "item": item},
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "type": {"const": type_label},
            items_key: {"type": "array", "items": {"$ref": "#/definitions/item"}},
            "version": {"$ref": "#/definitions/version"},
        },
        "required": ["type", "version", items_key],
        "additionalProperties": False,
    }


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": DRAFT_07, **schema}


_BOX = {"corners": _points(4)}
_DISTANCE = {"start": _point(), "end": _point()}
_POINT = {"point": _point()}
_POLYGON = {
    "seed_point": _point(),
    "path_points": _points(),
    "sub_type": {"type": "string"},
    "groups": {"type": "array", "items": {"type": "string"}},
}
_POLYGON_REQUIRED = ["seed_point", "path_points", "sub_type", "groups"]
# A line is drawn through seed points; path_point_lists are the rendered segments.
_LINE = {"seed_points": _points(), "path_point_lists": {"type": "array", "items": _points()}}
_ANGLE = {
    "lines": {"type": "array", "items": _points(2), "minItems": 2, "maxItems": 2},
}
_ELLIPSE = {"major_axis": _points(2), "minor_axis": _points(2)}
_THREE_POINT_ANGLE = {"angle": _points(3)}

# grand-challenge validates charts against the Vega-Lite v5 schema by URL, which means
# fetching a ~2 MB document (or vendoring it) on the API's cold path. Gantry never fetches
# during validation, so it checks the shape only: an object that is a Vega-Lite view (a mark
# or a composition). The viewer validates the full grammar when it renders the chart.
_CHART = _plain(
    {
        "type": "object",
        "properties": {
            "$schema": {"type": "string"},
            "data": {"type": "object"},
            "mark": {"type": ["string", "object"]},
            "encoding": {"type": "object"},
            "layer": {"type": "array", "items": {"type": "object"}},
            "concat": {"type": "array", "items": {"type": "object"}},
            "hconcat": {"type": "array", "items": {"type": "object"}},
            "vconcat": {"type": "array", "items": {"type": "object"}},
            "repeat": {"type": ["array", "object"]},
            "facet": {"type": "object"},
            "spec": {"type": "object"},
            "width": {"type": ["number", "string", "object"]},
            "height": {"type": ["number", "string", "object"]},
        },
        "anyOf": [
            {"required": [key]}
            for key in ("mark", "layer", "concat", "hconcat", "vconcat", "repeat", "facet")
        ],
    }
)

_AFFINE = _plain(
    {
        "type": "object",
        "properties": {
            "3d_affine_transform": {
                "type": "array",
                "minItems": 4,
                "maxItems": 4,
                "items": {
                    "type": "array",
                    "minItems": 4,
                    "maxItems": 4,
                    "items": {"type": "number"},
                },
            }
        },
        "required": ["3d_affine_transform"],
    }
)

K = InterfaceKind

_JSON_SCHEMAS: dict[InterfaceKind, dict[str, Any]] = {
    K.STRING: _plain({"type": "string"}),
    K.INTEGER: _plain({"type": "integer"}),
    K.FLOAT: _plain({"type": "number"}),
    K.BOOL: _plain({"type": "boolean"}),
    K.ANY: _plain({}),
    K.CHART: _CHART,
    K.TWO_D_BOUNDING_BOX: _single("2D bounding box", _BOX, ["corners"]),
    K.MULTIPLE_TWO_D_BOUNDING_BOXES: _multiple(
        "Multiple 2D bounding boxes", "boxes", "2D bounding box", _BOX, ["corners"]
    ),
    K.DISTANCE_MEASUREMENT: _single("Distance measurement", _DISTANCE, ["start", "end"]),
    K.MULTIPLE_DISTANCE_MEASUREMENTS: _multiple(
        "Multiple distance measurements",
        "lines",
        "Distance measurement",
        _DISTANCE,
        ["start", "end"],
    ),
    K.POINT: _single("Point", _POINT, ["point"]),
    K.MULTIPLE_POINTS: _multiple("Multiple points", "points", "Point", _POINT, ["point"]),
    K.POLYGON: _single("Polygon", _POLYGON, _POLYGON_REQUIRED),
    K.MULTIPLE_POLYGONS: _multiple(
        "Multiple polygons", "polygons", "Polygon", _POLYGON, _POLYGON_REQUIRED
    ),
    K.LINE: _single("Line", _LINE, ["seed_points", "path_point_lists"]),
    K.MULTIPLE_LINES: _multiple(
        "Multiple lines", "lines", "Line", _LINE, ["seed_points", "path_point_lists"]
    ),
    K.ANGLE: _single("Angle", _ANGLE, ["lines"]),
    K.MULTIPLE_ANGLES: _multiple("Multiple angles", "angles", "Angle", _ANGLE, ["lines"]),
    K.ELLIPSE: _single("Ellipse", _ELLIPSE, ["major_axis", "minor_axis"]),
    K.MULTIPLE_ELLIPSES: _multiple(
        "Multiple ellipses", "ellipses", "Ellipse", _ELLIPSE, ["major_axis", "minor_axis"]
    ),
    K.THREE_POINT_ANGLE: _single("Three-point angle", _THREE_POINT_ANGLE, ["angle"]),
    K.MULTIPLE_THREE_POINT_ANGLES: _multiple(
        "Multiple three-point angles", "angles", "Three-point angle", _THREE_POINT_ANGLE, ["angle"]
    ),
    K.AFFINE_TRANSFORM_REGISTRATION: _AFFINE,
    K.CHOICE: _plain({"type": "string"}),
    K.MULTIPLE_CHOICE: _plain({"type": "array", "items": {"type": "string"}}),
}

# Labels exactly as grand-challenge displays them (its API returns the label as "kind").
_LABELS: dict[InterfaceKind, str] = {
    K.STRING: "String",
    K.INTEGER: "Integer",
    K.FLOAT: "Float",
    K.BOOL: "Bool",
    K.ANY: "Anything",
    K.CHART: "Chart",
    K.TWO_D_BOUNDING_BOX: "2D bounding box",
    K.MULTIPLE_TWO_D_BOUNDING_BOXES: "Multiple 2D bounding boxes",
    K.DISTANCE_MEASUREMENT: "Distance measurement",
    K.MULTIPLE_DISTANCE_MEASUREMENTS: "Multiple distance measurements",
    K.POINT: "Point",
    K.MULTIPLE_POINTS: "Multiple points",
    K.POLYGON: "Polygon",
    K.MULTIPLE_POLYGONS: "Multiple polygons",
    K.LINE: "Line",
    K.MULTIPLE_LINES: "Multiple lines",
    K.ANGLE: "Angle",
    K.MULTIPLE_ANGLES: "Multiple angles",
    K.ELLIPSE: "Ellipse",
    K.MULTIPLE_ELLIPSES: "Multiple ellipses",
    K.THREE_POINT_ANGLE: "Three-point angle",
    K.MULTIPLE_THREE_POINT_ANGLES: "Multiple three-point angles",
    K.AFFINE_TRANSFORM_REGISTRATION: "Affine transform registration",
    K.CHOICE: "Choice",
    K.MULTIPLE_CHOICE: "Multiple choice",
    K.IMAGE: "Image",
    K.SEGMENTATION: "Segmentation",
    K.HEAT_MAP: "Heat Map",
    K.DISPLACEMENT_FIELD: "Displacement field",
    K.DICOM_IMAGE_SET: "DICOM Image Set",
    K.PDF: "PDF file",
    K.SQREG: "SQREG file",
    K.THUMBNAIL_JPG: "Thumbnail jpg",
    K.THUMBNAIL_PNG: "Thumbnail png",
    K.OBJ: "OBJ file",
    K.MP4: "MP4 file",
    K.NEWICK: "Newick tree-format file",
    K.BIOM: "BIOM format",
    K.CSV: "CSV file",
    K.ZIP: "ZIP file",
}

_MULTIPLE = frozenset(
    {
        K.MULTIPLE_TWO_D_BOUNDING_BOXES,
        K.MULTIPLE_DISTANCE_MEASUREMENTS,
        K.MULTIPLE_POINTS,
        K.MULTIPLE_POLYGONS,
        K.MULTIPLE_LINES,
        K.MULTIPLE_ANGLES,
        K.MULTIPLE_ELLIPSES,
        K.MULTIPLE_THREE_POINT_ANGLES,
    }
)

# Upload restrictions: file suffixes ('.nwk') and MIME types ('text/csv'), as grand-challenge
# gives its upload widget. Images are converted on upload, so they list the formats read.
_JSON_UPLOAD = (".json", "application/json", "text/plain")
_IMAGE_UPLOAD = (
    ".mha",
    ".mhd",
    ".raw",
    ".zraw",
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
    # A DICOM series: one upload per slice, all in one input's user_uploads.
    ".dcm",
)
_IMAGE_STORED = (".mha", ".tif", ".tiff")

_FILES: dict[InterfaceKind, tuple[str, tuple[str, ...]]] = {
    K.PDF: (".pdf", (".pdf", "application/pdf")),
    K.SQREG: (
        ".sqreg",
        (".sqreg", "application/octet-stream", "application/x-sqlite3", "application/vnd.sqlite3"),
    ),
    K.THUMBNAIL_JPG: (".jpeg", (".jpeg", ".jpg", "image/jpeg")),
    K.THUMBNAIL_PNG: (".png", (".png", "image/png")),
    K.OBJ: (".obj", (".obj", "text/plain", "application/octet-stream")),
    K.MP4: (".mp4", (".mp4", "video/mp4")),
    K.NEWICK: (
        ".newick",
        (".newick", ".nwk", ".tree", "text/x-nh", "application/octet-stream"),
    ),
    K.BIOM: (".biom", (".biom", "application/octet-stream")),
    K.CSV: (
        ".csv",
        (".csv", "application/csv", "application/vnd.ms-excel", "text/csv", "text/plain"),
    ),
    K.ZIP: (".zip", (".zip", "application/zip", "application/x-zip-compressed")),
}


def _build_specs() -> tuple[KindSpec, ...]:
    specs: list[KindSpec] = []
    for kind in InterfaceKind:
        label = _LABELS[kind]
        if kind in _JSON_SCHEMAS:
            specs.append(
                KindSpec(
                    kind=kind,
                    label=label,
                    category=Category.JSON,
                    extension=".json",
                    upload_types=_JSON_UPLOAD,
                    schema=_JSON_SCHEMAS[kind],
                    is_multiple=kind in _MULTIPLE,
                    stored_extensions=(".json",),
                )
            )
        elif kind is K.DICOM_IMAGE_SET:
            specs.append(
                KindSpec(
                    kind=kind,
                    label=label,
                    category=Category.IMAGE,
                    extension=".dcm",
                    upload_types=(".dcm", "application/dicom"),
                    stored_extensions=(".dcm",),
                )
            )
        elif kind in _FILES:
            extension, uploads = _FILES[kind]
            specs.append(
                KindSpec(
                    kind=kind,
                    label=label,
                    category=Category.FILE,
                    extension=extension,
                    upload_types=uploads,
                    stored_extensions=(extension,),
                )
            )
        else:
            specs.append(
                KindSpec(
                    kind=kind,
                    label=label,
                    category=Category.IMAGE,
                    extension=".mha",
                    upload_types=_IMAGE_UPLOAD,
                    stored_extensions=_IMAGE_STORED,
                )
            )
    return tuple(specs)


ALL_SPECS: tuple[KindSpec, ...] = _build_specs()
_BY_KIND: dict[InterfaceKind, KindSpec] = {s.kind: s for s in ALL_SPECS}


def _build_lookup() -> dict[str, KindSpec]:
    lookup: dict[str, KindSpec] = {}
    for s in ALL_SPECS:
        for key in (s.code, s.label, s.kind.name):
            folded = key.casefold()
            # A name that meant two kinds would make lookups depend on order: refuse to start.
            if lookup.get(folded, s) is not s:
                raise RuntimeError(f"{key!r} names both {lookup[folded].label} and {s.label}")
            lookup[folded] = s
    return lookup


_LOOKUP = _build_lookup()


def valid_kinds_text() -> str:
    return ", ".join(f"{s.label} ({s.code})" for s in ALL_SPECS)


def spec(kind: InterfaceKind | str) -> KindSpec:
    """The spec of a kind given as enum, code ('2DBB'), label ('2D bounding box') or name."""
    if isinstance(kind, InterfaceKind):
        return _BY_KIND[kind]
    if isinstance(kind, str):
        found = _LOOKUP.get(kind.strip().casefold())
        if found is not None:
            return found
    raise UnknownKindError(f"Unknown interface kind {kind!r}. Valid kinds: {valid_kinds_text()}")


def super_kind(kind: InterfaceKind | str, store_in_database: bool) -> SuperKind:
    """Image for images; Value for JSON kinds kept in the database; File for everything else."""
    s = spec(kind)
    if s.is_image:
        return SuperKind.IMAGE
    if s.is_json and store_in_database:
        return SuperKind.VALUE
    return SuperKind.FILE


def accepts_upload(
    kind: InterfaceKind | str, filename: str, content_type: str | None = None
) -> bool:
    """Whether an upload named ``filename`` (and typed ``content_type``) fits the kind."""
    name = filename.casefold()
    mime = (content_type or "").split(";")[0].strip().casefold()
    for allowed in spec(kind).upload_types:
        if allowed.startswith("."):
            if name.endswith(allowed):
                return True
        elif mime and (
            mime == allowed or (allowed.endswith("/*") and mime.startswith(allowed[:-1]))
        ):
            return True
    return False


# --- Validation -------------------------------------------------------------------------------

_MAX_ERRORS = 20
_MAX_MESSAGE = 300


def validator_class(schema: Mapping[str, Any]) -> type[Validator]:
    """The validator for the schema's ``$schema`` (Draft 7 if none); only Draft 7/6/4/3."""
    from jsonschema.validators import (
        Draft3Validator,
        Draft4Validator,
        Draft6Validator,
        Draft7Validator,
        validator_for,
    )

    declared = schema.get("$schema")
    if declared is None:
        return Draft7Validator
    if not isinstance(declared, str):
        raise InvalidSchemaError("'$schema' must be a string")
    cls = validator_for(schema, default=None)
    if cls not in (Draft7Validator, Draft6Validator, Draft4Validator, Draft3Validator):
        raise InvalidSchemaError(
            f"'$schema' {declared!r} is not supported: only Draft 7, 6, 4 or 3 schemas are"
        )
    return cls


def _walk(node: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
        for child in node.values():
            yield from _walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from _walk(child)


def check_schema(schema: Any) -> type[Validator]:
    """Raise InvalidSchemaError unless ``schema`` is a usable Draft 7/6/4/3 schema.

    Usable also means self-contained: a ``$ref`` may point inside the schema ('#/...'), to an
    ``$id`` the schema itself declares, or to a JSON Schema meta-schema; nothing is fetched.
    """
    import jsonschema.exceptions

    if not isinstance(schema, dict):
        raise InvalidSchemaError("must be a JSON object")
    cls = validator_class(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as error:
        path = _path(error.absolute_path)
        raise InvalidSchemaError(f"{path + ': ' if path else ''}{_short(error.message)}") from None
    nodes = list(_walk(schema))
    local_ids = {
        n[key].rstrip("#") for n in nodes for key in ("$id", "id") if isinstance(n.get(key), str)
    }
    for node in nodes:
        ref = node.get("$ref")
        if not isinstance(ref, str):
            continue
        target = ref.split("#", 1)[0].rstrip("#")
        if target and target not in local_ids and not _is_metaschema(target):
            raise InvalidSchemaError(
                f"'$ref' {ref!r} cannot be resolved: only references within the schema are "
                "supported, nothing is fetched"
            )
    return cls


def _is_metaschema(uri: str) -> bool:
    import referencing.exceptions
    from jsonschema_specifications import REGISTRY as _METASCHEMAS

    try:
        _METASCHEMAS.contents(uri)
    except referencing.exceptions.NoSuchResource:
        return False
    return True


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


@functools.lru_cache(maxsize=512)
def _compiled(schema_json: str) -> Validator | str:
    """A compiled validator for a canonical schema text, or the reason there is none."""
    import jsonschema.exceptions
    from jsonschema_specifications import REGISTRY as _METASCHEMAS

    schema = json.loads(schema_json)
    try:
        cls = validator_class(schema)
        cls.check_schema(schema)
    except InvalidSchemaError as error:
        return f"schema: {error}"
    except jsonschema.exceptions.SchemaError as error:
        return f"schema is invalid: {_short(error.message)}"
    # The meta-schemas only, with no retrieval: a $ref to anything else is unresolvable, never
    # fetched (jsonschema's default registry would download remote references).
    return cls(schema, registry=_METASCHEMAS)


@functools.cache
def _kind_validator(kind: InterfaceKind) -> Validator | str:
    schema = _BY_KIND[kind].schema
    if schema is None:
        raise ValueError(f"{_BY_KIND[kind].label} is not a JSON kind")
    return _compiled(_canonical(schema))


def _canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _messages(errors: Iterable[tuple[list[Any], str]]) -> list[str]:
    """Readable messages of (path, message) errors: ordered by path, at most _MAX_ERRORS."""
    ordered = sorted(errors, key=lambda error: list(map(str, error[0])))
    messages = [
        f"{path}: {_short(message)}" if (path := _path(parts)) else _short(message)
        for parts, message in ordered[:_MAX_ERRORS]
    ]
    if len(ordered) > _MAX_ERRORS:
        messages.append(f"... and {len(ordered) - _MAX_ERRORS} more errors")
    return messages


def _errors(validator: Validator | str, value: Any) -> list[str]:
    import referencing.exceptions

    if isinstance(validator, str):
        return [validator]
    messages: list[str] = []
    try:
        messages = _messages(
            (list(error.absolute_path), error.message) for error in validator.iter_errors(value)
        )
    except referencing.exceptions.Unresolvable as error:
        ref = getattr(error, "ref", None) or str(error)
        messages.append(f"schema: cannot resolve '$ref' {_short(repr(ref))}: nothing is fetched")
    except RecursionError:
        messages.append("schema: references recurse without end")
    return messages


def validate_json(value: Any, schemas: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """Validate ``value`` against every schema; return readable errors ('path: message').

    Empty and None schemas are skipped. An unusable schema is reported as an error rather than
    raised, so callers (the runner, the output checks) have one failure path.
    """
    messages: list[str] = []
    for schema in schemas:
        if not schema:
            continue
        try:
            key = _canonical(schema)
        except (TypeError, ValueError):
            messages.append("schema: is not valid JSON")
            continue
        messages.extend(_errors(_compiled(key), value))
    return messages


# --- Plain-type schemas, without jsonschema ---------------------------------------------------
# The default schemas of String, Integer, Float, Bool, Anything, Choice and Multiple choice use
# only Draft 7's "type" and "items". Checked here, with jsonschema's own messages, a job with
# such inputs is created without loading jsonschema and the ~40 modules it brings (attrs,
# referencing, rpds, its format checkers) on the API's cold path. Every other schema, an
# interface's extra schema included, goes through jsonschema. tests/unit/test_kinds.py checks
# that both give the same messages.

# Draft 7's type checker (jsonschema._types.draft7_type_checker): a bool is no number, and a
# float with no fraction is an integer.
_TYPES: dict[str, Callable[[Any], bool]] = {
    "array": lambda value: isinstance(value, list),
    "boolean": lambda value: isinstance(value, bool),
    "integer": lambda value: (
        not isinstance(value, bool)
        and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
    ),
    "null": lambda value: value is None,
    "number": lambda value: not isinstance(value, bool) and isinstance(value, numbers.Number),
    "object": lambda value: isinstance(value, dict),
    "string": lambda value: isinstance(value, str),
}


def _is_plain(schema: Any, *, top: bool = True) -> bool:
    """Whether ``schema`` is a Draft 7 schema of at most one "type" and an "items" schema that
    is plain too."""
    if not isinstance(schema, dict):
        return False
    allowed = {"$schema", "type", "items"} if top else {"type", "items"}
    if not set(schema) <= allowed or schema.get("$schema", DRAFT_07) != DRAFT_07:
        return False
    if "type" in schema and schema["type"] not in _TYPES:
        return False
    return "items" not in schema or _is_plain(schema["items"], top=False)


def _plain_errors(
    schema: dict[str, Any], value: Any, path: list[Any]
) -> Iterator[tuple[list[Any], str]]:
    """The errors jsonschema's Draft 7 validator gives for a plain schema, in its order."""
    for keyword, argument in schema.items():
        if keyword == "type" and not _TYPES[argument](value):
            yield path, f"{value!r} is not of type {argument!r}"
        elif keyword == "items" and isinstance(value, list):
            for index, item in enumerate(value):
                yield from _plain_errors(argument, item, [*path, index])


def _kind_errors(kind: InterfaceKind, value: Any) -> list[str]:
    schema = _BY_KIND[kind].schema
    if kind in _PLAIN_KINDS and schema is not None:
        return _messages(_plain_errors(schema, value, []))
    return _errors(_kind_validator(kind), value)


_PLAIN_KINDS = frozenset(kind for kind, schema in _JSON_SCHEMAS.items() if _is_plain(schema))


def validate_kind_value(
    kind: InterfaceKind | str, value: Any, extra_schema: Mapping[str, Any] | None = None
) -> list[str]:
    """Validate a value of a JSON kind against its default schema and an optional extra one."""
    s = spec(kind)
    messages = _kind_errors(s.kind, value)
    if extra_schema:
        messages.extend(validate_json(value, [extra_schema]))
    return messages
