"""The runtime agrees with bioimageio.core, run as an oracle in its own environment
(``make bioimageio-oracle`` creates ``.venv-bioimageio``; core 0.11 needs a pydantic older
than the project's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnx")

from batch_runner.bioimageio import predict, weights
from batch_runner.bioimageio.package import load_plan
from tests.bioimageio_support import (
    ORACLE_PYTHON,
    build_package,
    build_processing_package,
    core_predict,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not ORACLE_PYTHON.exists(),
        reason="no bioimageio.core environment: run `make bioimageio-oracle`",
    ),
]


@pytest.mark.parametrize(
    ("format_version", "ndim", "shape", "blocksize", "max_tile"),
    [
        ("0.5", 2, (304, 240), 2, 96),
        ("0.5", 2, (304, 240), 2, None),
        ("0.4", 2, (304, 240), 1, 80),
        ("0.5", 3, (96, 112, 80), 1, 64),
        ("0.4", 3, (96, 112, 80), 1, None),  # one tile here, 18 blocks in core
    ],
)
def test_tiled_predictions_agree_with_bioimageio_core(
    tmp_path: Path,
    format_version: str,
    ndim: int,
    shape: tuple[int, ...],
    blocksize: int,
    max_tile: int | None,
) -> None:
    package = build_package(tmp_path / "model", format_version=format_version, ndim=ndim)
    plan = load_plan(package.directory)
    image = np.random.default_rng(4).gamma(2.0, 20.0, (1, 1, *shape)).astype(np.float32)

    ours = predict.predict_array(plan, weights.load(plan), image, max_tile=max_tile)
    theirs = core_predict(
        package.directory / "rdf.yaml", image, ["prob"], blocksize, tmp_path / "core"
    )

    np.testing.assert_allclose(ours["prob"], theirs["prob"], atol=1e-5)


SPATIAL = ["y", "x"]
PROCESSING: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = [
    (
        "dataset zero mean unit variance, sigmoid",
        [{"id": "zero_mean_unit_variance", "kwargs": {"axes": None}}],
        [{"id": "sigmoid"}],
    ),
    (
        "per-channel sample zero mean unit variance, softmax",
        [{"id": "zero_mean_unit_variance", "kwargs": {"axes": SPATIAL, "eps": 1e-3}}],
        [{"id": "softmax", "kwargs": {"axis": "channel"}}],
    ),
    (
        "dataset percentiles per channel, binarize",
        [
            {
                "id": "scale_range",
                "kwargs": {
                    "axes": ["batch", *SPATIAL],
                    "min_percentile": 1.5,
                    "max_percentile": 99.8,
                },
            }
        ],
        [{"id": "binarize", "kwargs": {"threshold": 0.25}}],
    ),
    (
        "sample percentiles, clip by percentiles, linear per channel",
        [
            {"id": "clip", "kwargs": {"axes": SPATIAL, "min_percentile": 5, "max_percentile": 95}},
            {"id": "scale_range", "kwargs": {"axes": SPATIAL, "max_percentile": 90}},
            {
                "id": "scale_linear",
                "kwargs": {"axis": "channel", "gain": [2.0, 0.5], "offset": [1.0, -1.0]},
            },
        ],
        [{"id": "clip", "kwargs": {"min": -0.5, "max": 0.75}}],
    ),
    (
        "fixed statistics per channel, integer output",
        [
            {
                "id": "fixed_zero_mean_unit_variance",
                "kwargs": {"axis": "channel", "mean": [900.0, 2100.0], "std": [300.0, 1200.0]},
            },
        ],
        [
            {"id": "scale_linear", "kwargs": {"gain": 40.0, "offset": 100.0}},
            {"id": "clip", "kwargs": {"min": 0, "max": 255}},
            {"id": "ensure_dtype", "kwargs": {"dtype": "uint8"}},
        ],
    ),
]


@pytest.mark.parametrize(
    ("preprocessing", "postprocessing"),
    [p[1:] for p in PROCESSING],
    ids=[p[0] for p in PROCESSING],
)
def test_processing_agrees_with_bioimageio_core(
    tmp_path: Path, preprocessing: list[dict[str, Any]], postprocessing: list[dict[str, Any]]
) -> None:
    image = np.random.default_rng(8).integers(0, 4000, (1, 2, 57, 63)).astype(np.uint16)
    output_type = "uint8" if postprocessing[-1]["id"] == "ensure_dtype" else "float32"
    if postprocessing[-1]["id"] == "binarize":
        output_type = "bool"
    rdf = build_processing_package(
        tmp_path / "model",
        preprocessing=preprocessing,
        postprocessing=postprocessing,
        output_type=output_type,
        test_input=image,
    )
    plan = load_plan(rdf.parent)

    ours = predict.predict_array(plan, weights.load(plan), image)["prob"]
    theirs = core_predict(rdf, image, ["prob"], None, tmp_path / "core")["prob"]

    assert ours.dtype == theirs.dtype
    if ours.dtype == np.bool_:
        assert np.mean(ours != theirs) < 1e-3  # values at the threshold may round either way
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
