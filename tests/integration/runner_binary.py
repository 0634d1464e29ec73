"""The runner's tests through the static runner (``make runner``) instead of the module.

``GANTRY_RUNNER_BINARY=dist/runner/layer/gantry/bin/gantry-runner pytest tests/integration/
test_runner_*.py`` runs the runner's integration tests against that executable: each job runs
as a subprocess of it, configured the way a compute backend configures it (environment and
command line only), and the test reads the signed result back from S3. Tests that patch the
runner's own code or set limits the command line cannot carry are marked ``in_process`` and
skip in that mode.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from batch_runner.config import (
    ENV_CALL_TIMEOUT,
    ENV_CPU_LIMIT,
    ENV_INPUT_ROOT,
    ENV_INVOKE_PORT,
    ENV_KILL_GRACE,
    ENV_OUTPUT_ROOT,
    ENV_PIDS_LIMIT,
    ENV_RO_PATHS,
    ENV_SANDBOX,
    ENV_START_TIMEOUT,
    Limits,
    RunnerConfig,
)
from gantry.resources import (
    ENV_ALGORITHM_ENV,
    ENV_ALGORITHM_USER,
    ENV_ALGORITHM_WORKDIR,
    ENV_API_METHOD,
    ENV_MEMORY_LIMIT_MB,
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
    return base64.b64encode(json.dumps(list(values)).encode()).decode()


def _limit(value: float | None) -> str:
    return "none" if value is None else str(value)


# How each field of RunnerConfig reaches a runner subprocess (None: it is the command).
_FIELD_ENV: dict[str, Any] = {
    "input_root": lambda c: {ENV_INPUT_ROOT: str(c.input_root)},
    "output_root": lambda c: {ENV_OUTPUT_ROOT: str(c.output_root)},
    "signing_key_hex": lambda c: {ENV_SIGNING_KEY: c.signing_key_hex or ""},
    "command": None,
    "sandbox": lambda c: {ENV_SANDBOX: c.sandbox},
    "algorithm_user": lambda c: {ENV_ALGORITHM_USER: c.algorithm_user or ""},
    "workdir": lambda c: {ENV_ALGORITHM_WORKDIR: str(c.workdir)},
    "rootfs": lambda c: {ENV_ROOTFS: str(c.rootfs) if c.rootfs else ""},
    "image_env": lambda c: (
        {ENV_ALGORITHM_ENV: _encode_env(c.image_env)} if c.image_env is not None else {}
    ),
    "ro_paths": lambda c: {ENV_RO_PATHS: ":".join(str(path) for path in c.ro_paths)},
    "limits": lambda c: {ENV_KILL_GRACE: str(c.limits.kill_grace_seconds)},
    "memory_limit_mb": lambda c: {ENV_MEMORY_LIMIT_MB: _limit(c.memory_limit_mb)},
    "cpu_limit": lambda c: {ENV_CPU_LIMIT: _limit(c.cpu_limit)},
    "pids_limit": lambda c: {ENV_PIDS_LIMIT: _limit(c.pids_limit)},
    "api_method": lambda c: {ENV_API_METHOD: c.api_method},
    "server": lambda c: {
        ENV_INVOKE_PORT: str(c.server.port),
        ENV_START_TIMEOUT: str(c.server.start_timeout),
        ENV_CALL_TIMEOUT: str(c.server.call_timeout),
    },
}


def config_environment(config: RunnerConfig) -> dict[str, str]:
    """What a backend would set for ``config``; refuses what only an in-process run can set,
    and a field this module does not know yet (map it above)."""
    if config.limits != Limits(kill_grace_seconds=config.limits.kill_grace_seconds):
        raise ValueError("only the kill grace of Limits reaches a runner subprocess")
    env: dict[str, str] = {}
    for item in dataclasses.fields(RunnerConfig):
        if item.name in _FIELD_ENV:
            to_env = _FIELD_ENV[item.name]
            env.update(to_env(config) if to_env else {})
            continue
        default = (
            item.default_factory()
            if item.default_factory is not dataclasses.MISSING
            else item.default
        )
        if getattr(config, item.name) != default:
            raise ValueError(f"RunnerConfig.{item.name} cannot reach a runner subprocess")
    return env


def run_binary(
    binary: Path,
    task: dict[str, Any],
    config: RunnerConfig,
    s3_env: dict[str, str],
    timeout: float = 300,
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run one job through ``binary``; returns the process and its JSON log lines."""
    settings = config_environment(config)
    env = {**os.environ, **s3_env, **settings}
    if ENV_ALGORITHM_ENV not in settings:
        env.pop(ENV_ALGORITHM_ENV, None)
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
