"""bioimage.io model packages built in the tests: small U-Net-like ONNX models, described as
format 0.4 or 0.5, with test tensors computed here with plain numpy and onnxruntime."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HALO = 16
MIN = 64
STEP = 16


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unet_onnx(path: Path, *, ndim: int = 2, in_channels: int = 1, out_channels: int = 2) -> None:
    """A two-level U-Net (two poolings, skip connections by concatenation) with seeded
    random weights and symbolic spatial sizes; its receptive field fits in ``HALO``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    initializers: list[Any] = []
    nodes: list[Any] = []
    k = [3] * ndim
    pads = [1] * (2 * ndim)

    def conv(name: str, x: str, cin: int, cout: int, kernel: list[int], pad: list[int]) -> str:
        w = rng.normal(0, (2.0 / (cin * int(np.prod(kernel)))) ** 0.5, (cout, cin, *kernel))
        b = rng.normal(0, 0.1, cout)
        initializers.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_w"))
        initializers.append(numpy_helper.from_array(b.astype(np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], pads=pad))
        return name

    def relu(x: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{x}_relu"]))
        return f"{x}_relu"

    def pool(x: str) -> str:
        nodes.append(
            helper.make_node(
                "MaxPool", [x], [f"{x}_pool"], kernel_shape=[2] * ndim, strides=[2] * ndim
            )
        )
        return f"{x}_pool"

    scales = np.array([1, 1] + [2] * ndim, dtype=np.float32)
    initializers.append(numpy_helper.from_array(scales, "up_scales"))

    def up(x: str) -> str:
        nodes.append(helper.make_node("Resize", [x, "", "up_scales"], [f"{x}_up"], mode="nearest"))
        return f"{x}_up"

    def concat(a: str, b: str) -> str:
        nodes.append(helper.make_node("Concat", [a, b], [f"{a}_{b}_cat"], axis=1))
        return f"{a}_{b}_cat"

    e0 = relu(conv("e0", "input", in_channels, 4, k, pads))
    e1 = relu(conv("e1", pool(e0), 4, 6, k, pads))
    bottom = relu(conv("bottom", pool(e1), 6, 8, k, pads))
    d1 = relu(conv("d1", concat(up(bottom), e1), 14, 6, k, pads))
    d0 = relu(conv("d0", concat(up(d1), e0), 10, 4, k, pads))
    conv("output", d0, 4, out_channels, [1] * ndim, [0] * (2 * ndim))

    spatial = ["z", "y", "x"][-ndim:]
    graph = helper.make_graph(
        nodes,
        "unet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", in_channels, *spatial])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", out_channels, *spatial])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def pointwise_onnx(path: Path, *, in_channels: int = 2, out_channels: int = 3) -> None:
    """A 1x1 convolution mixing channels: no halo, any size; for testing the processing."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    w = rng.normal(0, 1, (out_channels, in_channels, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.5, out_channels).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["output"])],
        "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", in_channels, "y", "x"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", out_channels, "y", "x"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def build_processing_package(
    directory: Path,
    *,
    preprocessing: list[dict[str, Any]],
    postprocessing: list[dict[str, Any]],
    input_type: str = "float32",
    output_type: str = "float32",
    test_input: np.ndarray,
) -> Path:
    """A 0.5 package of ``pointwise_onnx`` with the given processing; its test output is a
    placeholder without a sha256 (these packages test the processing against an oracle)."""
    directory.mkdir(parents=True, exist_ok=True)
    pointwise_onnx(directory / "model.onnx")
    np.save(directory / "test_input.npy", test_input)
    placeholder = np.ones((1, 3, *test_input.shape[2:]), dtype=output_type)
    np.save(directory / "test_output.npy", placeholder)
    (directory / "README.md").write_text("# processing test model\n")

    def axes(channels: int, output: bool) -> list[dict[str, Any]]:
        spatial: list[dict[str, Any]] = [
            {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}}
            if output
            else {"type": "space", "id": a, "size": {"min": 1, "step": 1}}
            for a in ("y", "x")
        ]
        names = [f"c{i}" for i in range(channels)]
        return [{"type": "batch"}, {"type": "channel", "channel_names": names}, *spatial]

    rdf = rdf_05(2, sha256(directory / "model.onnx"), "", "")
    rdf["inputs"][0].update(
        axes=axes(2, False),
        test_tensor={"source": "test_input.npy"},
        data={"type": input_type},
        preprocessing=preprocessing,
    )
    rdf["outputs"][0].update(
        axes=axes(3, True),
        test_tensor={"source": "test_output.npy"},
        data={"type": output_type, "values": [False, True]}
        if output_type == "bool"
        else {"type": output_type},
        postprocessing=postprocessing,
    )
    (directory / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return directory / "rdf.yaml"


def unet_torchscript(path: Path, *, ndim: int = 2) -> None:
    """The same two-level U-Net as ``unet_onnx``, in torch, scripted (needs torch)."""
    import torch
    from torch import nn

    torch.manual_seed(7)
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e0 = conv(1, 4, 3, padding=1)
            self.e1 = conv(4, 6, 3, padding=1)
            self.bottom = conv(6, 8, 3, padding=1)
            self.d1 = conv(14, 6, 3, padding=1)
            self.d0 = conv(10, 4, 3, padding=1)
            self.out = conv(4, 2, 1)
            self.pool = pool(2)
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e0 = torch.relu(self.e0(x))
            e1 = torch.relu(self.e1(self.pool(e0)))
            bottom = torch.relu(self.bottom(self.pool(e1)))
            d1 = torch.relu(self.d1(torch.cat([self.up(bottom), e1], 1)))
            d0 = torch.relu(self.d0(torch.cat([self.up(d1), e0], 1)))
            return self.out(d0)

    torch.jit.script(UNet().eval()).save(str(path))


def run_torchscript(path: Path, array: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        return module(torch.from_numpy(array.astype(np.float32))).numpy()


def run_onnx(path: Path, array: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array.astype(np.float32)})[0]


def reference_predict(model_path: Path, image: np.ndarray, ndim: int) -> np.ndarray:
    """The package's intended output for ``image`` (channel-first, no batch), written out
    plainly: per-sample zero mean/unit variance, symmetric padding by the halo, one forward
    pass, crop, sigmoid."""
    x = image.astype(np.float64)
    x = ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)
    pad = [(0, 0)] + [(HALO, HALO)] * ndim
    padded = np.pad(x, pad, mode="symmetric")
    if model_path.suffix == ".pt":
        y = run_torchscript(model_path, padded[None])[0]
    else:
        y = run_onnx(model_path, padded[None])[0]
    crop = (slice(None),) + (slice(HALO, -HALO),) * ndim
    y = y[crop].astype(np.float32)
    return (1.0 / (1.0 + np.exp(-y))).astype(np.float32)


@dataclass
class Package:
    directory: Path
    zip_path: Path
    rdf: dict[str, Any]
    model_path: Path
    test_input: np.ndarray
    test_output: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def _axes_05(ndim: int, channels: int, *, output: bool) -> list[dict[str, Any]]:
    axes: list[dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": [f"c{i}" for i in range(channels)]},
    ]
    for name in ["z", "y", "x"][-ndim:]:
        if output:
            axes.append(
                {
                    "type": "space",
                    "id": name,
                    "size": {"tensor_id": "raw", "axis_id": name},
                    "halo": HALO,
                }
            )
        else:
            axes.append({"type": "space", "id": name, "size": {"min": MIN, "step": STEP}})
    return axes


def rdf_05(ndim: int, model_sha: str, in_sha: str, out_sha: str) -> dict[str, Any]:
    spatial = ["z", "y", "x"][-ndim:]
    return {
        "format_version": "0.5.4",
        "type": "model",
        "name": f"gantry test unet {ndim}d",
        "description": "A small U-Net built by Gantry's tests",
        "authors": [{"name": "Gantry"}],
        "cite": [{"text": "Gantry", "doi": "10.5281/zenodo.5764892"}],
        "license": "MIT",
        "documentation": "README.md",
        "tags": ["test"],
        "inputs": [
            {
                "id": "raw",
                "axes": _axes_05(ndim, 1, output=False),
                "test_tensor": {"source": "test_input.npy", "sha256": in_sha},
                "data": {"type": "float32"},
                "preprocessing": [
                    {"id": "zero_mean_unit_variance", "kwargs": {"axes": spatial}},
                ],
            }
        ],
        "outputs": [
            {
                "id": "prob",
                "axes": _axes_05(ndim, 2, output=True),
                "test_tensor": {"source": "test_output.npy", "sha256": out_sha},
                "data": {"type": "float32"},
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        "weights": {"onnx": {"source": "model.onnx", "sha256": model_sha, "opset_version": 17}},
    }


def rdf_04(ndim: int, model_sha: str, in_sha: str, out_sha: str) -> dict[str, Any]:
    axes = "b" + "c" + "zyx"[-ndim:]
    spatial = "zyx"[-ndim:]
    return {
        "format_version": "0.4.10",
        "type": "model",
        "name": f"gantry test unet {ndim}d",
        "description": "A small U-Net built by Gantry's tests",
        "authors": [{"name": "Gantry"}],
        "cite": [{"text": "Gantry", "doi": "10.5281/zenodo.5764892"}],
        "license": "MIT",
        "documentation": "README.md",
        "tags": ["test"],
        "timestamp": "2026-01-01T00:00:00",
        "test_inputs": ["test_input.npy"],
        "test_outputs": ["test_output.npy"],
        "inputs": [
            {
                "name": "raw",
                "axes": axes,
                "data_type": "float32",
                "shape": {"min": [1, 1] + [MIN] * ndim, "step": [0, 0] + [STEP] * ndim},
                "preprocessing": [
                    {
                        "name": "zero_mean_unit_variance",
                        "kwargs": {"mode": "per_sample", "axes": spatial},
                    }
                ],
            }
        ],
        "outputs": [
            {
                "name": "prob",
                "axes": axes,
                "data_type": "float32",
                "shape": {
                    "reference_tensor": "raw",
                    "scale": [1.0, 0.0] + [1.0] * ndim,
                    "offset": [0, 1] + [0] * ndim,
                },
                "halo": [0, 0] + [HALO] * ndim,
                "postprocessing": [{"name": "sigmoid"}],
            }
        ],
        "weights": {"onnx": {"source": "model.onnx", "sha256": model_sha, "opset_version": 17}},
    }


def build_package(
    directory: Path,
    *,
    format_version: str = "0.5",
    ndim: int = 2,
    test_shape: tuple[int, ...] | None = None,
    edit: Any = None,
    weights: str = "onnx",
) -> Package:
    """Write a package folder and its zip; ``edit(rdf)`` may change the description."""
    directory.mkdir(parents=True, exist_ok=True)
    if weights == "torchscript":
        model_path = directory / "model.pt"
        unet_torchscript(model_path, ndim=ndim)
    else:
        model_path = directory / "model.onnx"
        unet_onnx(model_path, ndim=ndim)
    rng = np.random.default_rng(3)
    shape = test_shape or (64,) * ndim
    image = rng.gamma(2.0, 20.0, shape).astype(np.float32)
    expected = reference_predict(model_path, image[None], ndim)
    test_input = image[None, None]
    test_output = expected[None]
    np.save(directory / "test_input.npy", test_input)
    np.save(directory / "test_output.npy", test_output)
    (directory / "README.md").write_text("# test model\n")
    shas = (
        sha256(model_path),
        sha256(directory / "test_input.npy"),
        sha256(directory / "test_output.npy"),
    )
    rdf = rdf_05(ndim, *shas) if format_version == "0.5" else rdf_04(ndim, *shas)
    if weights == "torchscript":
        entry = {"source": "model.pt", "sha256": shas[0], "pytorch_version": "2.13"}
        rdf["weights"] = {"torchscript": entry}
    if edit is not None:
        edit(rdf)
    (directory / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    zip_path = directory.with_suffix(".zip")
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(directory.iterdir()):
            archive.write(path, path.name)
    return Package(directory, zip_path, rdf, model_path, test_input, test_output)


REPO = Path(__file__).resolve().parents[1]
ORACLE_PYTHON = REPO / ".venv-bioimageio" / "bin" / "python"
ORACLE_SCRIPT = REPO / "benchmarks" / "bioimageio_core.py"


def core_predict(
    rdf: Path, array: np.ndarray, output_ids: list[str], blocksize: int | None, workdir: Path
) -> dict[str, np.ndarray]:
    """bioimageio.core's prediction, run in its own environment (``make bioimageio-oracle``)."""
    import json
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "input.npy", array)
    outputs = {o: str(workdir / f"{o}.npy") for o in output_ids}
    request = {"rdf": str(rdf), "input": str(workdir / "input.npy"), "outputs": outputs}
    (workdir / "request.json").write_text(json.dumps({**request, "blocksize": blocksize}))
    done = subprocess.run(
        [str(ORACLE_PYTHON), str(ORACLE_SCRIPT), str(workdir / "request.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise AssertionError(f"bioimageio.core failed: {done.stderr[-3000:]}")
    return {o: np.load(p) for o, p in outputs.items()}
