"""Import of large image archives: validation (``read_archive``, streamed) and the push with the
runner layer to the local stack's registry (``push_with_runner``), time and peak memory for a
1 GB and a 5 GB archive. Streamed means memory stays flat whatever the archive's size.

The archives are ``docker save`` archives (Docker < 25) written on the fly: several uncompressed
layers of incompressible bytes, each layer tar generated while it is written into the archive
(never whole in memory), its diff_id hashed on the way. Each import runs in a fresh process
(its peak RSS is the figure) against the registry ``gantry local up`` would use (Debian's
``docker-registry`` when installed, else the OCI layout store). The archive is read from a
file, as the upload handler reads its S3 object: one pass to validate, one to push.

``GANTRY_BENCH_IMPORT_GB``: the sizes (default ``1,5``). Free disk needed: about twice the
largest size (the archive and the registry's copy); both are removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
LAYERS = 4
CHUNK = 8 * MB

CHILD = """
import re, sys, time
from pathlib import Path
from gantry.local.images import runner_layer
from gantry.oci import read_archive
from gantry.oci.layout import OciLayout
from gantry.oci.push import push_with_runner
from gantry.oci.registry import Registry
where, archive, work = sys.argv[1:4]
registry = Registry(where) if where.startswith("http") else OciLayout(where)
runner = runner_layer(Path(work))
started = time.perf_counter()
image = read_archive(archive)
problems = image.config.problems()
assert not problems, problems
checked = time.perf_counter()
push_with_runner(image, runner, registry, "bench/import", "image-1")
done = time.perf_counter()
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(checked - started, done - checked, hwm)
"""


class _LayerStream(io.RawIOBase):
    """One layer tar (a single file of ``size`` pseudo-random bytes), produced as it is read;
    its sha256 (the diff_id) is known once it has been read to the end."""

    def __init__(self, name: str, size: int, seed: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = size, 0o644, 1000, 1000
        self._header = info.tobuf(format=tarfile.PAX_FORMAT)
        self._random = random.Random(seed)
        self._data_left = size
        self._tail = b"\0" * ((-size) % 512) + b"\0" * 1024  # padding, then the end blocks
        self._pending = self._header
        self.size = len(self._header) + size + len(self._tail)
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            if self._data_left:
                take = min(CHUNK, self._data_left)
                self._pending = self._random.randbytes(take)
                self._data_left -= take
            elif self._tail:
                self._pending, self._tail = self._tail, b""
            else:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self.hasher.update(self._pending[:count])
        self._pending = self._pending[count:]
        return count


def write_archive(path: Path, total_bytes: int) -> Path:
    """A docker-save archive of ``LAYERS`` layers holding ``total_bytes`` in all."""
    diff_ids = []
    names = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for number in range(LAYERS):
            stream = _LayerStream(f"data/blob{number}.bin", total_bytes // LAYERS, number)
            name = f"layer{number}/layer.tar"
            info = tarfile.TarInfo(name)
            info.size = stream.size
            archive.addfile(info, io.BufferedReader(stream, CHUNK))
            diff_ids.append("sha256:" + stream.hasher.hexdigest())
            names.append(name)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"User": "1000", "Cmd": ["/app/run"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps(
            [{"Config": config_name, "RepoTags": ["bench/import:1"], "Layers": names}]
        ).encode()
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _child(where: str, archive: Path, work: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, where, str(archive), str(work)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    checked, pushed, peak_kib = done.stdout.split()
    return {
        "validate_seconds": float(checked),
        "push_seconds": float(pushed),
        "peak_rss_mb": int(peak_kib) / 1024,
    }


def main() -> None:
    sys.path.insert(0, str(REPO))
    from gantry.oci.local_registry import local_registry, registry_binary

    sizes = [float(s) for s in os.environ.get("GANTRY_BENCH_IMPORT_GB", "1,5").split(",")]
    scratch_root = Path(os.environ.get("GANTRY_BENCH_DIR", tempfile.gettempdir()))
    free = shutil.disk_usage(scratch_root).free
    needed = int(2.2 * max(sizes) * 1024**3)
    if free < needed:
        print(f"needs {needed / 1024**3:.0f} GB free in {scratch_root}, has {free / 1024**3:.0f}")
        return
    results = {}
    for gigabytes in sizes:
        with tempfile.TemporaryDirectory(prefix="gantry-bench-import-", dir=scratch_root) as tmp:
            work = Path(tmp)
            archive = write_archive(work / "image.tar", int(gigabytes * 1024**3))
            size = archive.stat().st_size
            with contextlib.ExitStack() as exits:
                if registry_binary():
                    where, kind = (
                        exits.enter_context(local_registry(work / "registry")),
                        "docker-registry",
                    )
                else:
                    kind, where = "OCI layout store", str(work / "layout")
                figures = _child(where, archive, work)
            total = figures["validate_seconds"] + figures["push_seconds"]
            print(
                f"import {size / 1024**3:.2f} GB archive ({LAYERS} layers) into the {kind}: "
                f"{total:.1f} s (validate {figures['validate_seconds']:.1f} s, push "
                f"{figures['push_seconds']:.1f} s, {size / MB / total:.0f} MiB/s), "
                f"peak RSS {figures['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
            results[f"{gigabytes:g}GB"] = {**figures, "archive_bytes": size}
    print(json.dumps(results))
