"""What the runtime needs to know about a model, free of bioimageio.spec's classes.

Every tensor is handled in one canonical layout: ``(batch, channel, [z,] y, x)`` with a batch
of one image and a channel axis of size 1 where the model has none. ``model_axes`` says how
the model's own tensor is laid out so the weights get (and give) exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batch_runner.bioimageio.ops import Op

SPATIAL = ("z", "y", "x")


class PackageError(ValueError):
    """A model package that cannot be registered or run; the message says why."""


class PredictionError(RuntimeError):
    """Inputs a valid model cannot run on (wrong dimensionality, channels, missing file)."""


@dataclass(frozen=True)
class SpatialAxis:
    """One spatial axis of an input: its valid sizes are ``min + k * step`` (``step`` 0: only
    ``min``); ``halo`` is what the outputs crop on each side (the largest over outputs)."""

    id: str
    min: int
    step: int
    halo: int = 0

    def valid_size_at_least(self, size: int) -> int:
        if self.step == 0 or size <= self.min:
            return self.min
        return self.min + -(-(size - self.min) // self.step) * self.step

    def valid_size_at_most(self, size: int) -> int:
        if self.step == 0 or size <= self.min:
            return self.min
        return self.min + (size - self.min) // self.step * self.step


@dataclass
class TensorPlan:
    id: str
    model_axes: tuple[str, ...]  # "batch", "channel", "z", "y", "x" in the model's order
    channels: int
    spatial: tuple[str, ...]  # the spatial axis ids, canonical order (z before y before x)
    dtype: str
    processing: list[Op] = field(default_factory=list)
    test_tensor: Path | None = None
    pad_mode: str = "symmetric"
    pad_value: float = 0.0
    description: str = ""

    @property
    def has_channel_axis(self) -> bool:
        return "channel" in self.model_axes


@dataclass
class InputPlan(TensorPlan):
    axes: tuple[SpatialAxis, ...] = ()
    batch_size: int | None = None  # None: any batch size; else fixed


@dataclass
class OutputPlan(TensorPlan):
    halo: tuple[int, ...] = ()  # per spatial axis, in output pixels
    abs_tolerance: float = 1.5e-4
    rel_tolerance: float = 1e-4


@dataclass
class ModelPlan:
    name: str
    root: Path
    format_version: str
    weights_format: str
    weights_path: Path
    inputs: list[InputPlan]
    outputs: list[OutputPlan]

    def input(self, tensor_id: str) -> InputPlan:
        return next(t for t in self.inputs if t.id == tensor_id)

    @property
    def ndim(self) -> int:
        return len(self.inputs[0].spatial)
