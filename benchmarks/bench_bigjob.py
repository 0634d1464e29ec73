"""A large image through the whole local platform: ``python -m benchmarks bigjob``.

For each size in ``GANTRY_BENCH_BIGJOB_MB`` (default ``150,600``), a fresh ``gantry local up``
(a process of its own, durable state on this disk) gets an uncompressed .mha CT volume of
that size, made on the fly, as a user's job would: uploaded through the API's multipart
protocol (``gantry jobs run … --input ct-image=big.mha`` does the same), then a job of a
trivial algorithm that copies its input image to its output image. Printed per size:

- the job's stages: upload, validation (creation until the job leaves "Validating inputs"),
  provisioning (until the runner starts), staging in (until the algorithm starts), the
  algorithm, staging out (until the runner ends) and the result (until the job is Succeeded);
- the platform's overhead (everything but the algorithm) next to ``cp`` of the same file
  twice on the same disk, plain (the copies may stay in the page cache) and each followed by
  ``sync`` (on the disk, as everything the platform acknowledges is), and the stack
  process's peak memory (VmHWM), which should not grow with the image;
- CPU seconds, steadier than wall time on a shared machine: the stack's (its runner
  processes included; the sandboxed algorithm's are not among them, it reports its own) next
  to those of the two ``cp``, split by what the job was doing (the upload, then each job
  status as polled), and the client's for sending the upload;
- the bytes the stack's processes wrote to storage (the sandboxed algorithm's own are not
  among them; it reports them itself), which do not depend on the machine's load at all, as
  a multiple of the image (``cp`` twice: 2x).

The algorithm writes its own start and end times as an output, so the stages around it come
from the same clock. Needs about 8 times the largest size free on the disk of
``GANTRY_BENCH_DIR`` (default: the system's temporary folder); removes everything it wrote.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

SIZES_MB = [int(s) for s in os.environ.get("GANTRY_BENCH_BIGJOB_MB", "150,600").split(",") if s]
POLL_SECONDS = 0.25  # the API answers each poll: more often would add to its CPU time
DEADLINE_SECONDS = 1800.0
START_SECONDS = 120.0
LOCAL_UP = [sys.executable, "-m", "gantry.cli", "local", "up"]
SLICE = 512  # voxels per row and column; int16

COPY_ALGORITHM = """
import json, os, resource, shutil, time
from pathlib import Path
started = time.time()
inputs = Path(os.environ.get("INPUT_DIR", "/input"))
outputs = Path(os.environ.get("OUTPUT_DIR", "/output"))
(source,) = sorted((inputs / "images" / "ct-image").glob("*.mha"))
target = outputs / "images" / "copy"
target.mkdir(parents=True, exist_ok=True)
shutil.copyfile(source, target / "copy.mha")
usage = resource.getrusage(resource.RUSAGE_SELF)
try:
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    written = int(io["write_bytes"])
except (OSError, KeyError, ValueError):
    written = 0
timing = {"started": started, "ended": time.time(), "cpu": usage.ru_utime + usage.ru_stime}
timing["written"] = written
(outputs / "timing.json").write_text(json.dumps(timing))
"""


def _write_volume(path: Path, megabytes: int) -> int:
    """An uncompressed int16 .mha of about ``megabytes`` MiB: a bright disc in air, per slice;
    its size in bytes."""
    import numpy

    depth = max(1, megabytes * 1024 * 1024 // (SLICE * SLICE * 2))
    y, x = numpy.mgrid[:SLICE, :SLICE]
    disc = (y - SLICE / 2) ** 2 + (x - SLICE / 2) ** 2 < (SLICE / 3) ** 2
    data = numpy.where(disc, 40, -1000).astype("<i2").tobytes()
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nElementSpacing = 0.7 0.7 1\n"
        f"DimSize = {SLICE} {SLICE} {depth}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    ).encode()
    with open(path, "wb") as handle:
        handle.write(header)
        for _ in range(depth):
            handle.write(data)
    return path.stat().st_size


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tree_usage(root: int) -> tuple[float, int]:
    """CPU seconds and bytes written to storage (``write_bytes``: counted when the page is
    dirtied, so whether or not it has reached the disk yet) of a process and all its
    descendants alive, each with those of its children it has waited for: the stack, its
    long-lived runner server and the runners it forked, whether they still run or have ended."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    written: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            io = Path(entry.path, "io").read_text()
        except OSError:
            continue  # ended meanwhile (counted by its parent once waited for), or not ours
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(f) for f in fields[11:15])
        written[int(entry.name)] = int(io.split("write_bytes: ", 1)[1].split()[0])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    cpu = sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")
    return cpu, sum(written.get(pid, 0) for pid in tree)


