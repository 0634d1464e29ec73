"""The bioimage.io pre- and post-processing operations on numpy, with bioimageio.core's math.

Arrays are in the canonical layout ``(1, channel, *spatial)``. As in bioimageio.core:
statistics are population statistics (``ddof=0``) of the tensor as it was read, before any
operation (core computes every measure once, at the start); the ``eps`` is added to the
standard deviation (``(x - mean) / (std + eps)``) or to the range
(``(x - lower) / (upper - lower + eps)``); python-float parameters keep the array's dtype
while float64 statistics promote it to float64 until the next ``ensure_dtype``; percentiles
use numpy's ``linear`` method, except ``clip`` with per-sample percentiles (``inverted_cdf``);
``binarize`` yields booleans.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Reduce = tuple[int, ...]  # canonical axes a statistic reduces over


@dataclass(frozen=True)
class Stat:
    """A measure of a tensor: ``kind`` is ``mean``, ``std`` or ``quantile``."""

    tensor: str
    kind: str
    axes: Reduce
    q: float = 0.0
    method: str = "linear"


Stats = Mapping[Stat, np.ndarray]


def _per_channel(values: float | list[float], ndim: int) -> float | np.ndarray:
    """A parameter given per channel, shaped to broadcast on ``(1, c, *spatial)``."""
    if isinstance(values, int | float):
        return float(values)
    array = np.asarray(values, dtype=np.float64)
    return array.reshape((1, -1) + (1,) * (ndim - 2))


class Op:
    """One processing step; ``stats`` lists the measures it reads; ``whole`` steps need the
    whole tensor at once (not tile by tile)."""

    name = ""
    whole = False

    @property
    def stats(self) -> tuple[Stat, ...]:
        return ()

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        raise NotImplementedError


@dataclass
class EnsureDtype(Op):
    dtype: str
    name = "ensure_dtype"

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        return x.astype(self.dtype, copy=False)


@dataclass
class Binarize(Op):
    threshold: float | list[float]
    name = "binarize"

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        return x > _per_channel(self.threshold, x.ndim)


@dataclass
class Clip(Op):
    min: float | None = None
    max: float | None = None
    min_stat: Stat | None = None
    max_stat: Stat | None = None
    name = "clip"

    @property
    def stats(self) -> tuple[Stat, ...]:
        return tuple(s for s in (self.min_stat, self.max_stat) if s is not None)

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        low = stats[self.min_stat] if self.min_stat is not None else self.min
        high = stats[self.max_stat] if self.max_stat is not None else self.max
        if isinstance(low, np.ndarray):
            x = np.where(x >= low, x, low)
            low = None
        if isinstance(high, np.ndarray):
            x = np.where(x <= high, x, high)
            high = None
        if low is not None or high is not None:
            x = np.clip(x, low, high)
        return x


@dataclass
class ScaleLinear(Op):
    gain: float | list[float] = 1.0
    offset: float | list[float] = 0.0
    name = "scale_linear"

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        return x * _per_channel(self.gain, x.ndim) + _per_channel(self.offset, x.ndim)


@dataclass
class Sigmoid(Op):
    name = "sigmoid"

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Softmax(Op):
    axis: int = 1
    name = "softmax"

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        # scipy.special.softmax's formulation: shift by the maximum, then normalise.
        shifted = np.exp(x - np.max(x, axis=self.axis, keepdims=True))
        return shifted / np.sum(shifted, axis=self.axis, keepdims=True)


@dataclass
class ZeroMeanUnitVariance(Op):
    mean: Stat
    std: Stat
    eps: float = 1e-6
    name = "zero_mean_unit_variance"

    @property
    def stats(self) -> tuple[Stat, ...]:
        return (self.mean, self.std)

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        return (x - stats[self.mean]) / (stats[self.std] + self.eps)


@dataclass
class FixedZeroMeanUnitVariance(Op):
    mean: float | list[float]
    std: float | list[float]
    eps: float = 1e-6
    name = "fixed_zero_mean_unit_variance"

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        mean = _per_channel(self.mean, x.ndim)
        std = _per_channel(self.std, x.ndim)
        if isinstance(mean, float) and isinstance(std, float):
            return (x - mean) / (std + self.eps)
        return (x - np.asarray(mean)) / (np.asarray(std) + self.eps)


@dataclass
class ScaleRange(Op):
    lower: Stat
    upper: Stat
    eps: float = 1e-6
    name = "scale_range"

    @property
    def stats(self) -> tuple[Stat, ...]:
        return (self.lower, self.upper)

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        lower = stats[self.lower]
        return (x - lower) / (stats[self.upper] - lower + self.eps)


@dataclass
class ScaleMeanVariance(Op):
    mean: Stat
    std: Stat
    ref_mean: Stat
    ref_std: Stat
    eps: float = 1e-6
    name = "scale_mean_variance"

    @property
    def stats(self) -> tuple[Stat, ...]:
        return (self.mean, self.std, self.ref_mean, self.ref_std)

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        std = stats[self.std] + self.eps
        ref_std = stats[self.ref_std] + self.eps
        return (x - stats[self.mean]) / std * ref_std + stats[self.ref_mean]


@dataclass
class Custom(Op):
    """A package's own Python operation (spec 0.5 ``id: custom``), run only when allowed:
    ``factory(**kwargs)`` once, then ``callable(array)`` on the whole tensor, in the canonical
    ``(batch, channel, *spatial)`` layout; it must keep the shape."""

    source: Path
    callable_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    name = "custom"
    whole = True

    def __post_init__(self) -> None:
        spec = importlib.util.spec_from_file_location(
            f"bioimageio_custom_{abs(hash(self.source))}", self.source
        )
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot load {self.source.name}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        factory = getattr(module, self.callable_name)
        self._run = factory(**self.kwargs)

    def __call__(self, x: np.ndarray, stats: Stats) -> np.ndarray:
        result = np.asarray(self._run(x))
        if result.shape != x.shape:
            raise ValueError(f"custom {self.callable_name} changed the shape {x.shape}")
        return result


def apply(ops: list[Op], x: np.ndarray, stats: Stats) -> np.ndarray:
    for op in ops:
        x = op(x, stats)
    return x


def needed_stats(ops: list[Op]) -> list[Stat]:
    seen: dict[Stat, None] = {}
    for op in ops:
        for stat in op.stats:
            seen[stat] = None
    return list(seen)
