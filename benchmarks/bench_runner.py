"""Job runner: start-up and size of the static runner vs the Python runner (runner_startup.py),
staging throughput vs plain boto3, peak memory vs file size, sandbox overhead.

Against a moto server in its own process. Sizes by environment variables:
``GANTRY_BENCH_RUNNER_MB`` (total bytes moved each way, default 1024, in 8 files) and
``GANTRY_BENCH_RUNNER_RUNS`` (noop runs per mode, default 10).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from benchmarks import runner_startup

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-runner"
MB = 1024 * 1024
FILES = 8


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto server did not start")


def _env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _client() -> Any:
    from batch_runner.transfer import s3_client

    return s3_client()


def _write_file(path: Path, size: int) -> None:
    block = os.urandom(MB)
    with path.open("wb") as handle:
        for _ in range(size // MB):
            handle.write(block)


def _throughput(total_mb: int, work: Path) -> tuple[float, float, float, float]:
    from batch_runner.config import Limits
    from batch_runner.staging import scan_outputs, stage_inputs, upload_outputs
    from gantry.contract import InvocationInput

    client = _client()
    size = total_mb * MB // FILES
    source = work / "source"
    source.mkdir()
    inputs = []
    for index in range(FILES):
        path = source / f"f{index}.bin"
        _write_file(path, size)
        client.upload_file(str(path), BUCKET, f"in/f{index}.bin")
        inputs.append(
            InvocationInput(
                relative_path=f"f{index}.bin", bucket_name=BUCKET, bucket_key=f"in/f{index}.bin"
            )
        )
    moved = size * FILES / MB

    # Plain boto3: the same objects, one managed transfer per file.
    plain = work / "plain"
    plain.mkdir()
    started = time.perf_counter()
    for item in inputs:
        client.download_file(BUCKET, item.bucket_key, str(plain / item.relative_path))
    plain_down = moved / (time.perf_counter() - started)
    started = time.perf_counter()
    for item in inputs:
        client.upload_file(str(plain / item.relative_path), BUCKET, f"plain/{item.relative_path}")
    plain_up = moved / (time.perf_counter() - started)
    shutil.rmtree(plain)

    staged = work / "staged"
    started = time.perf_counter()
    stage_inputs(client, inputs, staged, Limits())
    runner_down = moved / (time.perf_counter() - started)
    scan = scan_outputs(staged)
    files = [(rel, path) for rel, path in scan.files if rel != "inputs.json"]
    started = time.perf_counter()
    upload_outputs(client, files, BUCKET, "runner/")
    runner_up = moved / (time.perf_counter() - started)
    shutil.rmtree(staged)
    shutil.rmtree(source)
    return plain_down, runner_down, plain_up, runner_up


_RSS_CHILD = """
import sys
from pathlib import Path
from batch_runner.config import Limits
from batch_runner.staging import scan_outputs, stage_inputs, upload_outputs
from batch_runner.transfer import s3_client
from gantry.contract import InvocationInput
client = s3_client()
root = Path(sys.argv[1])
item = InvocationInput(relative_path="big.bin", bucket_name=sys.argv[2], bucket_key=sys.argv[3])
stage_inputs(client, [item], root, Limits())
upload_outputs(client, scan_outputs(root).files, sys.argv[2], "rss/")
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]))
"""


def _peak_rss_kib(size_mb: int, work: Path, env: dict[str, str]) -> int:
    client = _client()
    path = work / f"rss-{size_mb}.bin"
    _write_file(path, size_mb * MB)
    key = f"rss/{size_mb}.bin"
    client.upload_file(str(path), BUCKET, key)
    path.unlink()
    root = work / f"rss-root-{size_mb}"
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(root), BUCKET, key],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(root)
    return int(done.stdout.strip().splitlines()[-1])


def _overhead(runs: int, work: Path) -> dict[str, tuple[float, float]]:
    import io

    from batch_runner.config import Limits, RunnerConfig
    from batch_runner.invoke import run_invocation
    from batch_runner.logs import JsonLog
    from batch_runner.sandbox import probe
    from gantry.contract import Invocation, new_signing_key

    client = _client()
    modes = ["off"] + (["required"] if probe().available else [])
    figures: dict[str, tuple[float, float]] = {}
    for mode in modes:
        execs, invokes = [], []
        for run in range(runs):
            invocation = Invocation(
                pk=f"noop-{mode}-{run}",
                inputs=[],
                output_bucket_name=BUCKET,
                output_prefix=f"noop/{mode}/{run}/",
                timeout=60,
            )
            root = Path(tempfile.mkdtemp(dir=work))
            root.chmod(0o755)
            config = RunnerConfig(
                input_root=root / "in",
                output_root=root / "out",
                signing_key_hex=new_signing_key(),
                # The system python: reachable by the unprivileged user in both modes.
                command=["/usr/bin/python3", "examples/algorithms/noop/main.py"],
                sandbox=mode,  # type: ignore[arg-type]
                workdir=REPO,
                limits=Limits(),
            )
            result = run_invocation(
                invocation, config, client=client, log=JsonLog(stream=io.StringIO())
            )
            assert result.return_code == 0, result.user_safe_error_message
            execs.append(result.exec_duration or 0.0)
            invokes.append(result.invoke_duration or 0.0)
        figures["sandboxed" if mode == "required" else "unsandboxed"] = (
            statistics.median(execs),
            statistics.median(invokes),
        )
    return figures


def main() -> None:
    runner_startup.main()
    total_mb = int(os.environ.get("GANTRY_BENCH_RUNNER_MB", "1024"))
    runs = int(os.environ.get("GANTRY_BENCH_RUNNER_RUNS", "10"))
    server, endpoint = _start_moto()
    env = _env(endpoint)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    work = Path(tempfile.mkdtemp(prefix="gantry-bench-runner-"))
    work.chmod(0o755)
    try:
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        plain_down, runner_down, plain_up, runner_up = _throughput(total_mb, work)
        # Both sizes above what the transfer threads hold in flight (10 x 8 MB parts).
        small_mb, big_mb = max(total_mb // 4, 128), max(total_mb, 512)
        rss_small = _peak_rss_kib(small_mb, work, env)
        rss_big = _peak_rss_kib(big_mb, work, env)
        overhead = _overhead(runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.terminate()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    print(f"moto server, {total_mb} MB in {FILES} files each way")
    print(f"{'transfer':<22}{'plain boto3 MB/s':>18}{'runner MB/s':>14}{'ratio':>8}")
    print(
        f"{'download (staging)':<22}{plain_down:>18.1f}{runner_down:>14.1f}"
        f"{runner_down / plain_down:>8.2f}"
    )
    print(
        f"{'upload (outputs)':<22}{plain_up:>18.1f}{runner_up:>14.1f}{runner_up / plain_up:>8.2f}"
    )
    print(
        f"peak RSS of a staging+upload process: {small_mb} MB file {rss_small / 1024:.0f} MiB, "
        f"{big_mb} MB file {rss_big / 1024:.0f} MiB"
    )
    print(f"noop algorithm, median of {runs} runs:")
    print(f"{'mode':<14}{'exec s':>10}{'invoke s':>10}")
    for mode, (exec_s, invoke_s) in overhead.items():
        print(f"{mode:<14}{exec_s:>10.3f}{invoke_s:>10.3f}")
    print(
        json.dumps(
            {
                "runner_down_ratio": round(runner_down / plain_down, 2),
                "runner_up_ratio": round(runner_up / plain_up, 2),
            }
        )
    )
