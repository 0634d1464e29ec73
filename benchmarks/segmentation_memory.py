"""Peak memory of validating a large segmentation input, next to the image's size.

Part of ``python -m benchmarks images``. A segmentation's every voxel is checked against its
interface's overlay segments; that check must hold a few MiB of the image at a time, not the
image. For each format (.mha raw, .mha zlib-compressed, .tif written page by page in
strips), a mask of ``GANTRY_BENCH_SEGMENTATION_MB`` MiB (default 200; 0 skips this part)
is uploaded to the one-machine endpoint (``gantry.local.endpoint``, durable) served by this
process, and a fresh process runs the job's input validation (``validate_pending_inputs``,
the upload handler's code) against it: its peak RSS (VmHWM) is the figure, printed next to
that of the same process validating a one-slice (256 KiB) mask of the same format (imports
and clients: the floor). The time printed covers the validation and the job's queueing (its
inputs copied to the job's folder, server-side).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

_CHILD = """
import re, sys, time
from gantry.context import Context
from gantry.pipeline.inputs import validate_pending_inputs
from gantry.settings import Settings
from tests.integration.test_inputs_support import RecordingCompute

settings = Settings.model_validate_json(sys.argv[1])
ctx = Context.create(settings)
ctx.compute_backend = RecordingCompute()
started = time.perf_counter()
validate_pending_inputs(ctx, sys.argv[2])
seconds = time.perf_counter() - started
job = ctx.store.jobs.get(sys.argv[2])
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(seconds, hwm, job.status.name, repr(job.error_message))
"""


def _write_mask(path: Path, megabytes: int, how: str) -> Path:
    import numpy as np

    side = 512
    depth = max(1, megabytes * MB // (side * side))
    mask = np.zeros((depth, side, side), dtype=np.uint8)
    mask[depth // 4 : depth // 2, 100:400, 100:400] = 1
    if how.startswith("mha"):
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(mask), str(path), how == "mha-zlib")
    else:
        import tifffile

        # Page by page, tags between pages (as many writers do): read page by page.
        with tifffile.TiffWriter(path) as writer:
            for page in mask:
                writer.write(page, rowsperstrip=64, metadata=None)
    return path


def _validate_in_child(settings: Any, job_pk: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, settings.model_dump_json(), job_pk],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
    )
    seconds, peak_kib, status, error = done.stdout.split(maxsplit=3)
    return {
        "seconds": float(seconds),
        "peak_rss_mb": int(peak_kib) / 1024,
        "status": status,
        "error": error.strip(),
    }


def measure(megabytes: int) -> dict[str, Any]:
    """Print and return the peak RSS of validating each format at ``megabytes`` MiB."""
    from gantry.context import Context
    from gantry.local.endpoint import EmbeddedAws
    from gantry.provision import ensure_data
    from gantry.services.jobs import JobInput
    from gantry.settings import Settings
    from tests.integration.test_inputs_support import (
        make_algorithm,
        make_socket,
        new_job,
        put_upload,
    )

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    scratch = tempfile.TemporaryDirectory(prefix="gantry-bench-seg-")
    work = Path(scratch.name)
    server = EmbeddedAws(data_dir=work / "data").start()
    results: dict[str, Any] = {}
    try:
        settings = Settings(
            table_name="bench-segmentation",
            bucket_name="bench-segmentation",
            region="us-east-1",
            endpoint_url=server.url,
            api_base_url="https://api.gantry.test/api/v1/",
            compute_backend="local",
        )
        ctx = Context.create(settings)
        ensure_data(ctx.clients, settings)
        segments = [{"name": "organ", "voxel_value": 1}]
        make_socket(ctx, "Mask", "SEG", "images/mask", overlay_segments=segments)
        make_socket(ctx, "Result", "JSON", "results.json")
        algorithm = make_algorithm(ctx, "Segmenter", ["mask"], ["result"])

        def job_for(path: Path) -> str:
            upload = put_upload(ctx, path.name, path)
            inputs = [JobInput(interface="mask", user_uploads=[upload.pk])]
            return new_job(ctx, algorithm, inputs).pk

        for how, name in (("mha", "mask.mha"), ("mha-zlib", "mask.mha"), ("tif", "mask.tif")):
            (work / how).mkdir()
            small = _write_mask(work / how / f"small-{name}", 0, how)
            floor = _validate_in_child(settings, job_for(small))
            path = _write_mask(work / how / name, megabytes, how)
            stored = path.stat().st_size / MB
            job_pk = job_for(path)
            path.unlink()
            result = _validate_in_child(settings, job_pk)
            result["file_mb"] = stored
            result["floor_peak_rss_mb"] = floor["peak_rss_mb"]
            results[how] = result
            above = result["peak_rss_mb"] - floor["peak_rss_mb"]
            print(
                f"  {how:9} {megabytes} MiB of voxels ({stored:.1f} MiB file): "
                f"peak RSS {result['peak_rss_mb']:.0f} MiB, {above:+.0f} MiB over a one-slice "
                f"mask's {floor['peak_rss_mb']:.0f} MiB; validate + queue "
                f"{result['seconds']:.2f} s, job {result['status']}"
            )
    finally:
        server.stop()
        scratch.cleanup()
    return results
