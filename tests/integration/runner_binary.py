"""The runner's tests through the static runner (``make runner``) instead of the module.

``GANTRY_RUNNER_BINARY=dist/runner/layer/gantry/bin/gantry-runner pytest tests/integration/
test_runner_*.py`` runs the runner's integration tests against that executable: each job runs
as a subprocess of it, configured the way a compute backend configures it (environment and
command line only), and the test reads the signed result back from S3. Tests that patch the
runner's own code or set limits the command line cannot carry are marked ``in_process`` and
skip in that mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from batch_runner.config import (
    ENV_INPUT_ROOT,
    ENV_KILL_GRACE,
    ENV_OUTPUT_ROOT,
    ENV_RO_PATHS,
    ENV_SANDBOX,
    Limits,
    RunnerConfig,
)
from gantry.resources import (
    ENV_ALGORITHM_ENV,
    ENV_ALGORITHM_USER,
    ENV_ALGORITHM_WORKDIR,
    ENV_ROOTFS,
    ENV_SIGNING_KEY,
    RUNNER_BINARY_PATH,
)

REPO = Path(__file__).resolve().parents[2]
ENV_RUNNER_BINARY = "GANTRY_RUNNER_BINARY"
# Where `make runner` leaves the layer's tree.
BUILT_BINARY = REPO / "dist" / "runner" / "layer" / RUNNER_BINARY_PATH.lstrip("/")
BUILT_LAYER_TAR = REPO / "dist" / "runner" / "gantry-runner-layer.tar"
NOT_BUILT = f"the static runner is not built: run `make runner` (expected {BUILT_BINARY})"


def selected_binary() -> Path | None:
    """The executable the runner's tests go through, when GANTRY_RUNNER_BINARY names one."""
    value = os.environ.get(ENV_RUNNER_BINARY)
    return Path(value).absolute() if value else None


def built_binary() -> Path | None:
    """The static runner to test: GANTRY_RUNNER_BINARY's, else `make runner`'s, if built."""
    binary = selected_binary() or BUILT_BINARY
    return binary if binary.is_file() else None


def _encode_env(values: tuple[str, ...]) -> str:
    import base64

    return base64.b64encode(json.dumps(list(values)).encode()).decode()


def config_environment(config: RunnerConfig) -> dict[str, str]:
    """What a backend would set for ``config``; refuses what only an in-process run can set."""
    if config.limits != Limits(kill_grace_seconds=config.limits.kill_grace_seconds):
        raise ValueError("only the kill grace of Limits reaches a runner subprocess")
    env = {
        ENV_INPUT_ROOT: str(config.input_root),
        ENV_OUTPUT_ROOT: str(config.output_root),
        ENV_SANDBOX: config.sandbox,
        ENV_ALGORITHM_WORKDIR: str(config.workdir),
        ENV_KILL_GRACE: str(config.limits.kill_grace_seconds),
    }
    if config.signing_key_hex:
        env[ENV_SIGNING_KEY] = config.signing_key_hex
    if config.algorithm_user:
        env[ENV_ALGORITHM_USER] = config.algorithm_user
    if config.rootfs is not None:
        env[ENV_ROOTFS] = str(config.rootfs)
    if config.image_env is not None:
        env[ENV_ALGORITHM_ENV] = _encode_env(config.image_env)
    if config.ro_paths:
        env[ENV_RO_PATHS] = ":".join(str(path) for path in config.ro_paths)
    return env


def run_binary(
    binary: Path,
    task: dict[str, Any],
    config: RunnerConfig,
    s3_env: dict[str, str],
    timeout: float = 300,
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run one job through ``binary``; returns the process and its JSON log lines."""
    env = {**os.environ, **s3_env, **config_environment(config)}
    for name in (ENV_RO_PATHS, ENV_ALGORITHM_USER, ENV_ROOTFS, ENV_ALGORITHM_ENV):
        if name not in config_environment(config):
            env.pop(name, None)
    done = subprocess.run(
        [str(binary), "invoke", "--task", json.dumps(task), "--", *(config.command or [])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = []
    for line in done.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return done, lines


def runner_argv() -> list[str]:
    """The runner's command: the static runner with GANTRY_RUNNER_BINARY, else the module."""
    binary = selected_binary()
    return [str(binary)] if binary is not None else [sys.executable, "-m", "batch_runner"]
