"""The runtime's entry points: a job's folders, single files, and the package's own test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from batch_runner.bioimageio import images, predict, weights
from batch_runner.bioimageio.package import load_plan
from batch_runner.bioimageio.plan import (
    InputPlan,
    ModelPlan,
    OutputPlan,
    PackageError,
    PredictionError,
)

OUTPUT_NAME = "output.mha"


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith(images.IMAGE_SUFFIXES)
    )


def find_input(input_dir: Path, tensor: InputPlan) -> Path:
    """``images/<tensor-id>/`` holds the image (grand-challenge's image sockets)."""
    found = _image_files(input_dir / "images" / tensor.id)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise PredictionError(f"{tensor.id}: several images in images/{tensor.id}/: {names}")
    raise PredictionError(f"{tensor.id}: no image in {input_dir}/images/{tensor.id}/")


def predict_files(
    plan: ModelPlan,
    inputs: dict[str, Path],
    outputs: dict[str, Path],
    *,
    device: str = "auto",
    max_tile: int | None = None,
    batch_size: int | None = None,
    runner: weights.Weights | None = None,
) -> None:
    """Read ``inputs[tensor-id]``, predict, write ``outputs[tensor-id]`` with the input's
    spacing, origin and direction."""
    tensor = plan.inputs[0]
    if tensor.id not in inputs:
        raise PredictionError(f"{tensor.id}: no input file given")
    loaded = images.read(Path(inputs[tensor.id]), tensor)
    runner = runner or weights.load(plan, device)
    predict_loaded(plan, loaded, outputs, runner, max_tile=max_tile, batch_size=batch_size)


def predict_loaded(
    plan: ModelPlan,
    loaded: images.LoadedImage,
    outputs: dict[str, Path],
    runner: weights.Weights,
    *,
    max_tile: int | None = None,
    batch_size: int | None = None,
) -> None:
    """Predict on an image already read and write the outputs: .mha files tile by tile as
    the tiles are computed (unless an output needs statistics of itself)."""
    prediction = predict.start(plan, runner, loaded.array, max_tile=max_tile, batch_size=batch_size)
    wanted = [o for o in plan.outputs if o.id in outputs]
    if not prediction.streamable or any(
        not Path(outputs[o.id]).name.lower().endswith(".mha") for o in wanted
    ):
        results = predict.predict_array(
            plan, runner, loaded.array, max_tile=max_tile, batch_size=batch_size
        )
        for output in wanted:
            images.write(Path(outputs[output.id]), results[output.id], loaded.geometry)
        return
    # The file keeps the input's dimensionality (a 2D model on a one-slice volume).
    file_shape = loaded.file_shape or prediction.shape
    writers: dict[str, images.MhaWriter] = {}
    try:
        for target, blocks in prediction.blocks():
            for output in wanted:
                block = blocks[output.id]
                if output.id not in writers:
                    writers[output.id] = images.MhaWriter(
                        Path(outputs[output.id]),
                        file_shape,
                        output.channels,
                        block.dtype,
                        loaded.geometry,
                    )
                writers[output.id].write(target, block)
    finally:
        for writer in writers.values():
            writer.close()


def run_job(
    model_dir: str | os.PathLike[str],
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    allow_custom_ops: bool = False,
    **options: object,
) -> list[Path]:
    """A job: ``<input>/images/<input-id>/<image>`` in, ``<output>/images/<output-id>/output.mha``
    out. Returns the files written."""
    plan = load_plan(model_dir, allow_custom_ops=allow_custom_ops)
    inputs = {t.id: find_input(Path(input_dir), t) for t in plan.inputs}
    outputs = {o.id: Path(output_dir) / "images" / o.id / OUTPUT_NAME for o in plan.outputs}
    predict_files(plan, inputs, outputs, **options)  # type: ignore[arg-type]
    return list(outputs.values())


def _test_tensor_canonical(array: np.ndarray, tensor: InputPlan | OutputPlan) -> np.ndarray:
    names = ["batch", "channel", *tensor.spatial]
    if array.ndim != len(tensor.model_axes):
        raise PackageError(
            f"{tensor.id}: the test tensor has {array.ndim} axes, "
            f"the description {len(tensor.model_axes)}"
        )
    order = [tensor.model_axes.index(n) for n in names if n in tensor.model_axes]
    array = array.transpose(order)
    if "batch" not in tensor.model_axes:
        array = array[None]
    if "channel" not in tensor.model_axes:
        array = array[:, None]
    return array


def check_test_tensors(
    plan: ModelPlan, *, device: str = "auto", max_tile: int | None = None
) -> dict[str, float]:
    """Run the package's test input; fail unless every test output is reproduced within the
    package's tolerance. Returns the largest absolute difference per output."""
    source = plan.inputs[0]
    if source.test_tensor is None or not source.test_tensor.is_file():
        raise PackageError(f"inputs.{source.id}: missing test tensor")
    raw = _test_tensor_canonical(np.load(source.test_tensor), source)
    results = predict.predict_array(plan, weights.load(plan, device), raw, max_tile=max_tile)
    differences: dict[str, float] = {}
    for output in plan.outputs:
        if output.test_tensor is None or not output.test_tensor.is_file():
            raise PackageError(f"outputs.{output.id}: missing test tensor")
        expected = _test_tensor_canonical(np.load(output.test_tensor), output)
        actual = results[output.id]
        if expected.shape != actual.shape:
            raise PackageError(
                f"outputs.{output.id}: shape {actual.shape} differs from the test tensor's "
                f"{expected.shape}"
            )
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        allowed = output.abs_tolerance + output.rel_tolerance * np.abs(expected)
        differences[output.id] = float(diff.max(initial=0.0))
        if np.any(diff > allowed):
            raise PackageError(
                f"outputs.{output.id}: the weights do not reproduce the test output "
                f"(max difference {differences[output.id]:.3g})"
            )
    return differences
