"""Interfaces (grand-challenge's "sockets"): a typed, named slot for an algorithm's input or output.

An interface says what kind a value is, where the algorithm finds it (``relative_path`` under
/input or /output) and which extra rules a value must follow (``schema``). The rules here are
grand-challenge's ``ComponentInterface.clean`` ones, so a socket that is valid there is valid
here. pydantic and stdlib only: the API Lambdas import this.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gantry.kinds import (
    InterfaceKind,
    InvalidSchemaError,
    KindSpec,
    SuperKind,
    check_schema,
    spec,
    validate_kind_value,
)
from gantry.kinds import super_kind as _super_kind
from gantry.paths import validate_relative_path

MAX_JSON_BYTES = 64 * 1024
MAX_DESCRIPTION = 10_000
MAX_SEGMENTS = 64  # panimg reads segments of (u)int8 images, grand-challenge caps them at 64
IMAGES_PREFIX = "images/"

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


class OverlaySegment(BaseModel):
    """A category of voxel values in a segmentation, as the viewer shows it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    visible: bool = True
    voxel_value: int = Field(ge=0)


ColorInterpolation = Literal["RGB", "HLS", "HLSpos", "HLSneg", "Constant"]


class LookUpTable(BaseModel):
    """A viewer look-up table, the fields of grand-challenge's (and gcapi's) LookUpTable."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    pk: int = 0
    slug: str = ""
    title: Title
    description: str = ""
    color: str = Field(min_length=1)
    alpha: str = Field(min_length=1)
    color_invert: str | None = None
    alpha_invert: str | None = None
    range_min: int = 0
    range_max: int = 4095
    relative: bool = False
    color_interpolation: ColorInterpolation = "RGB"
    color_interpolation_invert: ColorInterpolation = "RGB"

    @model_validator(mode="after")
    def _defaults(self) -> LookUpTable:
        if not self.slug:
            self.slug = slugify(self.title)
        if self.range_min > self.range_max:
            raise ValueError("range_min must not be greater than range_max")
        return self


def slugify(title: str) -> str:
    """Lower-case ASCII with hyphens, like Django's slugify; at most 255 characters."""
    text = unicodedata.normalize("NFKD", str(title)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text.lower())
    return re.sub(r"[-\s]+", "-", text).strip("-_")[:255].strip("-_")


def _json_size(value: Any, what: str) -> None:
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON (no NaN or Infinity): {error}") from None
    if len(text.encode()) > MAX_JSON_BYTES:
        raise ValueError(f"{what} must be at most {MAX_JSON_BYTES // 1024} KiB as JSON")


def _kind_spec(info: ValidationInfo) -> KindSpec | None:
    """The already validated kind, or None when ``kind`` itself failed (reported there)."""
    kind = info.data.get("kind")
    return spec(kind) if kind is not None else None