def _cp_twice(source: Path, work: Path, *, synced: bool) -> tuple[float, float, float]:
    """Seconds of two ``cp`` of the file and the CPU seconds of both; ``synced``: each
    followed by ``sync`` of the copy, so the bytes are on the disk as the platform's are
    before it answers."""
    cpu = _children_cpu()
    seconds = []
    for n in (1, 2):
        target = work / f"cp-{n}.mha"
        started = time.perf_counter()
        subprocess.run(["cp", str(source), str(target)], check=True)
        if synced:
            subprocess.run(["sync", str(target)], check=True)
        seconds.append(time.perf_counter() - started)
    cpu = _children_cpu() - cpu
    for n in (1, 2):
        (work / f"cp-{n}.mha").unlink()
    return seconds[0], seconds[1], cpu


class _Stack:
    """``gantry local up`` on its own state directory, as a user starts it."""

    def __init__(self, state_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
        env.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        self.state_dir = state_dir
        self.log = (state_dir.parent / "local-up.log").open("wb")
        self.process = subprocess.Popen(
            [*LOCAL_UP, "--state-dir", str(state_dir), "--port", "0", "--no-live"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_SECONDS
        connection = state_dir / "local.json"
        while not connection.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gantry local up did not start; see local-up.log")
            time.sleep(0.2)

    def usage(self) -> tuple[float, int]:
        return _tree_usage(self.process.pid)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _client(state_dir: Path) -> Any:
    from gantry.commands.client import GantryClient

    deadline = time.monotonic() + START_SECONDS
    while True:
        client = GantryClient.connect(state_dir=state_dir)
        try:
            client.get("gcapi/")
            return client
        except Exception:
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _setup(client: Any, workdir: Path) -> str:
    sockets = [
        {"title": "CT Image", "kind": "Image", "relative_path": "images/ct-image"},
        {"title": "Copy", "kind": "Image", "relative_path": "images/copy"},
        {"title": "Timing", "kind": "Anything", "relative_path": "timing.json"},
    ]
    for socket in sockets:
        client.post("components/interfaces/", socket)
    (workdir / "main.py").write_text(COPY_ALGORITHM)
    algorithm = client.post(
        "algorithms/",
        {
            "title": "Copy bench",
            "interfaces": [{"inputs": ["ct-image"], "outputs": ["copy", "timing"]}],
            "time_limit": 3600,
        },
    )
    client.post(
        "algorithms/images/",
        {
            "algorithm": algorithm["api_url"],
            "image": "local",
            "command": [sys.executable, "main.py"],
            "workdir": str(workdir),
        },
    )
    return str(algorithm["api_url"])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _duration(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _job(
    client: Any,
    algorithm_url: str,
    upload: dict[str, Any],
    usage: Callable[[], tuple[float, int]],
) -> tuple[dict[str, float], dict[str, float], dict[str, tuple[float, int]]]:
    """Create the job and follow it; the stages in seconds, the algorithm's own CPU seconds
    and bytes written, and the stack's CPU and bytes written (``usage``) while the job was in
    each status, as polled."""
    empty = dict.fromkeys(("value", "file", "image", "upload_session", "user_upload"))
    value = {"interface": "ct-image", **empty, "user_uploads": [upload["api_url"]]}
    value["image_name"] = None
    created = client.post("algorithms/jobs/", {"algorithm": algorithm_url, "inputs": [value]})
    validated = None
    deadline = time.monotonic() + DEADLINE_SECONDS
    by_status: dict[str, tuple[float, int]] = {}
    status, used = "Validating inputs", usage()
    while True:
        job = client.get(f"algorithms/jobs/{created['pk']}/")
        now = usage()
        cpu, written = by_status.get(status, (0.0, 0))
        by_status[status] = (cpu + now[0] - used[0], written + now[1] - used[1])
        status, used = job["status"], now
        if validated is None and job["status"] != "Validating inputs":
            validated = time.time()
        if job["status"] in ("Succeeded", "Failed", "Cancelled"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job still {job['status']} after {DEADLINE_SECONDS} s")
        time.sleep(POLL_SECONDS)
    if job["status"] != "Succeeded":
        raise RuntimeError(f"job {job['status']}: {job['error_message']}")
    timing = next(o["value"] for o in job["outputs"] if o["interface"]["slug"] == "timing")
    begun, started, completed = (
        _epoch(job["created"]),
        _epoch(job["started_at"]),
        _epoch(job["completed_at"]),
    )
    runner_end = started + _duration(job["invoke_duration"])
    validated = min(validated or started, started)
    return (
        {
            "validation": validated - begun,
            "provisioning": started - validated,
            "staging in": timing["started"] - started,
            "algorithm (copies the image)": timing["ended"] - timing["started"],
            "staging out": runner_end - timing["ended"],
            "result": completed - runner_end,
        },
        {"cpu": float(timing["cpu"]), "written": float(timing.get("written", 0))},
        by_status,
    )


def _one(megabytes: int, base: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bigjob-", dir=base))
    try:
        image = work / "big.mha"
        size = _write_volume(image, megabytes)
        os.sync()
        *cp, cp_cpu = _cp_twice(image, work, synced=False)
        *cp_synced, cp_synced_cpu = _cp_twice(image, work, synced=True)
        algorithm_dir = work / "algorithm"
        algorithm_dir.mkdir()
        stack = _Stack(work / "state")
        try:
            client = _client(work / "state")
            algorithm_url = _setup(client, algorithm_dir)
            (stack_cpu, stack_written), client_cpu = stack.usage(), _own_cpu()
            started = time.perf_counter()
            upload = client.upload(image)
            stages = {"upload (API multipart, 16 MiB parts)": time.perf_counter() - started}
            client_cpu = _own_cpu() - client_cpu
            after_upload = stack.usage()
            by_status = {"upload": (after_upload[0] - stack_cpu, after_upload[1] - stack_written)}
            job_stages, algorithm, job_usage = _job(client, algorithm_url, upload, stack.usage)
            algorithm_cpu = algorithm["cpu"]
            stages.update(job_stages)
            by_status.update(job_usage)
            client.close()
            rss = stack.peak_rss_mb()
            ended = stack.usage()
            stack_cpu = ended[0] - stack_cpu
            # The algorithm's own CPU and writes are not in these: the kernel adds a process's
            # to its parent's when the parent waits for it, and nothing outside the sandbox's
            # pid namespace waits for the processes inside.
            stack_written = ended[1] - stack_written
        finally:
            stack.stop()
        return {
            "size": size,
            "cp": cp,
            "cp_synced": cp_synced,
            "cp_cpu": cp_cpu + cp_synced_cpu,
            "stages": stages,
            "rss": rss,
            "platform_cpu": stack_cpu,
            "by_status": by_status,
            "algorithm_cpu": algorithm_cpu,
            "upload_client_cpu": client_cpu,
            "written": stack_written,
            "algorithm_written": algorithm["written"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    base = Path(os.environ.get("GANTRY_BENCH_DIR") or tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    needed = 8 * max(SIZES_MB) * 1024 * 1024
    if free < needed:
        print(f"skipped: {free / 2**30:.1f} GiB free in {base}, {needed / 2**30:.1f} GiB needed")
        return
    results = [_one(megabytes, base) for megabytes in SIZES_MB]

    print(f"An uncompressed .mha through `gantry local up` ({os.cpu_count()} CPUs, {base}):")
    for result in results:
        stages, (cp1, cp2) = result["stages"], result["cp"]
        mb = result["size"] / 2**20
        print(f" {mb:.0f} MiB image:")
        for label, seconds in stages.items():
            print(f"  {label:<40} {seconds:8.2f}s")
        algorithm = stages["algorithm (copies the image)"]
        upload = stages["upload (API multipart, 16 MiB parts)"]
        overhead = sum(stages.values()) - algorithm
        cp = cp1 + cp2
        synced = sum(result["cp_synced"])
        print(f"  {'cp of the file, twice (same disk)':<40} {cp1:8.2f}s + {cp2:.2f}s")
        print(f"  {'cp and sync of the copy, twice':<40} {synced:8.2f}s")
        for label, seconds in (
            ("platform overhead (all but the algorithm)", overhead),
            ("  of which after the upload", overhead - upload),
        ):
            print(
                f"  {label:<40} {seconds:8.2f}s  = {seconds / cp:.1f}x cp twice, "
                f"{seconds / synced:.1f}x cp and sync twice"
            )
        # Wall time on a shared machine is mostly waiting for a core: CPU time is the steadier
        # figure. cp's is the mean of the plain and the synced pair.
        cp_cpu = result["cp_cpu"] / 2
        platform_cpu = result["platform_cpu"]
        print(f"  {'CPU: cp of the file, twice':<40} {cp_cpu:8.2f}s")
        print(
            f"  {'CPU: the stack (not the algorithm)':<40} {platform_cpu:8.2f}s  "
            f"= {platform_cpu / cp_cpu:.1f}x cp twice"
        )
        for status, (seconds, _written) in result["by_status"].items():
            label = f"  during {status}"
            print(f"  {label:<40} {seconds:8.2f}s")
        algorithm_cpu = result["algorithm_cpu"]
        print(f"  {'CPU: the algorithm itself (sandboxed)':<40} {algorithm_cpu:8.2f}s")
        print(f"  {'CPU: the client sending the upload':<40} {result['upload_client_cpu']:8.2f}s")
        # Bytes written, unlike time, do not depend on the machine's load: cp twice writes
        # the image twice.
        written, size = result["written"], result["size"]
        print(
            f"  {'written: the stack (not the algorithm)':<40} {written / 2**20:8.0f} MiB"
            f" = {written / size:.2f}x the image (cp twice: 2x)"
        )
        for status, (_seconds, written) in result["by_status"].items():
            label = f"  during {status}"
            print(f"  {label:<40} {written / 2**20:8.0f} MiB")
        algorithm_written = result["algorithm_written"] / 2**20
        print(f"  {'written: the algorithm itself (sandboxed)':<40} {algorithm_written:8.0f} MiB")
        print(f"  {'peak memory of the stack process':<40} {result['rss']:8.0f} MB")


if __name__ == "__main__":
    main()
