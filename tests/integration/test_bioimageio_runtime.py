"""The bioimage.io runtime: tiling without seams, jobs on image files, streamed statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnx")

import SimpleITK as sitk

from batch_runner.bioimageio import predict, stats, weights
from batch_runner.bioimageio.__main__ import main
from batch_runner.bioimageio.package import load_plan
from tests.bioimageio_support import build_package, reference_predict


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ndim", "shape", "max_tile"),
    [(2, (304, 240), 96), (2, (304, 240), 128), (3, (48, 80, 64), 64)],
)
def test_tiles_meet_without_seams(
    tmp_path: Path, ndim: int, shape: tuple[int, ...], max_tile: int
) -> None:
    package = build_package(tmp_path / "model", ndim=ndim)
    plan = load_plan(package.directory)
    image = np.random.default_rng(1).gamma(2.0, 20.0, shape).astype(np.float32)
    tiles = predict.plan_tiles(plan.inputs[0], shape, max_tile)
    assert sum(len(t.starts) > 1 for t in tiles) >= 2  # tiled along two axes at least
    assert any(n % t.stride for n, t in zip(shape, tiles, strict=True))  # nor divides evenly

    tiled = predict.predict_array(plan, weights.load(plan), image[None, None], max_tile=max_tile)

    expected = reference_predict(plan.weights_path, image[None], ndim)
    np.testing.assert_allclose(tiled["prob"][0], expected, atol=1e-5)


def _run_args(model: Path, tmp_path: Path) -> list[str]:
    folders = ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out")]
    return ["run", "--model", str(model), *folders]


@pytest.mark.slow
def test_a_job_reads_images_and_writes_outputs_with_their_geometry(tmp_path: Path) -> None:
    package = build_package(tmp_path / "model")
    image = np.random.default_rng(2).integers(0, 255, (70, 90)).astype(np.uint8)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing((0.5, 0.25))
    itk.SetOrigin((10.0, -3.0))
    itk.SetDirection((0.0, 1.0, 1.0, 0.0))
    (tmp_path / "in" / "images" / "raw").mkdir(parents=True)
    sitk.WriteImage(itk, str(tmp_path / "in" / "images" / "raw" / "cells.mha"))

    code = main(
        [
            "run",
            "--model",
            str(package.directory),
            "--input-dir",
            str(tmp_path / "in"),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )

    assert code == 0
    result = sitk.ReadImage(str(tmp_path / "out" / "images" / "prob" / "output.mha"))
    assert result.GetSize() == (90, 70)
    assert result.GetNumberOfComponentsPerPixel() == 2
    assert result.GetSpacing() == (0.5, 0.25)
    assert result.GetOrigin() == (10.0, -3.0)
    assert result.GetDirection() == (0.0, 1.0, 1.0, 0.0)
    values = sitk.GetArrayFromImage(result)
    assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= 1.0


def test_a_job_without_its_input_fails_with_a_reason(tmp_path: Path, capsys) -> None:
    package = build_package(tmp_path / "model")
    (tmp_path / "in").mkdir()

    code = main(_run_args(package.directory, tmp_path))

    assert code == 1
    assert "raw: no image in" in capsys.readouterr().err


def test_an_image_of_the_wrong_dimensionality_fails_with_a_reason(tmp_path: Path, capsys) -> None:
    package = build_package(tmp_path / "model")
    (tmp_path / "in" / "images" / "raw").mkdir(parents=True)
    volume = sitk.GetImageFromArray(np.zeros((4, 70, 90), np.float32))
    sitk.WriteImage(volume, str(tmp_path / "in" / "images" / "raw" / "v.mha"))

    code = main(_run_args(package.directory, tmp_path))

    assert code == 1
    assert "the model takes 2D images, 'v.mha' is 3D" in capsys.readouterr().err


def test_streamed_statistics_equal_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "SLAB_ELEMENTS", 1000)  # many slabs
    rng = np.random.default_rng(5)
    array = rng.normal(100.0, 15.0, (1, 3, 37, 41)).astype(np.float32)

    mean, std = stats.mean_std(array, (0, 2, 3))

    np.testing.assert_allclose(mean, array.astype(np.float64).mean((0, 2, 3), keepdims=True))
    np.testing.assert_allclose(std, array.astype(np.float64).std((0, 2, 3), keepdims=True))


@pytest.mark.parametrize("method", ["linear", "inverted_cdf"])
def test_integer_percentiles_from_the_histogram_equal_numpy(
    method: Literal["linear", "inverted_cdf"],
) -> None:
    array = np.random.default_rng(6).integers(0, 4000, (1, 1, 61, 53)).astype(np.uint16)
    qs = [0.0, 0.013, 0.5, 0.997, 1.0]

    values = stats.quantiles(array, (0, 1, 2, 3), qs, method)

    expected = np.quantile(array, qs, method=method)
    np.testing.assert_allclose([v.item() for v in values], expected)


@pytest.mark.slow
def test_outputs_stream_to_the_file_band_by_band(tmp_path: Path) -> None:
    from batch_runner.bioimageio.runtime import predict_files

    package = build_package(tmp_path / "model", ndim=3)
    plan = load_plan(package.directory)
    volume = np.random.default_rng(9).gamma(2.0, 20.0, (72, 56, 40)).astype(np.float32)
    itk = sitk.GetImageFromArray(volume)
    itk.SetSpacing((0.5, 0.75, 2.0))
    itk.SetOrigin((1.0, -2.0, 3.5))
    itk.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(itk, str(tmp_path / "volume.mha"))
    runner = weights.load(plan)
    assert len(predict.start(plan, runner, volume[None, None], max_tile=64).tiles[0].starts) > 1

    predict_files(
        plan,
        {"raw": tmp_path / "volume.mha"},
        {"prob": tmp_path / "prob.mha"},
        max_tile=64,
        runner=runner,
    )

    written = sitk.ReadImage(str(tmp_path / "prob.mha"))
    assert written.GetSpacing() == itk.GetSpacing()
    assert written.GetOrigin() == itk.GetOrigin()
    assert written.GetDirection() == itk.GetDirection()
    in_memory = predict.predict_array(plan, runner, volume[None, None], max_tile=64)["prob"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), np.moveaxis(in_memory[0], 0, -1))


@pytest.mark.slow
@pytest.mark.parametrize(("format_version", "ndim"), [("0.5", 2), ("0.4", 3)])
def test_torchscript_weights_run_where_torch_is_installed(
    tmp_path: Path, format_version: str, ndim: int
) -> None:
    pytest.importorskip("torch", reason="TorchScript weights need torch (not in the extras)")
    from batch_runner.bioimageio.runtime import check_test_tensors

    shape = (96, 80) if ndim == 2 else (32, 48, 32)
    package = build_package(
        tmp_path / "model",
        format_version=format_version,
        ndim=ndim,
        test_shape=shape,
        weights="torchscript",
    )
    plan = load_plan(package.directory)
    assert plan.weights_format == "torchscript"

    assert check_test_tensors(plan, max_tile=64)["prob"] < 1e-5


def test_a_one_slice_volume_runs_on_a_2d_model_and_stays_3d(tmp_path: Path) -> None:
    package = build_package(tmp_path / "model")
    (tmp_path / "in" / "images" / "raw").mkdir(parents=True)
    volume = sitk.GetImageFromArray(np.random.default_rng(4).normal(0, 1, (1, 70, 90)))
    volume.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(volume, str(tmp_path / "in" / "images" / "raw" / "slice.mha"))

    assert main(_run_args(package.directory, tmp_path)) == 0

    result = sitk.ReadImage(str(tmp_path / "out" / "images" / "prob" / "output.mha"))
    assert result.GetSize() == (90, 70, 1)
    assert result.GetSpacing() == (0.5, 0.5, 3.0)
