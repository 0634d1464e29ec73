"""Early output checks: fail fast, with a message the user can act on.

The platform validates every output again after the job; these checks only spare a round
trip and put the reason in the result. Images are checked by their headers only, where
SimpleITK/tifffile are installed (not in the static runner).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gantry.contract import ExpectedOutput

# Formats whose headers SimpleITK reads without loading pixels.
ITK_EXTENSIONS = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")
TIFF_EXTENSIONS = (".tif", ".tiff")
# Pixel data next to an .mhd header; not an image of its own.
COMPANION_EXTENSIONS = (".raw", ".zraw")
# Parsing a JSON output holds it in memory; anything larger is a file, not a value.
MAX_JSON_BYTES = 256 * 1024 * 1024


def _category(kind: str, relative_path: str) -> str:
    try:
        from gantry.kinds import spec

        return str(spec(kind).category.value)
    except Exception:
        # Unknown kind: judge by the path, as the platform lays values out.
        if relative_path.endswith(".json"):
            return "json"
        return "image" if relative_path.startswith("images/") else "file"


def _has_extension(name: str, extensions: Sequence[str]) -> bool:
    lowered = name.lower()
    return any(lowered.endswith(ext) for ext in extensions)


def check_json(path: Path, output: ExpectedOutput) -> str | None:
    name = output.relative_path
    if not path.is_file() or path.is_symlink():
        return f"Output file '{name}' was not produced"
    if path.stat().st_size > MAX_JSON_BYTES:
        return f"The output file '{name}' is too large for a json value"
    try:
        with path.open("rb") as handle:
            value: Any = json.load(handle)
    except (ValueError, UnicodeDecodeError):
        return f"The output file '{name}' is not valid json"
    schemas = list(output.schemas)
    if not schemas:
        try:
            from gantry.kinds import spec

            default = spec(output.kind).schema
            schemas = [default] if default else []
        except Exception:
            schemas = []
    if not schemas:
        return None
    from gantry.kinds import validate_json

    errors = validate_json(value, schemas)
    if errors:
        return f"The output file '{name}' is not valid: {errors[0]}"
    return None


def read_image_header(path: Path) -> None:
    """Raise if ``path`` is not a readable image; reads headers/tags only."""
    if _has_extension(path.name, TIFF_EXTENSIONS):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.pages or tif.pages[0].shape is None:
                raise ValueError("no image in the file")
        return
    import SimpleITK

    reader = SimpleITK.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()


def check_image(directory: Path, output: ExpectedOutput) -> str | None:
    name = output.relative_path
    if not directory.is_dir() or directory.is_symlink():
        return f"Output directory '{name}' is empty"
    files = sorted(
        entry
        for entry in directory.iterdir()
        if entry.is_file()
        and not entry.is_symlink()
        and not _has_extension(entry.name, COMPANION_EXTENSIONS)
    )
    if not files:
        return f"Output directory '{name}' is empty"
    if len(files) > 1:
        return f"Only 1 image should be produced in '{name}', we found {len(files)}"
    image = files[0]
    if not _has_extension(image.name, ITK_EXTENSIONS + TIFF_EXTENSIONS):
        supported = ", ".join(ITK_EXTENSIONS + TIFF_EXTENSIONS)
        return f"The file '{image.name}' in '{name}' is not a supported image ({supported})"
    try:
        read_image_header(image)
    except ImportError:
        # The static runner ships without SimpleITK and tifffile (264 MB): the platform's
        # validation after the job, which decides anyway, reads the image.
        return None
    except Exception:
        return f"The image '{image.name}' in '{name}' could not be read"
    return None


def check_outputs(outputs: Sequence[ExpectedOutput], output_root: Path) -> dict[str, str]:
    """Problems found, keyed by socket slug, in the order the task lists the outputs."""
    errors: dict[str, str] = {}
    for output in outputs:
        path = output_root / output.relative_path
        category = _category(output.kind, output.relative_path)
        if category == "json":
            error = check_json(path, output)
        elif category == "image":
            error = check_image(path, output)
        else:
            exists = os.path.isfile(path) and not os.path.islink(path)
            error = None if exists else f"Output file '{output.relative_path}' was not produced"
        if error:
            errors[output.slug] = error
    return errors