class InterfaceFields(BaseModel):
    """What a user sends to create or replace an interface.

    ``store_in_database`` defaults to True for JSON kinds that may be kept in the database
    (every JSON kind but the Multiple* annotation collections) and False otherwise, so a
    payload need not mention it.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    # Field order matters: later validators read earlier, already validated fields.
    title: Title
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    kind: InterfaceKind
    relative_path: str
    store_in_database: bool = False
    extra_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    default_value: Any = None
    overlay_segments: list[OverlaySegment] | None = Field(default=None, validate_default=True)
    look_up_table: LookUpTable | None = None

    @model_validator(mode="before")
    @classmethod
    def _store_in_database_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("store_in_database") is None:
            try:
                s = spec(data.get("kind"))  # type: ignore[arg-type]
            except ValueError:
                return data  # the kind's own validator reports it
            data = {**data, "store_in_database": s.is_json and not s.is_multiple}
        return data

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        if not slugify(value):
            raise ValueError("must contain at least one ASCII letter or digit")
        return value

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> InterfaceKind:
        if not isinstance(value, str):
            raise ValueError("must be a kind's code, label or name")
        return spec(value).kind

    @field_validator("relative_path")
    @classmethod
    def _relative_path(cls, value: str, info: ValidationInfo) -> str:
        validate_relative_path(value)
        s = _kind_spec(info)
        if s is None:
            return value
        name = value.rsplit("/", 1)[-1]
        if s.is_image:
            # An image socket is a directory the image file goes into.
            if not value.startswith(IMAGES_PREFIX) or value == IMAGES_PREFIX.rstrip("/"):
                raise ValueError(f"must start with '{IMAGES_PREFIX}' for {s.label} interfaces")
            if "." in name:
                raise ValueError(
                    f"must name a directory (no extension) for {s.label} interfaces, "
                    f"e.g. '{IMAGES_PREFIX}{name.split('.', 1)[0] or 'ct'}'"
                )
        else:
            if value.startswith(IMAGES_PREFIX):
                raise ValueError(f"must not start with '{IMAGES_PREFIX}' for {s.label} interfaces")
            if not value.endswith(s.extension) or name == s.extension:
                raise ValueError(f"must be a file name ending with '{s.extension}' for {s.label}")
        return value

    @field_validator("store_in_database")
    @classmethod
    def _store_in_database(cls, value: bool, info: ValidationInfo) -> bool:
        s = _kind_spec(info)
        if value and s is not None:
            if not s.is_json:
                raise ValueError(f"only JSON kinds can be stored in the database, not {s.label}")
            if s.is_multiple:
                raise ValueError(f"{s.label} values can be large and are never stored in it")
        return value

    @field_validator("extra_schema")
    @classmethod
    def _extra_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return {}
        _json_size(value, "the schema")
        try:
            check_schema(value)
        except InvalidSchemaError as error:
            raise ValueError(f"is not a valid JSON schema: {error}") from None
        return value

    @field_validator("default_value")
    @classmethod
    def _default_value(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        s = _kind_spec(info)
        if s is None:
            return value
        if not s.is_json:
            raise ValueError(f"only JSON kinds may have a default value, not {s.label}")
        _json_size(value, "the default value")
        errors = validate_kind_value(s.kind, value, info.data.get("extra_schema"))
        if errors:
            raise ValueError("does not match the schema: " + "; ".join(errors))
        return value

    @field_validator("overlay_segments")
    @classmethod
    def _overlay_segments(
        cls, value: list[OverlaySegment] | None, info: ValidationInfo
    ) -> list[OverlaySegment] | None:
        s = _kind_spec(info)
        if s is None:
            return value
        if s.kind is not InterfaceKind.SEGMENTATION:
            if value:
                raise ValueError(f"only Segmentation interfaces have them, not {s.label}")
            return None
        if not value:
            raise ValueError("are required for Segmentation interfaces")
        if len(value) > MAX_SEGMENTS:
            raise ValueError(f"at most {MAX_SEGMENTS} segments are supported")
        names = [segment.name for segment in value]
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique: {_duplicates(names)}")
        values = [segment.voxel_value for segment in value]
        if len(set(values)) != len(values):
            raise ValueError(f"voxel values must be unique: {_duplicates(values)}")
        # 0 is the implicit background (grand-challenge's rule): 1..n need not declare it.
        allowed = sorted({0, *values})
        if allowed != list(range(len(allowed))):
            missing = sorted(set(range(allowed[-1] + 1)) - set(allowed))
            raise ValueError(f"voxel values must be contiguous from 0; missing {missing}")
        return value

    @field_validator("look_up_table")
    @classmethod
    def _look_up_table(cls, value: LookUpTable | None, info: ValidationInfo) -> LookUpTable | None:
        s = _kind_spec(info)
        if value is not None and s is not None and not s.is_image:
            raise ValueError(f"only image interfaces have one, not {s.label}")
        return value

    @property
    def spec(self) -> KindSpec:
        return spec(self.kind)

    @property
    def super_kind(self) -> SuperKind:
        return _super_kind(self.kind, self.store_in_database)


def _duplicates(items: list[Any]) -> list[Any]:
    return sorted(item for item, count in Counter(items).items() if count > 1)


class Interface(InterfaceFields):
    """A stored interface."""

    pk: int = Field(ge=1)
    slug: str = Field(min_length=1, max_length=255, pattern=r"^[a-z0-9_-]+$")
    created: str = Field(min_length=1)


def format_errors(error: ValidationError) -> list[str]:
    """'field: message' lines for a user, e.g. "relative_path: must start with 'images/' ..."."""
    lines = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {message}" if loc else message)
    return lines


# --- Values -----------------------------------------------------------------------------------


class InterfaceValueError(ValueError):
    """A value that does not fit its interface; the message names the interface."""

    def __init__(self, slug: str, errors: list[str]) -> None:
        self.slug = slug
        self.errors = errors
        super().__init__(f"Value for '{slug}' is invalid: {'; '.join(errors)}")


def value_errors(interface: InterfaceFields, value: Any) -> list[str]:
    """Why ``value`` is not a valid inline value for ``interface`` (empty when it is).

    JSON kinds must satisfy the kind's default schema and the interface's extra schema.
    Images and files are uploaded, never given inline.
    """
    s = spec(interface.kind)
    if not s.is_json:
        medium = "an image" if s.is_image else "a file"
        return [f"a {s.label} value must be uploaded as {medium}, not given inline"]
    return validate_kind_value(s.kind, value, interface.extra_schema)


def validate_value(interface: InterfaceFields, value: Any) -> None:
    """Raise InterfaceValueError (naming the interface) unless ``value`` fits ``interface``."""
    errors = value_errors(interface, value)
    if errors:
        raise InterfaceValueError(_slug_of(interface), errors)


def _slug_of(interface: InterfaceFields) -> str:
    slug = getattr(interface, "slug", None)
    return slug if isinstance(slug, str) and slug else slugify(interface.title)


# --- Updates ----------------------------------------------------------------------------------


class ImmutableFieldError(ValueError):
    """A field that cannot change any more, because values of the interface exist."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _canonical(value: Any) -> str:
    """A JSON value as text that tells 1 from 1.0 and True, and ignores key order."""
    return json.dumps(value, sort_keys=True)


