"""Image store: unpacking an image archive into a root filesystem, cold and warm, and the
memory it takes (streamed: it must not grow with the archive).

Each measurement runs in a fresh process (its peak RSS is the figure). Sizes by environment
variables: ``GANTRY_BENCH_IMAGE_MB`` (uncompressed payload of the synthetic image, default
256, in 3 gzip layers of 1 MiB files; 0 skips this part) and ``GANTRY_BENCH_IMAGE_LAYOUT``
(``oci``, default, ``docker`` or ``docker25``).

Then medical images: the peak memory of validating a large segmentation input next to its
size (``benchmarks/segmentation_memory.py``, ``GANTRY_BENCH_SEGMENTATION_MB``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def _synthetic(path: Path, megabytes: int, layout: str, top: bytes = b"v1") -> Path:
    from tests.image_builder import ImageSpec, directory, file, write_archive

    per_layer = max(1, megabytes // 3)
    layers = []
    for number in range(3):
        entries = [directory(f"data{number}")]
        # Incompressible, and the same in both images, so the sibling shares these layers.
        rng = random.Random(number)
        for index in range(per_layer):
            entries.append(file(f"data{number}/f{index}.bin", rng.randbytes(MB)))
        layers.append(entries)
    layers.append([file("app/version", top)])
    spec = ImageSpec(layers=layers, cmd=["/app/run"], user="1000")
    layer_compression = "none" if layout == "docker" else "gzip"
    return write_archive(path, spec, layout=layout, layer_compression=layer_compression)  # type: ignore[arg-type]


def _measure(archive: Path, store: Path) -> dict[str, float]:
    """Prepare in a child process: its wall time and peak RSS."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    code = (
        "import re, sys, time; from gantry.oci import ImageStore; "
        "t = time.perf_counter(); ImageStore(sys.argv[2]).prepare(sys.argv[1]); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "print(time.perf_counter() - t, hwm)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(archive), str(store)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    seconds, peak_kib = done.stdout.split()
    return {"seconds": float(seconds), "peak_rss_mb": int(peak_kib) / 1024}


def main() -> None:
    sys.path.insert(0, str(REPO))
    megabytes = int(os.environ.get("GANTRY_BENCH_IMAGE_MB", "256"))
    if megabytes > 0:
        _container_images(megabytes)
    segmentation_mb = int(os.environ.get("GANTRY_BENCH_SEGMENTATION_MB", "200"))
    if segmentation_mb > 0:
        from benchmarks.segmentation_memory import measure

        print(json.dumps({"segmentation_validation": measure(segmentation_mb)}))


def _container_images(megabytes: int) -> None:
    layout = os.environ.get("GANTRY_BENCH_IMAGE_LAYOUT", "oci")
    with tempfile.TemporaryDirectory(prefix="gantry-bench-images-") as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        archive = _synthetic(work / "image.tar", megabytes, layout)
        sibling = _synthetic(work / "sibling.tar", megabytes, layout, top=b"v2")
        built = time.perf_counter() - started
        size = archive.stat().st_size / MB
        print(
            f"synthetic {layout} image: {megabytes} MiB payload in 4 layers, archive {size:.0f} MiB"
            f" (built twice in {built:.1f} s)"
        )
        store = work / "store"
        cold = _measure(archive, store)
        warm = _measure(archive, store)
        shared = _measure(sibling, store)
        rate = megabytes / cold["seconds"]
        print(
            f"cold prepare (unpack + root filesystem): {cold['seconds']:.2f} s "
            f"({rate:.0f} MiB/s), peak RSS {cold['peak_rss_mb']:.0f} MiB"
        )
        print(
            f"warm prepare (already unpacked; one read of the archive's metadata): "
            f"{warm['seconds']:.2f} s"
        )
        print(f"sibling image (3 of 4 layers cached):    {shared['seconds']:.2f} s")
        from tests.example_images import gc_template_image

        example = gc_template_image("exec")
        gc = _measure(example, work / "store-gc")
        print(
            f"gc-template example ({example.stat().st_size / MB:.0f} MiB archive, Debian "
            f"python3): cold prepare {gc['seconds']:.2f} s"
        )
        print(json.dumps({"cold": cold, "warm": warm, "sibling": shared, "gc_template": gc}))
