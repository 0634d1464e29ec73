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

# Tiles of these sides keep the activations of a U-Net-sized model in tens (2D) or hundreds
# (3D) of MiB on the CPU (bioimageio.core's default block is 224); a GPU run may ask for more
# (--max-tile). In 3D the halos are most of the work: 160-pixel sides instead of 128 took a
# fifth less CPU time on a 128x1024^2 volume (halo 16) for twice the peak (525 vs 264 MiB).
DEFAULT_TILE = {2: 256, 3: 160}
# Input voxels per forward call, all tiles of a batch together. On the CPU the time per voxel
# does not drop with more tiles per call, but the activations held grow with them: one 256^2
# tile per call keeps a 2D run's peak at 22 MiB instead of 31 MiB for two.
TILE_BUDGET = 1 << 16


@dataclass(frozen=True)
class AxisTiles:
    size: int  # tile size the model sees
    halo: int
    stride: int  # distance between tile starts (output pixels kept per tile)
    starts: tuple[int, ...]  # first kept output pixel of each tile


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tile_axis(axis: SpatialAxis, length: int, target: int) -> AxisTiles:
    """Tiles for one axis of ``length`` pixels: as few tiles of at most ``target`` pixels as
    cover it, then the smallest valid size that still does (so the last tile is not mostly
    padding)."""
    halo = axis.halo
    if axis.step == 0:  # one valid size
        if length + 2 * halo <= axis.min:
            return AxisTiles(axis.min, halo, length, (0,))
        stride = axis.min - 2 * halo
        return AxisTiles(axis.min, halo, stride, tuple(range(0, length, stride)))
    whole = axis.valid_size_at_least(length + 2 * halo)
    if whole <= max(target + target // 4, axis.min):  # a little over the target: one tile
        return AxisTiles(whole, halo, length, (0,))
    largest = axis.valid_size_at_most(max(target, axis.min))
    unit = axis.step or 1
    widest = (largest - 2 * halo) // unit * unit  # strides stay on the model's step grid
    if widest <= 0:
        largest = axis.valid_size_at_least(2 * halo + unit)
        widest = (largest - 2 * halo) // unit * unit
    count = _ceil_div(length, widest)
    inner = _ceil_div(_ceil_div(length, count), unit) * unit
    size = axis.valid_size_at_least(inner + 2 * halo)
    stride = (size - 2 * halo) // unit * unit
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
    # numpy types ``mode`` as its literal names; the package's pad mode is one of them, as a str.
    return np.pad(window, pads, mode=tensor.pad_mode)  # type: ignore[call-overload]


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
    if any(op.whole for op in tensor.processing):
        return False
    return not any(s.tensor == tensor.id for s in ops.needed_stats(tensor.processing))


def _batches(items: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Prediction:
    """A prediction in progress: the tiling, the input's statistics, and ``blocks()``."""

    plan: ModelPlan
    weights: Weights
    raw: np.ndarray
    tiles: list[AxisTiles]
    per_call: int
    measured: dict[ops.Stat, np.ndarray]
    tile_ops: list[ops.Op]  # the input's processing applied tile by tile

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape[2:])

    @property
    def streamable(self) -> bool:
        """Every output is final tile by tile (no statistics of an output are needed)."""
        return all(_blockwise(o) for o in self.plan.outputs)

    def blocks(self) -> Iterator[tuple[tuple[slice, ...], dict[str, np.ndarray]]]:
        """Each tile's kept output: ``(spatial slices in the image, {output id: (1, c,
        *block)})``. Outputs needing their own statistics come raw (post-processing not
        applied)."""
        tensor = self.plan.inputs[0]
        starts = list(itertools.product(*(t.starts for t in self.tiles)))
        for group in _batches(starts, self.per_call):
            windows = [_window(self.raw, self.tiles, s, tensor) for s in group]
            batch = ops.apply(self.tile_ops, np.concatenate(windows), self.measured)
            produced = self.weights(_to_model(batch, tensor))
            results = {
                output.id: _from_model(result, output, len(group))
                for output, result in zip(self.plan.outputs, produced, strict=False)
            }
            for index, tile_starts in enumerate(group):
                keep: list[slice] = [slice(index, index + 1), slice(None)]
                target: list[slice] = []
                for axis, start, length in zip(self.tiles, tile_starts, self.shape, strict=True):
                    count = min(axis.stride, length - start)
                    keep.append(slice(axis.halo, axis.halo + count))
                    target.append(slice(start, start + count))
                blocks = {}
                for output in self.plan.outputs:
                    block = results[output.id][tuple(keep)]
                    if _blockwise(output):  # pointwise: only the kept pixels need it
                        block = ops.apply(output.processing, block, self.measured)
                    blocks[output.id] = block
                yield tuple(target), blocks

    def finish(self, output: OutputPlan, raw_output: np.ndarray) -> np.ndarray:
        """Post-process a whole raw output that needs its own statistics, slab by slab."""
        own = [s for s in ops.needed_stats(output.processing) if s.tensor == output.id]
        self.measured.update(stats.compute(raw_output, own))
        rows = max(1, stats.SLAB_ELEMENTS // max(1, raw_output[0, :, 0].size))
        final: np.ndarray | None = None
        for start in range(0, self.shape[0], rows):
            part = slice(start, start + rows)
            done = ops.apply(output.processing, raw_output[:, :, part], self.measured)
            if final is None:
                same = done.dtype == raw_output.dtype
                final = raw_output if same else np.empty(raw_output.shape, dtype=done.dtype)
            final[:, :, part] = done
        assert final is not None
        return final


def start(
    plan: ModelPlan,
    weights: Weights,
    raw: np.ndarray,
    *,
    max_tile: int | None = None,
    batch_size: int | None = None,
) -> Prediction:
    """Measure the input's statistics (whole image, before tiling) and plan the tiles."""
    tensor = plan.inputs[0]
    wanted = [s for s in ops.needed_stats(tensor.processing) if s.tensor == tensor.id]
    for output in plan.outputs:
        wanted += [s for s in ops.needed_stats(output.processing) if s.tensor == tensor.id]
    measured = stats.compute(raw, list(dict.fromkeys(wanted)))
    tile_ops = tensor.processing
    whole = [i for i, op in enumerate(tensor.processing) if op.whole]
    if whole:  # steps up to the last whole-tensor one run on the whole image first
        raw = ops.apply(tensor.processing[: whole[-1] + 1], raw, measured)
        tile_ops = tensor.processing[whole[-1] + 1 :]
    tiles = plan_tiles(tensor, tuple(raw.shape[2:]), max_tile)
    tile_voxels = math.prod(t.size for t in tiles) * tensor.channels
    per_call = tensor.batch_size or batch_size or max(1, min(TILE_BUDGET // tile_voxels, 8))
    return Prediction(plan, weights, raw, tiles, per_call, measured, tile_ops)


def predict_array(
    plan: ModelPlan,
    weights: Weights,
    raw: np.ndarray,
    *,
    max_tile: int | None = None,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Outputs (canonical ``(1, c, *spatial)``) of the model for ``raw`` (canonical input),
    all in memory."""
    prediction = start(plan, weights, raw, max_tile=max_tile, batch_size=batch_size)
    results: dict[str, np.ndarray] = {}
    for target, blocks in prediction.blocks():
        for output in plan.outputs:
            block = blocks[output.id]
            if output.id not in results:
                shape = (1, output.channels, *prediction.shape)
                results[output.id] = np.empty(shape, dtype=block.dtype)
            results[output.id][(slice(None), slice(None), *target)] = block
    for output in plan.outputs:
        if not _blockwise(output):
            results[output.id] = prediction.finish(output, results[output.id])
    return results
