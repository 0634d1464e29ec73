"""``gantry algorithms create --bioimageio package.zip`` on the local stack: the package is
uploaded, its import followed to the end, its interfaces printed, and the algorithm runs;
a bad package ends the command with the import's message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnx")

from tests.bioimageio_support import build_package
from tests.conftest import serve_local_stack
from tests.integration.test_cli_commands import WAIT, Cli, ok, one_line_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    state_dir = tmp_path_factory.mktemp("state")
    stack = serve_local_stack("gantry-cli-bioimageio", state_dir)
    try:
        yield Cli(stack, stack.ctx.store.users.create_token("alice"), state_dir)
    finally:
        stack.stop()


def test_a_package_is_registered_and_runs(cli: Cli, tmp_path: Path) -> None:
    import numpy as np
    import SimpleITK

    package = build_package(tmp_path / "cells")

    output = ok(
        cli("algorithms", "create", "--title", "Cells", "--bioimageio", str(package.zip_path))
    )

    assert "Imported gantry test unet 2d (format 0.5.4, onnx weights)" in output
    assert re.search(r"input\W+raw\W+Image\W+images/raw\W", output), output
    assert re.search(r"output\W+prob\W+Image\W+images/prob\W", output), output
    image = SimpleITK.GetImageFromArray(
        np.linspace(0, 1, 70 * 66, dtype=np.float32).reshape(70, 66)
    )
    image.SetSpacing((0.3, 0.3))
    SimpleITK.WriteImage(image, str(tmp_path / "cells.mha"))
    out = tmp_path / "out"
    ran = ok(
        cli(
            "jobs", "run", "cells", "--input", f"raw={tmp_path / 'cells.mha'}",
            "--output-dir", str(out), *WAIT,
        )
    )  # fmt: skip
    assert "Succeeded" in ran
    # The job ran the package as the algorithm's model, and names it by its sha256.
    started = re.search(r"Job (\S+) started", ran)
    assert started, ran
    job = cli.stack.ctx.store.jobs.get(started.group(1))
    algorithm = cli.stack.ctx.store.algorithms.get_by_slug("cells")
    assert algorithm.bioimageio is not None
    model = cli.stack.ctx.store.models.get(algorithm.bioimageio.model or "")
    assert (job.algorithm_model, job.algorithm_model_sha256) == (model.pk, model.sha256)
    (prob,) = (out / "images" / "prob").glob("*.mha")
    result = SimpleITK.ReadImage(str(prob))
    assert (result.GetSize(), result.GetNumberOfComponentsPerPixel()) == ((66, 70), 2)


def test_a_bad_package_ends_the_command_with_the_import_message(cli: Cli, tmp_path: Path) -> None:
    def missing_weights(rdf: dict) -> None:
        rdf["weights"]["onnx"]["source"] = "missing.onnx"

    package = build_package(tmp_path / "bad", edit=missing_weights)

    message = one_line_error(
        cli("algorithms", "create", "--title", "Bad cells", "--bioimageio", str(package.zip_path))
    )

    assert message.startswith("Model package import Failed: invalid model package"), message
    assert "missing.onnx does not point to an existing file" in message


def test_bioimageio_leaves_out_inputs_and_outputs(cli: Cli, tmp_path: Path) -> None:
    message = one_line_error(
        cli("algorithms", "create", "--title", "X", "--bioimageio", "p.zip", "--input", "raw")
    )
    assert "--bioimageio brings its inputs, outputs and image" in message
