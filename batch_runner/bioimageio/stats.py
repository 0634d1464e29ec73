"""Statistics of a whole image, computed before tiling, in bounded memory.

Means and standard deviations stream over slabs of the image with float64 accumulators
(Chan et al.'s pairwise update), so a volume is never copied as a whole. Percentiles need the
whole distribution: integer images are counted in a histogram slab by slab (exact, no copy);
float images are partitioned in one float copy of the values reduced together.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from batch_runner.bioimageio.ops import Stat

SLAB_ELEMENTS = 1 << 18  # elements per slab: 2 MiB as float64


def _slabs(array: np.ndarray) -> Iterable[np.ndarray]:
    """Views of ``array`` cut along its first spatial axis (canonical axis 2)."""
    per_row = max(1, int(np.prod(array.shape)) // max(1, array.shape[2]))
    rows = max(1, SLAB_ELEMENTS // per_row)
    for start in range(0, array.shape[2], rows):
        yield array[:, :, start : start + rows]


def _keep(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def mean_std(array: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Population mean and standard deviation over ``axes`` (kept as size-1 dimensions).

    Spatial axes must all be reduced together (slabs cut the first spatial axis)."""
    n_total = 0
    mean = np.zeros(_keep(array.shape, axes), dtype=np.float64)
    m2 = np.zeros_like(mean)
    for slab in _slabs(array):
        values = slab.astype(np.float64)
        n = values.size // mean.size
        slab_mean = values.mean(axis=axes, keepdims=True)
        values -= slab_mean
        np.square(values, out=values)
        slab_m2 = values.sum(axis=axes, keepdims=True)
        if n_total == 0:
            mean, m2 = slab_mean, slab_m2
        else:
            delta = slab_mean - mean
            total = n_total + n
            mean = mean + delta * (n / total)
            m2 = m2 + slab_m2 + delta**2 * (n_total * n / total)
        n_total += n
    return mean, np.sqrt(m2 / n_total)


def quantiles(
    array: np.ndarray, axes: tuple[int, ...], qs: list[float], method: str
) -> list[np.ndarray]:
    """Quantiles ``qs`` (in [0, 1]) over ``axes`` with numpy's ``method``."""
    keep = _keep(array.shape, axes)
    small_integers = np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize <= 2
    if small_integers and keep == (1,) * len(keep):
        return _histogram_quantiles(array, qs, method)
    # numpy types ``method`` as its literal names; ours come from the same list as a str.
    values = np.quantile(array, qs, axis=axes, method=method, keepdims=True)  # type: ignore[call-overload]
    return [np.asarray(v, dtype=np.float64).reshape(keep) for v in values]


def _histogram_quantiles(array: np.ndarray, qs: list[float], method: str) -> list[np.ndarray]:
    """Exact quantiles of a small-integer image from a histogram, as ``np.quantile`` gives
    them (``linear`` interpolates between the two order statistics around ``q * (n - 1)``;
    ``inverted_cdf`` takes the first value whose cumulative count reaches ``q * n``)."""
    info = np.iinfo(array.dtype)
    counts = np.zeros(int(info.max) - int(info.min) + 1, dtype=np.int64)
    for slab in _slabs(array):
        counts += np.bincount(
            (slab.ravel().astype(np.int64) - int(info.min)), minlength=counts.size
        )
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])

    def order_statistic(k: int) -> float:  # the k-th smallest value, 0-based
        return float(np.searchsorted(cumulative, k + 1) + int(info.min))

    out = []
    for q in qs:
        if method == "inverted_cdf":
            k = max(int(np.ceil(q * n)) - 1, 0)
            value = order_statistic(k)
        else:
            position = q * (n - 1)
            below = int(np.floor(position))
            low = order_statistic(below)
            high = order_statistic(min(below + 1, n - 1))
            value = low + (high - low) * (position - below)
        out.append(np.full((1,) * array.ndim, value, dtype=np.float64))
    return out


def compute(array: np.ndarray, wanted: list[Stat]) -> dict[Stat, np.ndarray]:
    """The values of ``wanted`` (all of one tensor) on ``array``."""
    out: dict[Stat, np.ndarray] = {}
    moments: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    for stat in wanted:
        if stat.kind in ("mean", "std"):
            if stat.axes not in moments:
                moments[stat.axes] = mean_std(array, stat.axes)
            mean, std = moments[stat.axes]
            out[stat] = mean if stat.kind == "mean" else std
    groups: dict[tuple[tuple[int, ...], str], list[Stat]] = {}
    for stat in wanted:
        if stat.kind == "quantile":
            groups.setdefault((stat.axes, stat.method), []).append(stat)
    for (axes, method), group in groups.items():
        values = quantiles(array, axes, [s.q for s in group], method)
        out.update(zip(group, values, strict=True))
    return out