def check_update(
    existing: Interface, new: InterfaceFields, *, has_values: bool, in_algorithm: bool = False
) -> None:
    """Raise ImmutableFieldError if ``new`` changes what existing values or algorithms rely on.

    Once an algorithm uses the interface or values of it exist, its kind, location and default
    value are fixed and its schema may only be kept or dropped: a changed schema could reject
    what an algorithm writes or what is stored, and a job that leaves the input out takes the
    default, so changing it would change the input of jobs on others' algorithms (interfaces
    are shared; only their creator changes them). Once values exist, their storage is fixed
    too, and
    overlay segments may only be added to (or change visibility), as on grand-challenge.
    """
    if not (has_values or in_algorithm):
        return
    reason = (
        "cannot be changed because values of this interface exist"
        if has_values
        else "cannot be changed because an algorithm uses this interface"
    )
    if new.kind != existing.kind:
        raise ImmutableFieldError("kind", reason)
    if new.relative_path != existing.relative_path:
        raise ImmutableFieldError("relative_path", reason)
    if new.extra_schema and new.extra_schema != existing.extra_schema:
        raise ImmutableFieldError(
            "schema", reason.replace("cannot be changed", "can only be kept or removed")
        )
    if _canonical(new.default_value) != _canonical(existing.default_value):
        raise ImmutableFieldError("default_value", reason)
    if not has_values:
        return
    if new.store_in_database != existing.store_in_database:
        raise ImmutableFieldError("store_in_database", reason)

    def identities(segments: list[OverlaySegment] | None) -> set[tuple[str, int]]:
        return {(s.name, s.voxel_value) for s in segments or []}

    if not identities(existing.overlay_segments) <= identities(new.overlay_segments):
        raise ImmutableFieldError(
            "overlay_segments", "existing segments can only be added to, not changed or removed"
        )


# --- API shape --------------------------------------------------------------------------------


def to_api(interface: Interface) -> dict[str, Any]:
    """The interface as grand-challenge's API returns it (gcapi's ComponentInterface).

    ``kind`` is the label ("2D bounding box"), ``super_kind`` "Image", "File" or "Value",
    ``overlay_segments`` a list ([] when none, as grand-challenge). ``schema`` and
    ``store_in_database`` are extra: clients need them to validate before uploading, and
    gcapi ignores keys it does not know.
    """
    lut = interface.look_up_table
    return {
        "title": interface.title,
        "description": interface.description,
        "slug": interface.slug,
        "kind": spec(interface.kind).label,
        "pk": interface.pk,
        "default_value": interface.default_value,
        "super_kind": interface.super_kind.value,
        "relative_path": interface.relative_path,
        "overlay_segments": [
            segment.model_dump(mode="json") for segment in interface.overlay_segments or []
        ],
        "look_up_table": lut.model_dump(mode="json") if lut is not None else None,
        "schema": interface.extra_schema,
        "store_in_database": interface.store_in_database,
    }
