"""Early output checks: fail fast, with a message the user can act on.

The platform validates every output again after the job; these checks only spare a round
trip and put the reason in the result. Images are checked by their headers only, where
SimpleITK/tifffile are installed (not in the static runner).
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Mapping, Sequence
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


def _reopened(fd: int) -> str:
    """A name for the open output ``fd`` that reaches its very inode, whatever its name under
    the output root reaches now (a process of the algorithm may still change it)."""
    return f"/proc/self/fd/{fd}"


def check_json(fd: int | None, output: ExpectedOutput) -> str | None:
    name = output.relative_path
    if fd is None:
        return f"Output file '{name}' was not produced"
    if os.fstat(fd).st_size > MAX_JSON_BYTES:
        return f"The output file '{name}' is too large for a json value"
    try:
        with open(_reopened(fd), "rb") as handle:
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


def check_image(files: Mapping[str, int], output: ExpectedOutput) -> str | None:
    name = output.relative_path
    images = sorted(
        relative
        for relative in files
        if posixpath.dirname(relative) == name
        and not _has_extension(relative, COMPANION_EXTENSIONS)
    )
    if not images:
        return f"Output directory '{name}' is empty"
    if len(images) > 1:
        return f"Only 1 image should be produced in '{name}', we found {len(images)}"
    image = posixpath.basename(images[0])
    if not _has_extension(image, ITK_EXTENSIONS + TIFF_EXTENSIONS):
        supported = ", ".join(ITK_EXTENSIONS + TIFF_EXTENSIONS)
        return f"The file '{image}' in '{name}' is not a supported image ({supported})"
    try:
        with tempfile.TemporaryDirectory(prefix="gantry-check-") as folder:
            # The readers pick the format by the file's name: a link of that name to the
            # open file.
            link = Path(folder) / image
            os.symlink(_reopened(files[images[0]]), link)
            read_image_header(link)
    except ImportError:
        # The static runner ships without SimpleITK and tifffile (264 MB): the platform's
        # validation after the job, which decides anyway, reads the image.
        return None
    except Exception:
        return f"The image '{image}' in '{name}' could not be read"
    return None


def check_outputs(outputs: Sequence[ExpectedOutput], files: Mapping[str, int]) -> dict[str, str]:
    """Problems found, keyed by socket slug, in the order the task lists the outputs.

    ``files``: the outputs as stored, by relative path, each open (``upload_outputs``): the
    checks read those, never a name under the output root again.
    """
    errors: dict[str, str] = {}
    for output in outputs:
        category = _category(output.kind, output.relative_path)
        if category == "json":
            error = check_json(files.get(output.relative_path), output)
        elif category == "image":
            error = check_image(files, output)
        else:
            exists = output.relative_path in files
            error = None if exists else f"Output file '{output.relative_path}' was not produced"
        if error:
            errors[output.slug] = error
    return errors
