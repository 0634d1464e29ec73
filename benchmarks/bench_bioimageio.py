"""The bioimage.io runtime against bioimageio.core's predict, same model, same inputs, same run.

Model: the tests' two-level U-Net (ONNX, halo 16, sizes 64 + 16k), as a 0.5 package. Inputs: a
2048^2 image and a 128x1024^2 volume. Each prediction runs in a fresh process with the model
loaded and the input in memory; "peak" is the memory the call added to that process at its
highest (``/proc/self/clear_refs`` resets the high-water mark first). bioimageio.core runs in
its own environment (``make bioimageio-oracle``), tiled with its default block size (2D) or
the largest block that fits the volume (3D: core's default block is larger than 128 slices),
and untiled for 2D; its output stays in memory. The runtime goes from the image it read to an
.mha file written tile by tile (its job path). Speed is compared in CPU time (all threads),
which a busy machine disturbs less than the wall clock; both are printed. Outputs are
compared in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ORACLE_PYTHON = REPO / ".venv-bioimageio" / "bin" / "python"
ORACLE_SCRIPT = REPO / "benchmarks" / "bioimageio_core.py"
CASES = [("2D 2048^2", (2048, 2048), [10, None]), ("3D 128x1024^2", (128, 1024, 1024), [4])]


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def runtime_worker(request_path: str) -> None:
    """In a fresh process: the runtime from a read image to an .mha written tile by tile;
    prints ``{seconds, peak_bytes}``."""
    from batch_runner.bioimageio import images, predict, weights
    from batch_runner.bioimageio.package import load_plan
    from batch_runner.bioimageio.runtime import predict_loaded

    request = json.loads(Path(request_path).read_text())
    plan = load_plan(request["model"])
    runner = weights.load(plan)
    loaded = images.read(Path(request["input"]), plan.inputs[0])
    predict.predict_array(plan, runner, np.array(loaded.array[..., :64, :64]))  # warm up
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss("VmRSS")
    started = time.perf_counter()
    cpu = time.process_time()
    predict_loaded(plan, loaded, {"prob": Path(request["output"])}, runner)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    peak = _rss("VmHWM") - before
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_bytes": peak}))


def _run(command: list[str]) -> dict[str, float]:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(label: str, figures: dict[str, float], difference: float | None = None) -> str:
    text = (
        f"  {label:<40} {figures['seconds']:6.2f} s wall {figures['cpu_seconds']:6.2f} s CPU"
        f"   peak {figures['peak_bytes'] / 2**20:6.0f} MiB"
    )
    if difference is not None:
        text += f"   max |Δ| vs runtime {difference:.2g}"
    return text


def main() -> None:
    try:
        import bioimageio.spec  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        print("skipped: needs the bioimageio extra and onnx (pip install -e '.[dev]')")
        return
    sys.path.insert(0, str(REPO))
    import SimpleITK as sitk

    from tests.bioimageio_support import build_package

    have_core = ORACLE_PYTHON.exists()
    if not have_core:
        print("bioimageio.core missing: run `make bioimageio-oracle` for the comparison")
    with tempfile.TemporaryDirectory(prefix="bench-bioimageio-") as scratch:
        folder = Path(scratch)
        for label, shape, blocksizes in CASES:
            ndim = len(shape)
            package = build_package(folder / f"model{ndim}d", ndim=ndim)
            image = np.random.default_rng(0).gamma(2.0, 20.0, (1, 1, *shape)).astype(np.float32)
            np.save(folder / "input.npy", image)
            sitk.WriteImage(sitk.GetImageFromArray(image[0, 0]), str(folder / "input.mha"))
            del image
            print(f"{label} (U-Net, {ndim}D, halo 16):", flush=True)
            request = {
                "model": str(package.directory),
                "input": str(folder / "input.mha"),
                "output": str(folder / "ours.mha"),
            }
            (folder / "ours.json").write_text(json.dumps(request))
            ours = _run(
                [sys.executable, "-c", _WORKER, str(folder / "ours.json")],
            )
            print(_line("gantry runtime (tiled, to .mha)", ours), flush=True)
            if not have_core:
                continue
            written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ours.mha")))
            reference = np.moveaxis(written, -1, 0)[None]
            for blocksize in blocksizes:
                core_request = {
                    "rdf": str(package.directory / "rdf.yaml"),
                    "input": str(folder / "input.npy"),
                    "outputs": {"prob": str(folder / "core.npy")},
                    "blocksize": blocksize,
                }
                (folder / "core.json").write_text(json.dumps(core_request))
                how = "untiled" if blocksize is None else f"tiled, blocksize {blocksize}"
                try:
                    theirs = _run(
                        [str(ORACLE_PYTHON), str(ORACLE_SCRIPT), str(folder / "core.json")]
                    )
                except RuntimeError as error:
                    print(f"  bioimageio.core ({how}) failed: {str(error).splitlines()[-1]}")
                    continue
                difference = float(np.abs(np.load(folder / "core.npy") - reference).max())
                print(_line(f"bioimageio.core 0.11 ({how})", theirs, difference), flush=True)
                print(
                    f"  {'':<40} runtime {theirs['cpu_seconds'] / ours['cpu_seconds']:.1f}x less"
                    f" CPU time ({theirs['seconds'] / ours['seconds']:.1f}x wall clock), "
                    f"{theirs['peak_bytes'] / max(ours['peak_bytes'], 1):.1f}x less memory"
                )
            del reference


_WORKER = (
    "import sys; from benchmarks.bench_bioimageio import runtime_worker; "
    "runtime_worker(sys.argv[1])"
)
