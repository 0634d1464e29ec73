"""Push with the runner layer: an image archive to the local registry (Debian's
``docker-registry`` on loopback), time and peak memory (streamed: memory must not grow with the
archive), then the same push again (every blob already there: nothing of the archive is read
for its layers), then a pull into a fresh image store.

Each push runs in a fresh process (its peak RSS is the figure). ``GANTRY_BENCH_PUSH_MB``: the
synthetic image's payload (default 256, 3 gzip layers of incompressible 1 MiB files). The
runner layer is ``dist/runner/gantry-runner-layer.tar`` when built (``make runner``), else a
32 MiB stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

CHILD = """
import re, sys, time
from gantry.oci import ImageStore, read_archive
from gantry.oci.mutate import LayerFile
from gantry.oci.push import pull, push_with_runner
from gantry.oci.registry import Registry
action, url, archive, runner, tag, store = sys.argv[1:7]
registry = Registry(url)
started = time.perf_counter()
if action == "push":
    push_with_runner(read_archive(archive), LayerFile.read(runner), registry, "bench/image", tag)
else:
    pull(registry, "bench/image", tag, ImageStore(store))
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(time.perf_counter() - started, hwm)
"""


def _child(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True, cwd=REPO
    )
    seconds, peak_kib = done.stdout.split()
    return {"seconds": float(seconds), "peak_rss_mb": int(peak_kib) / 1024}


def _runner_layer(work: Path) -> Path:
    built = REPO / "dist" / "runner" / "gantry-runner-layer.tar"
    if built.exists():
        return built
    from tests.image_builder import directory, file, layer_tar

    path = work / "runner.tar"
    with path.open("wb") as out:
        layer_tar([directory("gantry"), file("gantry/blob", os.urandom(32 * MB))], out)
    return path


def main() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.bench_images import _synthetic
    from gantry.oci.local_registry import local_registry, registry_binary

    if registry_binary() is None:
        print("docker-registry is not installed (apt-get install docker-registry): skipped")
        return
    megabytes = int(os.environ.get("GANTRY_BENCH_PUSH_MB", "256"))
    with tempfile.TemporaryDirectory(prefix="gantry-bench-push-") as scratch:
        work = Path(scratch)
        archive = _synthetic(work / "image.tar", megabytes, "oci")
        runner = _runner_layer(work)
        size = archive.stat().st_size / MB
        print(
            f"synthetic OCI image: {megabytes} MiB payload, archive {size:.0f} MiB; runner "
            f"layer {runner.stat().st_size / MB:.0f} MiB"
        )
        with local_registry(work / "registry") as url:
            args = (url, str(archive), str(runner))
            cold = _child("push", *args, "v1", "")
            again = _child("push", *args, "v2", "")
            pulled = _child("pull", *args, "v1", str(work / "store"))
        total = size + runner.stat().st_size / MB
        print(
            f"push (all blobs new): {cold['seconds']:.2f} s ({total / cold['seconds']:.0f} MiB/s)"
            f", peak RSS {cold['peak_rss_mb']:.0f} MiB"
        )
        print(
            f"push again (all blobs there): {again['seconds']:.2f} s, "
            f"peak RSS {again['peak_rss_mb']:.0f} MiB"
        )
        print(
            f"pull into a fresh image store: {pulled['seconds']:.2f} s, "
            f"peak RSS {pulled['peak_rss_mb']:.0f} MiB"
        )
        print(json.dumps({"push": cold, "push_again": again, "pull": pulled}))
