"""Run a model plan on an image: statistics on the whole image, then tiles with halos.

Tiling. Along each spatial axis a tile is a valid model size ``n`` (``min + k * step``); its
outer ``halo`` on each side is padded with the image's own pixels (or the package's padding
mode at the image border) and cropped from the output, so every output pixel is computed with
its full context and tiles meet without seams. Tiles start on a grid whose stride is a
multiple of the model's ``step``, so pooling layers see the same alignment in every tile as in
an untiled run. An image that fits one tile runs as one padded tile. Several tiles go through
the weights per call. Only the input, the outputs and one batch of tiles are in memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from batch_runner.bioimageio import ops, stats
from batch_runner.bioimageio.plan import InputPlan, ModelPlan, OutputPlan, SpatialAxis
from batch_runner.bioimageio.weights import Weights

DEFAULT_TILE = {2: 1024, 3: 160}
TILE_BUDGET = 1 << 22  # voxels per forward call (all tiles of a batch together)


@dataclass(frozen=True)
class AxisTiles:
    size: int  # tile size the model sees
    halo: int
    stride: int  # distance between tile starts (output pixels kept per tile)
    starts: tuple[int, ...]  # first kept output pixel of each tile


def tile_axis(axis: SpatialAxis, length: int, target: int) -> AxisTiles:
    """Tiles for one axis of ``length`` pixels, tile size at most ``target`` where possible."""
    halo = axis.halo
    whole = axis.valid_size_at_least(length + 2 * halo)
    if whole <= max(target, axis.min):
        return AxisTiles(whole, halo, length, (0,))
    size = axis.valid_size_at_most(max(target, axis.min))
    stride = size - 2 * halo
    if axis.step and stride >= axis.step:
        stride -= stride % axis.step  # keep every tile on the pooling grid
    if stride <= 0:
        size = axis.valid_size_at_least(2 * halo + max(axis.step, 1))
        stride = size - 2 * halo
    return AxisTiles(size, halo, stride, tuple(range(0, length, stride)))


def plan_tiles(
    tensor: InputPlan, shape: tuple[int, ...], max_tile: int | None = None
) -> list[AxisTiles]:
    target = max_tile or DEFAULT_TILE.get(len(shape), 160)
    return [tile_axis(a, n, target) for a, n in zip(tensor.axes, shape, strict=True)]


def _window(
    raw: np.ndarray, tiles: list[AxisTiles], starts: tuple[int, ...], tensor: InputPlan
) -> np.ndarray:
    """The input of one tile: the image around ``starts``, padded beyond the image."""
    slices: list[slice] = [slice(None), slice(None)]
    pads: list[tuple[int, int]] = [(0, 0), (0, 0)]
    for axis, start, length in zip(tiles, starts, raw.shape[2:], strict=True):
        low, high = start - axis.halo, start - axis.halo + axis.size
        slices.append(slice(max(low, 0), min(high, length)))
        pads.append((max(0, -low), max(0, high - length)))
    window = raw[tuple(slices)]
    if not any(p != (0, 0) for p in pads):
        return np.array(window)
    if tensor.pad_mode == "constant":
        return np.pad(window, pads, mode="constant", constant_values=tensor.pad_value)
    return np.pad(window, pads, mode=tensor.pad_mode)


def _to_model(batch: np.ndarray, tensor: InputPlan) -> np.ndarray:
    names = ["batch", "channel", *tensor.spatial]
    squeeze = tuple(i for i, n in enumerate(names) if n not in tensor.model_axes)
    if squeeze:
        batch = batch.squeeze(axis=squeeze)
        names = [n for n in names if n in tensor.model_axes]
    order = [names.index(n) for n in tensor.model_axes]
    return np.ascontiguousarray(batch.transpose(order))


def _from_model(result: np.ndarray, tensor: OutputPlan, batch: int) -> np.ndarray:
    order = [
        tensor.model_axes.index(n)
        for n in ["batch", "channel", *tensor.spatial]
        if n in tensor.model_axes
    ]
    result = result.transpose(order)
    if "batch" not in tensor.model_axes:
        result = result[None]
    if "channel" not in tensor.model_axes:
        result = result[:, None]
    if result.shape[0] != batch:
        raise RuntimeError(f"{tensor.id}: the model returned {result.shape[0]} of {batch} tiles")
    return result


def _blockwise(tensor: OutputPlan) -> bool:
    """Post-processing that needs no statistics of the output runs tile by tile."""
    return not any(s.tensor == tensor.id for s in ops.needed_stats(tensor.processing))


def _slabs(length: int, rows: int) -> Iterator[slice]:
    for start in range(0, length, rows):
        yield slice(start, start + rows)


def predict_array(
    plan: ModelPlan,
    weights: Weights,
    raw: np.ndarray,
    *,
    max_tile: int | None = None,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Outputs (canonical ``(1, c, *spatial)``) of the model for ``raw`` (canonical input)."""
    tensor = plan.inputs[0]
    shape = raw.shape[2:]
    wanted = [s for s in ops.needed_stats(tensor.processing) if s.tensor == tensor.id]
    for output in plan.outputs:
        wanted += [s for s in ops.needed_stats(output.processing) if s.tensor == tensor.id]
    measured: dict[ops.Stat, np.ndarray] = stats.compute(raw, list(dict.fromkeys(wanted)))

    tiles = plan_tiles(tensor, shape, max_tile)
    tile_voxels = math.prod(t.size for t in tiles) * tensor.channels
    fits = max(1, TILE_BUDGET // tile_voxels)
    per_call = tensor.batch_size or batch_size or min(fits, 8)

    results: dict[str, np.ndarray] = {}
    for output in plan.outputs:
        if not _blockwise(output):
            results[output.id] = np.empty((1, output.channels, *shape), dtype=np.float32)

    def emit(starts_batch: list[tuple[int, ...]]) -> None:
        windows = [_window(raw, tiles, s, tensor) for s in starts_batch]
        batch = ops.apply(tensor.processing, np.concatenate(windows), measured)
        produced = weights(_to_model(batch, tensor))
        for output, result in zip(plan.outputs, produced, strict=False):
            result = _from_model(result, output, len(starts_batch))
            if _blockwise(output):
                result = ops.apply(output.processing, result, measured)
            for index, starts in enumerate(starts_batch):
                keep = [slice(None)]
                target = [slice(None), slice(None)]
                for axis, start, length in zip(tiles, starts, shape, strict=True):
                    count = min(axis.stride, length - start)
                    keep.append(slice(axis.halo, axis.halo + count))
                    target.append(slice(start, start + count))
                block = result[index][tuple(keep)]
                if output.id not in results:
                    results[output.id] = np.empty((1, output.channels, *shape), dtype=block.dtype)
                results[output.id][0][tuple(target[1:])] = block

    pending: list[tuple[int, ...]] = []
    for starts in itertools.product(*(t.starts for t in tiles)):
        pending.append(starts)
        if len(pending) == per_call:
            emit(pending)
            pending = []
    if pending:
        emit(pending)

    for output in plan.outputs:
        if _blockwise(output):
            continue
        raw_output = results[output.id]
        own = [s for s in ops.needed_stats(output.processing) if s.tensor == output.id]
        measured.update(stats.compute(raw_output, own))
        rows = max(1, stats.SLAB_ELEMENTS // max(1, raw_output[0, :, 0].size))
        final: np.ndarray | None = None
        for part in _slabs(shape[0], rows):
            done = ops.apply(output.processing, raw_output[:, :, part], measured)
            if final is None:
                final = (
                    raw_output
                    if done.dtype == raw_output.dtype
                    else np.empty(raw_output.shape, dtype=done.dtype)
                )
            final[:, :, part] = done
        results[output.id] = final if final is not None else raw_output
    return results
