"""Model import: the sha256 and the member check of a model tarball in one streaming pass
(``gantry.tarballs.scan`` through ``Digesting``, what the upload handler runs on the S3 body),
its time and peak memory, which must not grow with the tarball.

Each size runs in a fresh process (its peak RSS is the figure), reading a local file: on AWS
the same pass reads the S3 object's body. Sizes by ``GANTRY_BENCH_MODEL_MB`` (comma-separated,
default ``64,512``): a gzip tarball of 8 MiB incompressible files.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def _tarball(path: Path, megabytes: int) -> Path:
    rng = random.Random(megabytes)
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for index in range(max(1, megabytes // 8)):
            body = rng.randbytes(8 * MB)
            info = tarfile.TarInfo(f"weights/part{index:04d}.bin")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return path


def _measure(tarball: Path) -> tuple[float, float, str]:
    """Scan in a child process: seconds, peak RSS in MB, and the digest it found."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    code = (
        "import re, sys, time; from gantry.tarballs import Digesting, scan; "
        "t = time.perf_counter(); s = Digesting(open(sys.argv[1], 'rb')); scan(s); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "print(time.perf_counter() - t, hwm, s.sha256)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tarball)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    seconds, peak_kib, digest = done.stdout.split()
    return float(seconds), int(peak_kib) / 1024, digest


def main() -> None:
    import hashlib

    sizes = [int(s) for s in os.environ.get("GANTRY_BENCH_MODEL_MB", "64,512").split(",")]
    with tempfile.TemporaryDirectory(prefix="gantry-bench-models-") as scratch:
        for megabytes in sizes:
            tarball = _tarball(Path(scratch) / f"model-{megabytes}.tar.gz", megabytes)
            size = tarball.stat().st_size
            seconds, peak, digest = _measure(tarball)
            with tarball.open("rb") as handle:
                expected = "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
            assert digest == expected, (digest, expected)
            print(
                f"model import scan, {size / MB:.0f} MB tarball: {seconds:.2f} s "
                f"({size / MB / seconds:.0f} MB/s), peak RSS {peak:.0f} MB",
                flush=True,
            )
            tarball.unlink()
