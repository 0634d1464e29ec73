"""Start-up time and size of the static runner next to the Python runner.

Both run ``--version``, which imports everything a job needs (boto3, pydantic, the runner)
before it answers. *Cold*: every file the runner reads is first dropped from the page cache
(``posix_fadvise(DONTNEED)`` on those files only, so other work on the machine keeps its
cache), as on a host that just pulled the image; *warm*: right after another start; *CPU*: user
plus system seconds of a warm start, which a busy machine disturbs least. Medians of
``GANTRY_BENCH_STARTUP_RUNS`` (default 10) each.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tests.integration.runner_binary import BUILT_LAYER_TAR, built_binary

REPO = Path(__file__).resolve().parents[1]


def _files(roots: list[Path]) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
            continue
        for directory, _, names in os.walk(root):
            found.extend(Path(directory) / name for name in names)
    return found


def _evict(files: list[Path]) -> None:
    for path in files:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def _once(argv: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one start."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _measure(argv: list[str], files: list[Path], runs: int) -> tuple[float, float, float]:
    """Medians: cold wall, warm wall, warm CPU (the figure a busy machine disturbs least)."""
    cold = []
    for _ in range(runs):
        _evict(files)
        cold.append(_once(argv)[0])
    _once(argv)
    warm = [_once(argv) for _ in range(runs)]
    return (
        statistics.median(cold),
        statistics.median(wall for wall, _ in warm),
        statistics.median(cpu for _, cpu in warm),
    )


def _size_mb(files: list[Path]) -> float:
    return sum(path.stat().st_size for path in files if not path.is_symlink()) / 1e6


def main() -> None:
    runs = int(os.environ.get("GANTRY_BENCH_STARTUP_RUNS", "10"))
    python_files = _files(
        [
            Path(sysconfig.get_paths()["purelib"]),
            Path(sysconfig.get_paths()["stdlib"]),
            Path(os.path.realpath(sys.executable)),
            REPO / "batch_runner",
            REPO / "gantry",
        ]
    )
    rows = [
        (
            "python -m batch_runner",
            "(the venv)",
            *_measure([sys.executable, "-m", "batch_runner", "--version"], python_files, runs),
        )
    ]
    binary = built_binary()
    if binary is not None:
        layer = binary.parents[2]
        layer_files = _files([layer])
        size = (
            f"{BUILT_LAYER_TAR.stat().st_size / 1e6:.1f} MB"
            if BUILT_LAYER_TAR.is_file()
            else f"{_size_mb(layer_files):.1f} MB"
        )
        rows.append(
            (
                "gantry-runner (static)",
                size,
                *_measure([str(binary), "--version"], layer_files, runs),
            )
        )
    print(f"runner start-up (`--version`), median of {runs}:")
    print(f"{'runner':<26}{'size':>12}{'cold s':>10}{'warm s':>10}{'warm CPU s':>12}")
    for name, size, cold, warm, cpu in rows:
        print(f"{name:<26}{size:>12}{cold:>10.3f}{warm:>10.3f}{cpu:>12.3f}")
    if binary is None:
        print("gantry-runner: not built (make runner)")
