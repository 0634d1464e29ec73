"""Read and validate a bioimage.io model package into a ``ModelPlan``; map its tensors to
Image interfaces.

Validation is ``bioimageio.spec``'s, offline: IO checks (files present, sha256 values) run on
the package's own files; a zoo id or a URL needs the network and is refused before the spec
is asked. Format 0.4 descriptions are validated as written, then converted to 0.5, so the
rest of the runtime reads one format. Whatever the runtime cannot run is refused here with a
message naming the field: weight formats other than ONNX and TorchScript, index and time
axes, axes other than z/y/x, data-dependent output sizes, custom Python operations unless
allowed, several inputs.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from batch_runner.bioimageio import ops
from batch_runner.bioimageio.plan import (
    SPATIAL,
    InputPlan,
    ModelPlan,
    OutputPlan,
    PackageError,
    SpatialAxis,
)

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
SUPPORTED_WEIGHTS = ("onnx", "torchscript")
# Fields whose values are files the runtime or the validation would have to fetch.
_FILE_FIELDS = {
    "source",
    "documentation",
    "covers",
    "attachments",
    "files",
    "test_inputs",
    "test_outputs",
    "sample_inputs",
    "sample_outputs",
    "architecture",
    "dependencies",
}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
MAX_UNPACKED_BYTES = 8 << 30
# A package holds a description, weights, test tensors and a few documents. zipfile reads
# the whole central directory into memory on opening: a zip of millions of empty entries
# (tens of bytes each) would exhaust the import function's memory before any check ran.
MAX_PACKAGE_FILES = 10_000


def _check_source(source: str | os.PathLike[str]) -> Path:
    text = str(source)
    if _URL.match(text):
        raise PackageError(
            f"'{text}' is a URL: Gantry reads model packages from local files only "
            "(no network); download the package zip and upload it"
        )
    path = Path(text)
    if not path.exists():
        if "/" not in text and not text.endswith((".zip", ".yaml")):
            raise PackageError(
                f"'{text}' looks like a bioimage.io zoo id: resolving it needs the network, "
                "which Gantry does not use; download the package zip and upload it"
            )
        raise PackageError(f"model package '{text}' does not exist")
    return path


def _declared_entries(archive: Path) -> int | None:
    """The number of entries the zip's end record declares (zip64 too), read before
    zipfile loads them all; None where this zipfile has no such reader."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return None
    with archive.open("rb") as handle:
        record = end_record(handle)
    return None if record is None else int(record[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)])


def _safe_extract(archive: Path, target: Path) -> None:
    entries = _declared_entries(archive)
    if entries is not None and entries > MAX_PACKAGE_FILES:
        raise PackageError(f"package zip: more than {MAX_PACKAGE_FILES} files")
    try:
        with zipfile.ZipFile(archive) as zipped:
            if len(zipped.infolist()) > MAX_PACKAGE_FILES:
                raise PackageError(f"package zip: more than {MAX_PACKAGE_FILES} files")
            total = 0
            for info in zipped.infolist():
                name = PurePosixPath(info.filename)
                if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
                    raise PackageError(f"package zip: unsafe path '{info.filename}'")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise PackageError(f"package zip: '{info.filename}' is a symbolic link")
                total += info.file_size
                if total > MAX_UNPACKED_BYTES:
                    raise PackageError("package zip: more than 8 GiB unpacked")
            zipped.extractall(target)
    except zipfile.BadZipFile as error:
        raise PackageError(f"package zip: not a zip file ({error})") from None


def find_rdf(root: Path) -> Path:
    """The package's description file in ``root`` (or in its one top-level folder)."""
    for folder in (root, *[p for p in root.iterdir() if p.is_dir()][:1]):
        for name in RDF_NAMES:
            if (folder / name).is_file():
                return folder / name
        found = sorted(folder.glob("*.bioimageio.yaml"))
        if found:
            return found[0]
    raise PackageError("the package has no rdf.yaml (nor *.bioimageio.yaml)")


