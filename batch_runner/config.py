"""Runner configuration: command line and environment, read once into one typed object."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from batch_runner.limits import ResourceLimits
from batch_runner.server import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_PORT,
    DEFAULT_START_TIMEOUT,
    ServerSettings,
)
from gantry.resources import (
    API_METHOD_EXEC,
    API_METHOD_INVOKE,
    ENV_ALGORITHM_CMD,
    ENV_ALGORITHM_ENTRYPOINT,
    ENV_ALGORITHM_ENV,
    ENV_ALGORITHM_USER,
    ENV_API_METHOD,
    ENV_MEMORY_LIMIT_MB,
    ENV_ROOTFS,
    ENV_SIGNING_KEY,
    MODEL_DIR,
)
from gantry.resources import ENV_ALGORITHM_WORKDIR as ENV_WORKDIR

SandboxMode = Literal["off", "auto", "required"]

ENV_INPUT_ROOT = "GANTRY_INPUT_ROOT"
ENV_OUTPUT_ROOT = "GANTRY_OUTPUT_ROOT"
ENV_SANDBOX = "GANTRY_SANDBOX"
ENV_RO_PATHS = "GANTRY_SANDBOX_RO_PATHS"
ENV_KILL_GRACE = "GANTRY_KILL_GRACE_SECONDS"
ENV_CPU_LIMIT = "GANTRY_CPU_LIMIT"
# Invoke mode, as sagemaker-shim's GRAND_CHALLENGE_COMPONENT_* settings of the same names.
ENV_INVOKE_PORT = "GANTRY_USER_WEBSERVER_PORT"
ENV_START_TIMEOUT = "GANTRY_START_AND_HEALTH_TIMEOUT_SECONDS"
ENV_CALL_TIMEOUT = "GANTRY_HEALTH_CHECK_CALL_TIMEOUT_SECONDS"
ENV_PIDS_LIMIT = "GANTRY_PIDS_LIMIT"


class ConfigError(ValueError):
    """The runner was started with an unusable configuration (exit code 2)."""


@dataclass(frozen=True)
class Limits:
    """Guards against hostile inputs and outputs; defaults suit one GPU job."""

    # One log line longer than this is replaced by a warning (grand-challenge does the same).
    max_line_bytes: int = 16 * 1024
    tail_lines: int = 100
    # Zip bombs: total uncompressed size, member count and per-member compression ratio.
    max_unzipped_bytes: int = 64 * 1024**3
    max_zip_members: int = 100_000
    max_compression_ratio: float = 1000.0
    # Ratios of tiny members say nothing; only members larger than this are checked.
    ratio_check_min_bytes: int = 1024 * 1024
    # Output bombs: files and folders the algorithm may leave, and their total size (as
    # uploaded: a sparse file counts its whole length). Each output is held open at once.
    max_output_files: int = 10_000
    max_output_bytes: int = 64 * 1024**3
    download_concurrency: int = 10
    kill_grace_seconds: float = 10.0


def decode_b64j(encoded: str | None, name: str) -> list[str] | None:
    """Decode base64(JSON list of strings), the form grand-challenge's shim uses."""
    if encoded is None or encoded == "":
        return None
    try:
        value = json.loads(base64.b64decode(encoded.encode(), validate=True).decode())
    except ValueError as error:
        raise ConfigError(f"{name} is not base64 of JSON: {error}") from error
    if isinstance(value, str):
        # Docker's shell form.
        return ["/bin/sh", "-c", value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{name} must be base64 of a JSON list of strings")
    return value


def decode_env_list(encoded: str | None) -> tuple[str, ...] | None:
    """The image's ENV: base64 of a JSON list of ``K=V`` strings, in the image's order."""
    if encoded is None:
        return None
    if encoded == "":
        return ()
    try:
        value = json.loads(base64.b64decode(encoded.encode(), validate=True).decode())
    except ValueError as error:
        raise ConfigError(f"{ENV_ALGORITHM_ENV} is not base64 of JSON: {error}") from error
    if not isinstance(value, list) or not all(
        isinstance(item, str) and "=" in item and not item.startswith("=") for item in value
    ):
        raise ConfigError(f"{ENV_ALGORITHM_ENV} must be base64 of a JSON list of 'K=V' strings")
    return tuple(value)


def encode_b64j(argv: Sequence[str]) -> str:
    return base64.b64encode(json.dumps(list(argv)).encode()).decode()


def command_from_env(environ: Mapping[str, str]) -> list[str] | None:
    """ENTRYPOINT + CMD as Docker combines them (exec form)."""
    entrypoint = decode_b64j(environ.get(ENV_ALGORITHM_ENTRYPOINT), ENV_ALGORITHM_ENTRYPOINT)
    cmd = decode_b64j(environ.get(ENV_ALGORITHM_CMD), ENV_ALGORITHM_CMD)
    if entrypoint is None and cmd is None:
        return None
    return (entrypoint or []) + (cmd or [])


@dataclass(frozen=True)
class RunnerConfig:
    input_root: Path = Path("/input")
    output_root: Path = Path("/output")
    signing_key_hex: str | None = None
    command: list[str] | None = None
    sandbox: SandboxMode = "auto"
    # "uid:gid", "uid", "name" or "name:group"; None: nobody when root, else unchanged.
    # For an image: its USER, looked up in the image, never root.
    algorithm_user: str | None = None
    # The algorithm's working directory: a host folder bound read-only for a command run
    # from a folder; for an image, its WORKDIR (a path inside it).
    workdir: Path = field(default_factory=Path.cwd)
    # An unpacked image root filesystem that becomes / in the sandbox (one machine only).
    rootfs: Path | None = None
    # The image's ENV ("K=V", image order); None when the algorithm is not an image.
    image_env: tuple[str, ...] | None = None
    # Without an image root: where the model is extracted (the container's own folder).
    model_root: Path = Path(MODEL_DIR)
    ro_paths: tuple[Path, ...] = ()
    limits: Limits = field(default_factory=Limits)
    # Enforced on the algorithm's processes (batch_runner.limits); None: no limit.
    memory_limit_mb: int | None = None
    cpu_limit: float | None = 2.0
    pids_limit: int | None = 512
    # exec: the command runs once per task; invoke: a server started once, POST /invoke.
    api_method: str = API_METHOD_EXEC
    server: ServerSettings = field(default_factory=ServerSettings)

    @property
    def resource_limits(self) -> ResourceLimits:
        memory = self.memory_limit_mb * 1024 * 1024 if self.memory_limit_mb else None
        return ResourceLimits(memory_bytes=memory, cpus=self.cpu_limit, pids=self.pids_limit)

    @property
    def is_image(self) -> bool:
        """An algorithm image (its USER, ENV and WORKDIR apply), not a command from a folder."""
        return self.image_env is not None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        input_root: str | None = None,
        output_root: str | None = None,
        command: Sequence[str] | None = None,
        sandbox: str | None = None,
        workdir: str | None = None,
        ro_paths: Sequence[str] = (),
    ) -> RunnerConfig:
        env = os.environ if environ is None else environ
        text = (sandbox or env.get(ENV_SANDBOX) or "auto").lower()
        if text not in ("off", "auto", "required"):
            raise ConfigError(f"{ENV_SANDBOX} must be off, auto or required, not {text!r}")
        mode = cast(SandboxMode, text)
        argv = list(command) if command else command_from_env(env)
        if not argv:
            raise ConfigError(
                "no algorithm command: pass '-- CMD ARGS' or set "
                f"{ENV_ALGORITHM_ENTRYPOINT} / {ENV_ALGORITHM_CMD}"
            )
        key = env.get(ENV_SIGNING_KEY) or None
        if key is not None:
            try:
                bytes.fromhex(key)
            except ValueError as error:
                raise ConfigError(f"{ENV_SIGNING_KEY} is not hex") from error
        extra = [p for p in env.get(ENV_RO_PATHS, "").split(":") if p] + list(ro_paths)
        try:
            grace = float(env.get(ENV_KILL_GRACE, Limits.kill_grace_seconds))
        except ValueError as error:
            raise ConfigError(f"{ENV_KILL_GRACE} must be a number") from error
        memory = _positive(env, ENV_MEMORY_LIMIT_MB, int, None)
        cpus = _positive(env, ENV_CPU_LIMIT, float, 2.0)
        pids = _positive(env, ENV_PIDS_LIMIT, int, 512)
        api_method = (env.get(ENV_API_METHOD) or API_METHOD_EXEC).lower()
        if api_method not in (API_METHOD_EXEC, API_METHOD_INVOKE):
            raise ConfigError(f"{ENV_API_METHOD} must be exec or invoke, not {api_method!r}")
        server = ServerSettings(
            port=int(_positive(env, ENV_INVOKE_PORT, int, DEFAULT_PORT) or DEFAULT_PORT),
            start_timeout=_positive(env, ENV_START_TIMEOUT, float, DEFAULT_START_TIMEOUT)
            or DEFAULT_START_TIMEOUT,
            call_timeout=_positive(env, ENV_CALL_TIMEOUT, float, DEFAULT_CALL_TIMEOUT)
            or DEFAULT_CALL_TIMEOUT,
        )
        rootfs = env.get(ENV_ROOTFS) or None
        image_env = decode_env_list(env.get(ENV_ALGORITHM_ENV))
        if rootfs is not None and image_env is None:
            image_env = ()
        if rootfs is not None and not Path(rootfs).is_dir():
            raise ConfigError(f"{ENV_ROOTFS} {rootfs!r} is not a directory")
        default_workdir = "/" if rootfs is not None else os.getcwd()
        return cls(
            rootfs=Path(rootfs).absolute() if rootfs else None,
            image_env=image_env,
            input_root=Path(input_root or env.get(ENV_INPUT_ROOT) or "/input").absolute(),
            output_root=Path(output_root or env.get(ENV_OUTPUT_ROOT) or "/output").absolute(),
            signing_key_hex=key,
            command=argv,
            sandbox=mode,
            algorithm_user=env.get(ENV_ALGORITHM_USER) or None,
            workdir=Path(workdir or env.get(ENV_WORKDIR) or default_workdir).absolute(),
            ro_paths=tuple(Path(p).absolute() for p in extra),
            limits=Limits(kill_grace_seconds=grace),
            memory_limit_mb=memory,
            cpu_limit=cpus,
            pids_limit=pids,
            api_method=api_method,
            server=server,
        )


def _positive(env: Mapping[str, str], name: str, kind: type, default: float | None) -> Any:
    """A positive number from ``env``; ``0`` or ``none`` switches the limit off."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("0", "none"):
        return None
    try:
        value = kind(raw)
    except ValueError as error:
        raise ConfigError(f"{name} must be a positive number") from error
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number")
    return value
