"""Run a model's weights on a batch of tiles: ONNX with onnxruntime (CUDA when present),
TorchScript with torch when it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from batch_runner.bioimageio.plan import ModelPlan, PackageError


class Weights(Protocol):
    def __call__(self, batch: np.ndarray) -> list[np.ndarray]: ...


class OnnxWeights:
    def __init__(self, path: Path, device: str = "auto") -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise PackageError("onnxruntime has no CUDA provider here")
        options = ort.SessionOptions()
        # Memory patterns pre-plan one buffer per input shape seen; tiles come in a few shapes
        # and the arena reuses its blocks anyway, so without them the peak is about a third
        # lower (same speed, measured on the tests' U-Net).
        options.enable_mem_pattern = False
        # Idle intra-op threads spin for work by default: on a machine shared with other jobs
        # that spinning is CPU time taken from them for nothing (about half the CPU time of a
        # tiled run on the tests' U-Net); blocking instead costs a wake-up per operator.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


class TorchScriptWeights:
    def __init__(self, path: Path, device: str = "auto") -> None:
        try:
            import torch
        except ImportError:
            raise PackageError(
                "weights: TorchScript needs torch, which this runtime does not have"
            ) from None
        self.torch = torch
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        with self.torch.no_grad():
            result = self.module(self.torch.from_numpy(batch).to(self.device))
        results = result if isinstance(result, list | tuple) else [result]
        return [r.detach().cpu().numpy() for r in results]


def load(plan: ModelPlan, device: str = "auto") -> Weights:
    if plan.weights_format == "onnx":
        return OnnxWeights(plan.weights_path, device)
    if plan.weights_format == "torchscript":
        return TorchScriptWeights(plan.weights_path, device)
    raise PackageError(f"weights: unsupported format '{plan.weights_format}'")