def _file_fields(
    node: Any, path: str = "", in_file_field: bool = False
) -> Iterator[tuple[str, str]]:
    """Every string under a file field of the rdf, with its dotted path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _file_fields(
                value, f"{path}.{key}" if path else str(key), in_file_field or key in _FILE_FIELDS
            )
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _file_fields(value, f"{path}.{index}", in_file_field)
    elif isinstance(node, str) and in_file_field:
        yield path, node


def _remote_files(raw: Any) -> Iterator[str]:
    for path, value in _file_fields(raw):
        if _URL.match(value):
            yield f"{path}: {value}"


def _outside_files(raw: Any) -> Iterator[str]:
    """File fields naming an absolute path or climbing out with '..': the validation would
    read (and report the sha256 of) a file of the machine that validates, not the package's."""
    for path, value in _file_fields(raw):
        if _URL.match(value):
            continue
        relative = PurePosixPath(value.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts or value.startswith("~"):
            yield f"{path}: {value}"


# An rdf.yaml holds some hundreds of entries; YAML aliases can make a few lines stand for
# billions (each alias of a list of aliases multiplies), which every walk of it would visit.
MAX_RDF_NODES = 200_000


def _check_size(raw: Any, name: str) -> None:
    """PackageError where ``raw``, aliases expanded, holds more than MAX_RDF_NODES entries."""
    stack, seen = [raw], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_RDF_NODES:
            raise PackageError(
                f"{name}: more than {MAX_RDF_NODES} entries (with its YAML aliases expanded)"
            )
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _read_raw(rdf: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(rdf.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PackageError(f"{rdf.name}: not valid YAML ({error})") from None
    except RecursionError:
        raise PackageError(f"{rdf.name}: nested too deeply to read") from None
    _check_size(raw, rdf.name)
    if not isinstance(raw, dict):
        raise PackageError(f"{rdf.name}: must be a mapping")
    if raw.get("type") != "model":
        raise PackageError(f"{rdf.name}: type must be 'model', not {raw.get('type')!r}")
    remote = list(_remote_files(raw))
    if remote:
        raise PackageError(
            "the package refers to remote files, which need the network Gantry does not use; "
            "put them in the package: " + "; ".join(remote)
        )
    outside = list(_outside_files(raw))
    if outside:
        raise PackageError(
            "the package refers to files outside itself; name them relative to its rdf.yaml, "
            "inside the package: " + "; ".join(outside)
        )
    return raw


def _load_description(rdf: Path) -> Any:
    """The description as format 0.5, validated with IO checks on local files."""
    from bioimageio.spec import InvalidDescr, load_description

    for format_version in ("discover", "latest"):
        descr = load_description(rdf, perform_io_checks=True, format_version=format_version)
        if isinstance(descr, InvalidDescr):
            errors = descr.validation_summary.errors
            lines = [f"{'.'.join(map(str, e.loc)) or 'rdf'}: {e.msg}" for e in errors[:10]]
            # Paths inside the (temporary) unpacked folder are named relative to the package.
            text = "; ".join(lines).replace(f"{rdf.parent}/", "")
            raise PackageError("invalid model package: " + text)
        if getattr(descr, "type", None) != "model":
            raise PackageError("the package does not describe a model")
    return descr


def _axis_indices(axes: Any, spatial: tuple[str, ...], where: str) -> tuple[bool, tuple[int, ...]]:
    """(dataset mode, canonical axes to reduce) for a processing step's ``axes``."""
    ndim = 2 + len(spatial)
    if axes is None:
        return True, tuple(range(ndim))
    names = [str(a) for a in axes]
    index = {"batch": 0, "channel": 1, **{s: 2 + i for i, s in enumerate(spatial)}}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise PackageError(f"{where}: unknown axes {unknown}")
    reduced = {index[n] for n in names}
    spatial_axes = set(range(2, ndim))
    if not spatial_axes <= reduced:
        raise PackageError(
            f"{where}: statistics must reduce all spatial axes together, not only {names}"
        )
    return "batch" in names, tuple(sorted(reduced | {0}))


def _channel_only(axis: Any, where: str) -> None:
    if axis is not None and str(axis) != "channel":
        raise PackageError(f"{where}: per-axis parameters are supported along 'channel' only")


def _convert_op(
    step: Any,
    tensor_id: str,
    spatial: tuple[str, ...],
    where: str,
    custom: Path | None = None,
) -> ops.Op:
    """``custom``: the package folder when its own Python operations may run."""
    kind = str(getattr(step, "id", ""))
    # The spec's kwargs model of this step kind (each kind reads its own fields).
    kwargs: Any = getattr(step, "kwargs", None)
    if kind == "ensure_dtype":
        return ops.EnsureDtype(str(kwargs.dtype))
    if kind == "binarize":
        _channel_only(getattr(kwargs, "axis", None), where)
        return ops.Binarize(kwargs.threshold)
    if kind == "clip":
        dataset, axes = _axis_indices(getattr(kwargs, "axes", None), spatial, where)
        method = "linear" if dataset else "inverted_cdf"

        def quantile(p: float | None) -> ops.Stat | None:
            return None if p is None else ops.Stat(tensor_id, "quantile", axes, p / 100, method)

        return ops.Clip(
            min=kwargs.min,
            max=kwargs.max,
            min_stat=quantile(getattr(kwargs, "min_percentile", None)),
            max_stat=quantile(getattr(kwargs, "max_percentile", None)),
        )
    if kind == "scale_linear":
        _channel_only(getattr(kwargs, "axis", None), where)
        return ops.ScaleLinear(gain=kwargs.gain, offset=kwargs.offset)
    if kind == "sigmoid":
        return ops.Sigmoid()
    if kind == "softmax":
        names = ["batch", "channel", *spatial]
        if str(kwargs.axis) not in names:
            raise PackageError(f"{where}: softmax along unknown axis '{kwargs.axis}'")
        return ops.Softmax(axis=names.index(str(kwargs.axis)))
    if kind == "zero_mean_unit_variance":
        _, axes = _axis_indices(kwargs.axes, spatial, where)
        return ops.ZeroMeanUnitVariance(
            ops.Stat(tensor_id, "mean", axes), ops.Stat(tensor_id, "std", axes), kwargs.eps
        )
    if kind == "fixed_zero_mean_unit_variance":
        _channel_only(getattr(kwargs, "axis", None), where)
        return ops.FixedZeroMeanUnitVariance(kwargs.mean, kwargs.std)
    if kind == "scale_range":
        _, axes = _axis_indices(kwargs.axes, spatial, where)
        ref = str(kwargs.reference_tensor or tensor_id)
        return ops.ScaleRange(
            ops.Stat(ref, "quantile", axes, kwargs.min_percentile / 100, "linear"),
            ops.Stat(ref, "quantile", axes, kwargs.max_percentile / 100, "linear"),
            kwargs.eps,
        )
    if kind == "scale_mean_variance":
        _, axes = _axis_indices(kwargs.axes, spatial, where)
        ref = str(kwargs.reference_tensor)
        return ops.ScaleMeanVariance(
            ops.Stat(tensor_id, "mean", axes),
            ops.Stat(tensor_id, "std", axes),
            ops.Stat(ref, "mean", axes),
            ops.Stat(ref, "std", axes),
            kwargs.eps,
        )
    if kind == "custom" and custom is not None:
        try:
            return ops.Custom(custom / str(step.source), str(step.callable), dict(kwargs or {}))
        except Exception as error:  # the package's own code failed to load
            raise PackageError(f"{where}: custom operation does not load: {error}") from None
    if kind == "custom":
        raise PackageError(
            f"{where}: custom Python operations ('{getattr(step, 'callable', '?')}') run "
            "the package's own code and run only when allowed (--allow-custom-ops)"
        )
    raise PackageError(f"{where}: unknown operation '{kind}'")


def _tensor_axes(tensor: Any, where: str) -> tuple[tuple[str, ...], int, list[Any]]:
    """(model axes, channel count, spatial axis descriptions in canonical order)."""
    names: list[str] = []
    channels = 1
    spatial: dict[str, Any] = {}
    for axis in tensor.axes:
        kind = axis.type
        if kind == "batch":
            names.append("batch")
        elif kind == "channel":
            names.append("channel")
            channels = len(axis.channel_names)
        elif kind == "space":
            if str(axis.id) not in SPATIAL:
                raise PackageError(
                    f"{where}: space axis '{axis.id}' cannot be mapped to an image (z, y, x)"
                )
            names.append(str(axis.id))
            spatial[str(axis.id)] = axis
        else:
            raise PackageError(
                f"{where}: {kind} axis '{axis.id}' cannot be mapped to an image "
                "(only batch, channel and z/y/x axes can)"
            )
    if not 2 <= len(spatial) <= 3:
        raise PackageError(f"{where}: needs 2 or 3 spatial axes, has {list(spatial)}")
    ordered = [spatial[s] for s in SPATIAL if s in spatial]
    return tuple(names), channels, ordered


def _dtype(tensor: Any) -> str:
    data = tensor.data
    return str((data[0] if isinstance(data, list | tuple) else data).type)


def _input_plan(tensor: Any, root: Path, custom: Path | None) -> InputPlan:
    from bioimageio.spec.model import v0_5

    where = f"inputs.{tensor.id}"
    model_axes, channels, spatial = _tensor_axes(tensor, where)
    axes = []
    for axis in spatial:
        size = axis.size
        if isinstance(size, int):
            axes.append(SpatialAxis(str(axis.id), size, 0))
        elif isinstance(size, v0_5.ParameterizedSize):
            axes.append(SpatialAxis(str(axis.id), size.min, size.step))
        else:
            raise PackageError(f"{where}.{axis.id}: sizes referring to other tensors")
    batch = next((a for a in tensor.axes if a.type == "batch"), None)
    spatial_ids = tuple(str(a.id) for a in spatial)
    steps = [*tensor.preprocessing]
    pad = getattr(tensor, "pad", None)
    return InputPlan(
        id=str(tensor.id),
        model_axes=model_axes,
        channels=channels,
        spatial=spatial_ids,
        dtype=_dtype(tensor),
        processing=[
            _convert_op(s, str(tensor.id), spatial_ids, f"{where}.preprocessing.{i}", custom)
            for i, s in enumerate(steps)
        ],
        test_tensor=_local(tensor.test_tensor, root),
        pad_mode=getattr(pad, "mode", "symmetric"),
        pad_value=float(getattr(pad, "value", 0.0) or 0.0),
        description=str(tensor.description or ""),
        axes=tuple(axes),
        batch_size=None if batch is None or batch.size is None else int(batch.size),
    )


def _output_plan(tensor: Any, source: InputPlan, root: Path, custom: Path | None) -> OutputPlan:
    from bioimageio.spec.model import v0_5

    where = f"outputs.{tensor.id}"
    model_axes, channels, spatial = _tensor_axes(tensor, where)
    spatial_ids = tuple(str(a.id) for a in spatial)
    if spatial_ids != source.spatial:
        raise PackageError(f"{where}: spatial axes {spatial_ids} differ from the input's")
    halo = []
    for axis in spatial:
        size = axis.size
        if isinstance(size, v0_5.SizeReference):
            if str(size.tensor_id) != source.id or str(size.axis_id) != str(axis.id):
                raise PackageError(f"{where}.{axis.id}: must follow input axis '{axis.id}'")
            if size.offset != 0 or axis.scale != 1.0:
                raise PackageError(f"{where}.{axis.id}: outputs of another size or scale")
        elif isinstance(size, int):
            fixed = next(a for a in source.axes if a.id == str(axis.id))
            if fixed.step != 0 or fixed.min != size:
                raise PackageError(f"{where}.{axis.id}: fixed size {size} differs from input")
        else:
            raise PackageError(f"{where}.{axis.id}: data-dependent output sizes")
        halo.append(int(getattr(axis, "halo", 0) or 0))
    return OutputPlan(
        id=str(tensor.id),
        model_axes=model_axes,
        channels=channels,
        spatial=spatial_ids,
        dtype=_dtype(tensor),
        processing=[
            _convert_op(s, str(tensor.id), spatial_ids, f"{where}.postprocessing.{i}", custom)
            for i, s in enumerate(tensor.postprocessing)
        ],
        test_tensor=_local(tensor.test_tensor, root),
        description=str(tensor.description or ""),
        halo=tuple(halo),
    )


def _local(file: Any, root: Path) -> Path | None:
    if file is None:
        return None
    return root / str(file.source)


def _tolerances(descr: Any, outputs: list[OutputPlan]) -> None:
    config = getattr(getattr(descr, "config", None), "bioimageio", None)
    for entry in getattr(config, "reproducibility_tolerance", None) or []:
        ids = {str(i) for i in entry.output_ids} or {o.id for o in outputs}
        for output in outputs:
            if output.id in ids:
                output.rel_tolerance = float(entry.relative_tolerance)
                output.abs_tolerance = float(entry.absolute_tolerance)


def load_plan(model_dir: str | os.PathLike[str], *, allow_custom_ops: bool = False) -> ModelPlan:
    """Validate the package unpacked in ``model_dir`` and return what the runtime runs;
    ``allow_custom_ops`` loads the package's own Python operations (its code runs here)."""
    root = _check_source(model_dir)
    if not root.is_dir():
        raise PackageError(f"'{root}' is not a folder (unpack the package first)")
    rdf = find_rdf(root)
    _read_raw(rdf)
    descr = _load_description(rdf)
    original = yaml.safe_load(rdf.read_text()).get("format_version", "")
    base = rdf.parent
    available = [f for f in SUPPORTED_WEIGHTS if getattr(descr.weights, f, None) is not None]
    if not available:
        present = [
            name
            for name in type(descr.weights).model_fields
            if getattr(descr.weights, name, None) is not None
        ]
        raise PackageError(
            f"weights: unsupported format(s) {present}; Gantry runs {list(SUPPORTED_WEIGHTS)}"
        )
    weights_format = available[0]
    if len(descr.inputs) != 1:
        raise PackageError(
            f"inputs: models with {len(descr.inputs)} inputs are not supported (one input)"
        )
    custom = base if allow_custom_ops else None
    source = _input_plan(descr.inputs[0], base, custom)
    outputs = [_output_plan(t, source, base, custom) for t in descr.outputs]
    # The input is padded by the largest output halo (all outputs share its grid).
    halo = [max((o.halo[i] for o in outputs), default=0) for i in range(len(source.axes))]
    source.axes = tuple(
        SpatialAxis(a.id, a.min, a.step, h) for a, h in zip(source.axes, halo, strict=True)
    )
    for axis in source.axes:
        if axis.min - 2 * axis.halo <= 0 and axis.step == 0:
            raise PackageError(f"inputs.{source.id}.{axis.id}: size {axis.min} leaves no room")
    _tolerances(descr, outputs)
    for plan_output in outputs:
        for op in plan_output.processing:
            for stat in op.stats:
                if stat.tensor not in {source.id, plan_output.id}:
                    raise PackageError(
                        f"outputs.{plan_output.id}: statistics of unknown tensor '{stat.tensor}'"
                    )
    return ModelPlan(
        name=str(descr.name),
        root=base,
        format_version=str(original),
        weights_format=weights_format,
        weights_path=base / str(getattr(descr.weights, weights_format).source),
        inputs=[source],
        outputs=outputs,
    )


@contextmanager
def unpacked(package: str | os.PathLike[str]) -> Iterator[Path]:
    """The package as a folder: a zip is unpacked into a temporary folder for the block."""
    path = _check_source(package)
    if path.is_dir():
        yield path
        return
    if path.name.endswith((".yaml", ".yml")):
        yield path.parent
        return
    folder = Path(tempfile.mkdtemp(prefix="bioimageio-"))
    try:
        _safe_extract(path, folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def interface_for(tensor: InputPlan | OutputPlan, ndim: int) -> dict[str, Any]:
    """The Image interface of one tensor, in the API's interface-creation shape."""
    layout = "z, y, x" if ndim == 3 else "y, x"
    components = f"{tensor.channels} channel(s) as vector components"
    description = tensor.description or f"bioimage.io tensor '{tensor.id}'"
    return {
        "title": tensor.id,
        "kind": "Image",
        "relative_path": f"images/{tensor.id}",
        "description": f"{description} ({ndim}D: {layout}; {components}; {tensor.dtype})"[:1000],
    }


def interfaces(plan: ModelPlan) -> dict[str, list[dict[str, Any]]]:
    """The algorithm's inputs and outputs: one Image interface per tensor (batch dropped,
    channels as vector components, z/y/x spatial)."""
    return {
        "inputs": [interface_for(t, plan.ndim) for t in plan.inputs],
        "outputs": [interface_for(t, plan.ndim) for t in plan.outputs],
    }


def validate_package(
    package: str | os.PathLike[str], *, allow_custom_ops: bool = False
) -> dict[str, Any]:
    """Validate a package (zip, folder or rdf.yaml): its name, format, weights and interfaces."""
    with unpacked(package) as folder:
        plan = load_plan(folder, allow_custom_ops=allow_custom_ops)
        return {
            "name": plan.name,
            "format_version": plan.format_version,
            "weights_format": plan.weights_format,
            **interfaces(plan),
        }
