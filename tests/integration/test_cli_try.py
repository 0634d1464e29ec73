"""``gantry try``: an image archive run once as a job would run, without a running platform."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gantry.cli import app
from tests.example_images import gc_template_image, gc_template_model, static_threshold_image

pytestmark = pytest.mark.slow


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # The runner drops to the image's USER before the sandbox starts: that user must reach
    # the image store, so not under pytest's owner-only temporary folders.
    folder = Path(tempfile.mkdtemp(prefix="gantry-try-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _image(path: Path, compressed: bool) -> Path:
    import numpy
    import SimpleITK

    image = SimpleITK.GetImageFromArray(numpy.arange(-30, 30, dtype=numpy.int16).reshape(3, 4, 5))
    image.SetSpacing((0.5, 0.75, 2.0))
    SimpleITK.WriteImage(image, str(path), compressed)
    return path


def gantry_try(state_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["try", *args, "--state-dir", str(state_dir)], env={"COLUMNS": "200"}
    )


def test_a_good_run_prints_its_outputs_and_logs(state_dir, tmp_path):
    case = _image(tmp_path / "case.mha", compressed=False)
    out = tmp_path / "out"

    result = gantry_try(
        state_dir,
        str(static_threshold_image()),
        "--input",
        f"ct-image={case}",
        "--output",
        "images/segmentation",
        "--output",
        "results.json",
        "--output-dir",
        str(out),
    )

    assert result.exit_code == 0, result.output
    assert "segmented 29 voxels" in result.output  # the algorithm's stdout
    assert f"{out / 'results.json'}" in result.output
    assert json.loads((out / "results.json").read_text()) == {
        "foreground_voxels": 29,
        "static": True,
    }
    import SimpleITK

    segmentation = SimpleITK.ReadImage(str(out / "segmentation.mha"))
    assert segmentation.GetSpacing() == (0.5, 0.75, 2.0)
    assert (state_dir / "images").is_dir()  # the unpacked image is kept for the next run


def test_a_failing_run_exits_1_with_the_jobs_message(state_dir, tmp_path):
    case = _image(tmp_path / "case.mha", compressed=True)

    result = gantry_try(state_dir, str(static_threshold_image()), "--input", f"ct-image={case}")

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert last.startswith("Job Failed:")
    assert "compressed .mha images are not supported" in last


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input", "ct-image"], "--input ct-image: write it as SLUG=VALUE"),
        (["--input", "x=1", "--output", "deep/path.bin"], "--output deep/path.bin: give"),
    ],
)
def test_bad_arguments_are_one_line(state_dir, args, expected):
    result = gantry_try(state_dir, str(static_threshold_image()), *args)

    assert result.exit_code == 1
    assert expected in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("mode", ["exec", "invoke"])
def test_the_gc_template_image_runs_with_its_model(state_dir, tmp_path, mode):
    case = _image(tmp_path / "case.mha", compressed=True)
    out = tmp_path / "out"

    result = gantry_try(
        state_dir,
        str(gc_template_image(mode)),
        "--input",
        f"ct-image={case}",
        "--model",
        str(gc_template_model()),
        "--output",
        "images/segmentation",
        "--output",
        "results.json",
        "--output-dir",
        str(out),
    )

    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["model_version"] == "weights-v1" and results["user"] == "user"
    assert results["input_slugs"] == ["ct-image"]


def test_without_its_model_the_gc_template_image_fails_as_its_job_would(state_dir, tmp_path):
    case = _image(tmp_path / "case.mha", compressed=True)

    result = gantry_try(state_dir, str(gc_template_image("exec")), "--input", f"ct-image={case}")

    assert result.exit_code == 1
    assert "/opt/ml/model/weights.json" in result.output  # the algorithm's traceback
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert last.startswith("Job Failed:")
