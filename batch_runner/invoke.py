"""One invocation: stage inputs, run the algorithm, upload outputs, write the signed result."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch_runner import __version__, checks, imageroot, limits, process, sandbox
from batch_runner.config import RunnerConfig
from batch_runner.logs import JsonLog
from batch_runner.model import ModelError, fetch_model
from batch_runner.staging import (
    MAX_KEY_BYTES,
    StagingError,
    clear_root,
    scan_outputs,
    stage_inputs,
    upload_outputs,
)
from batch_runner.transfer import s3_client
from batch_runner.users import ImageUser, UserError, resolve_image_user, resolve_user
from gantry.contract import InferenceResult, Invocation, ResultOutput, sign
from gantry.failures import OUT_OF_MEMORY, TIME_LIMIT, exited_with
from gantry.resources import (
    API_METHOD_INVOKE,
    ENV_ALGORITHM_USER,
    MODEL_DIR,
    SIGNATURE_METADATA_KEY,
    result_key,
)

# Return codes of runs that never reached the algorithm, as docker run reports them.
SETUP_FAILED = 125
NOT_EXECUTABLE = 126
NOT_FOUND = 127
OOM_KILLED = 137

MSG_INTERNAL = "An internal error occurred in the job runner"

# Secrets and platform wiring the algorithm must not see.
_SCRUB_PREFIXES = ("GANTRY_", "AWS_", "ECS_CONTAINER_METADATA_URI", "GRAND_CHALLENGE_")


class SetupError(Exception):
    """The algorithm could not be started; the message is safe to show to users."""

    def __init__(self, message: str, return_code: int = SETUP_FAILED) -> None:
        super().__init__(message)
        self.return_code = return_code


def algorithm_env(environ: Mapping[str, str], home: str, input_dir: str, output_dir: str) -> dict:
    env = {k: v for k, v in environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env["HOME"] = home
    # Where the algorithm finds its data; /input and /output inside the sandbox.
    env["INPUT_DIR"] = input_dir
    env["OUTPUT_DIR"] = output_dir
    return env


def _closed_folder(path: Path, uid: int, gid: int) -> Path | None:
    """The first folder down to ``path`` (itself included if a folder) that uid:gid cannot
    enter, by the permission bits; None when it can reach ``path``."""
    path = Path(os.path.abspath(path))
    folders = [*reversed(path.parents)] + ([path] if path.is_dir() else [])
    for folder in folders:
        info = folder.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid == gid:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return folder
    return None


def check_command(
    argv: list[str],
    env: Mapping[str, str],
    workdir: str,
    user: tuple[int, int] | None = None,
) -> None:
    """Fail early, with a clear message, when the command cannot be started at all; with
    ``user`` (the algorithm runs as that uid:gid, outside the sandbox), also when that user
    cannot reach the command (by the permission bits: it has no supplementary groups)."""
    name = argv[0]
    if "/" in name:
        candidate = name if name.startswith("/") else os.path.join(workdir, name)
        path: str | None = candidate if os.path.exists(candidate) else None
    else:
        path = shutil.which(name, mode=os.F_OK, path=env.get("PATH"))
    if path is None:
        raise SetupError(f"The algorithm command '{name}' was not found", NOT_FOUND)
    if os.path.isdir(path) or not os.stat(path).st_mode & 0o111:
        raise SetupError(f"The algorithm command '{name}' is not executable", NOT_EXECUTABLE)
    # The child enters the work directory before it becomes the user, so only the path of an
    # absolute command is walked as that user (a relative one starts from the work directory).
    if user is None or not os.path.isabs(path):
        return
    closed = _closed_folder(Path(path), *user)
    if closed is not None:
        raise SetupError(
            f"The algorithm command '{path}' cannot be reached by the algorithm user "
            f"{user[0]}:{user[1]}: it may not enter {closed}. Without the sandbox the algorithm "
            "runs as that user: keep its command in folders every user may enter, run it in "
            f"the sandbox, or set {ENV_ALGORITHM_USER} to a user who may enter them",
            NOT_EXECUTABLE,
        )


def error_message(outcome: process.Outcome) -> str | None:
    if outcome.timed_out:
        return TIME_LIMIT
    if outcome.return_code == 0:
        return None
    if outcome.return_code == OOM_KILLED:
        return OUT_OF_MEMORY
    for line in reversed(outcome.stderr_tail):
        if line.strip():
            return line.strip()
    return exited_with(outcome.return_code)


def _use_sandbox(config: RunnerConfig, log: JsonLog, image_user: ImageUser | None) -> bool:
    if config.rootfs is not None and config.sandbox == "off":
        raise SetupError("An image's root filesystem can only be run in the sandbox")
    if config.sandbox == "off":
        log.info("Sandbox disabled by configuration")
        return False
    if image_user is not None:
        # bwrap starts as the image's user (when the runner is root) in a user namespace.
        as_user = os.geteuid() == 0
        probe = sandbox.probe_user_namespace(
            image_user.uid if as_user else None, image_user.gid if as_user else None
        )
    else:
        probe = sandbox.probe()
    if probe.available:
        return True
    if config.rootfs is not None:
        log.error(f"Sandbox unavailable: {probe.reason}")
        raise SetupError("The job could not be run in a sandbox")
    if config.sandbox == "required":
        log.error(f"Sandbox required but unavailable: {probe.reason}")
        raise SetupError("The job could not be run in a sandbox")
    log.warning(f"Running unsandboxed ({probe.reason}); the compute environment provides isolation")
    return False


def image_env(config: RunnerConfig, user: ImageUser) -> dict[str, str]:
    """The image's environment as Docker builds it, then HOME, INPUT_DIR and OUTPUT_DIR.

    In its own root filesystem the algorithm gets nothing of the host's environment; in its
    own container (the runner is the entry point) it keeps the container's, scrubbed.
    """
    if config.rootfs is not None:
        env = {"PATH": imageroot.DEFAULT_PATH}
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    for item in config.image_env or ():
        key, _, value = item.partition("=")
        env[key] = value
    env["HOME"] = _writable_home(user.home)
    env["INPUT_DIR"] = sandbox.SANDBOX_INPUT
    env["OUTPUT_DIR"] = sandbox.SANDBOX_OUTPUT
    return env


def _writable_home(home: str | None) -> str:
    # The image's root is read-only in the sandbox: only /tmp (and /output) can be written.
    if home and any(home == d or home.startswith(d + "/") for d in (sandbox.SANDBOX_TMP,)):
        return home
    return sandbox.SANDBOX_TMP


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The command line (bwrap's, when sandboxed) that starts an image's command."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    drop: tuple[int, int] | None


def _prepare_image(
    config: RunnerConfig,
    log: JsonLog,
    sandboxed: bool,
    user: ImageUser,
    model_dir: Path | None,
) -> Prepared:
    """Check the image's WORKDIR and command, and build how to start it as its USER."""
    assert config.command is not None
    root = config.rootfs or Path("/")
    env = image_env(config, user)
    workdir = str(config.workdir)
    found = imageroot.resolve(root, workdir)
    if found is None or not found.is_dir():
        raise SetupError(f"The image's WORKDIR '{workdir}' does not exist in the image")
    name = config.command[0]
    binary = imageroot.which(root, name, env.get("PATH"), workdir)
    if binary is None:
        raise SetupError(f"The algorithm command '{name}' was not found", NOT_FOUND)
    if binary.is_dir() or not binary.stat().st_mode & 0o111:
        raise SetupError(f"The algorithm command '{name}' is not executable", NOT_EXECUTABLE)
    as_root = os.geteuid() == 0
    if as_root:
        os.chown(config.output_root, user.uid, user.gid)
        if config.rootfs is not None:
            _check_reachable(config.rootfs, user, log)
    drop = (user.uid, user.gid) if as_root else None
    argv = list(config.command)
    if config.rootfs is not None:
        argv = sandbox.build_rootfs_command(
            argv,
            rootfs=config.rootfs,
            input_root=config.input_root,
            output_root=config.output_root,
            workdir=workdir,
            user=(user.uid, user.gid),
            model_dir=model_dir,
        )
    elif sandboxed:
        argv = sandbox.build_command(
            argv,
            input_root=config.input_root,
            output_root=config.output_root,
            workdir=config.workdir,
            extra_ro_paths=config.ro_paths,
            drop_to=(user.uid, user.gid),
            user_namespace=True,
            model_dir=model_dir,
        )
    log.info(
        f"Running {config.command!r} as {user.uid}:{user.gid} in "
        f"{'the image root ' + str(config.rootfs) if config.rootfs else 'the container'} "
        f"(sandboxed={sandboxed}, api method {config.api_method})"
    )
    return Prepared(argv, env, workdir if not sandboxed else "/", drop)


MSG_ROOT_UNREACHABLE = "The image could not be started: its files are not reachable by its USER"


def _check_reachable(rootfs: Path, user: ImageUser, log: JsonLog) -> None:
    """bwrap runs as the image's user: every folder down to the image root must let it in."""
    folder = _closed_folder(rootfs, user.uid, user.gid)
    if folder is not None:
        log.error(f"{folder} cannot be entered by uid {user.uid}: the image root is below it")
        raise SetupError(MSG_ROOT_UNREACHABLE)


def _execute_image(
    invocation: Invocation,
    config: RunnerConfig,
    log: JsonLog,
    sandboxed: bool,
    user: ImageUser,
    model_dir: Path | None = None,
) -> process.Outcome:
    """An image's command as its USER, with its ENV and WORKDIR, run once to its end."""
    prepared = _prepare_image(config, log, sandboxed, user, model_dir)
    return _start(
        invocation, config, log, prepared.argv, prepared.env, prepared.cwd, prepared.drop, sandboxed
    )


def _start(
    invocation: Invocation,
    config: RunnerConfig,
    log: JsonLog,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    user: tuple[int, int] | None,
    sandboxed: bool,
) -> process.Outcome:
    assert config.command is not None
    confinement = limits.confine(config.resource_limits)
    group = f" ({confinement.groups[0].name})" if confinement.groups else ""
    log.info(f"Resource limits {config.resource_limits} enforced by {confinement.mechanism}{group}")
    try:
        outcome = process.run(
            argv,
            env=env,
            cwd=cwd,
            timeout=invocation.timeout,
            log=log,
            max_line_bytes=config.limits.max_line_bytes,
            tail_lines=config.limits.tail_lines,
            grace_seconds=config.limits.kill_grace_seconds,
            user=user,
            sandboxed=sandboxed,
            preexec=confinement.preexec if confinement.mechanism != "none" else None,
        )
        if confinement.oom_killed() and not outcome.timed_out:
            log.error("The algorithm exceeded its memory limit")
            outcome = dataclasses.replace(outcome, return_code=OOM_KILLED)
        return outcome
    except PermissionError as error:
        raise SetupError(
            f"The algorithm command '{config.command[0]}' could not be started: permission denied",
            NOT_EXECUTABLE,
        ) from error
    except FileNotFoundError as error:
        raise SetupError(
            f"The algorithm command '{config.command[0]}' was not found", NOT_FOUND
        ) from error
    except OSError as error:
        raise SetupError(
            f"The algorithm command '{config.command[0]}' could not be started: {error.strerror}"
        ) from error
    finally:
        confinement.close()


def _setup_model(
    client: Any,
    invocation: Invocation,
    config: RunnerConfig,
    log: JsonLog,
    scratch: Path,
    sandboxed: bool,
) -> Path | None:
    """Extract the invocation's model before the algorithm starts; its host folder.

    In the sandbox the model goes to a folder of the runner, bound read-only at
    /opt/ml/model; unsandboxed (the compute environment isolates the container) it goes to
    /opt/ml/model itself, as sagemaker-shim does.
    """
    if invocation.model is None:
        return None
    if sandboxed:
        target = scratch / "model"
    else:
        target = config.model_root
        if target.exists():
            clear_root(target)
    scratch.chmod(0o755)
    size = fetch_model(client, invocation.model, target)
    log.info(f"Model {invocation.model.bucket_key} extracted ({size} bytes) for {MODEL_DIR}")
    return target


def _execute(
    invocation: Invocation,
    config: RunnerConfig,
    log: JsonLog,
    sandboxed: bool,
    model_dir: Path | None = None,
) -> process.Outcome:
    assert config.command is not None
    user = resolve_user(config.algorithm_user)
    if user is not None:
        os.chown(config.output_root, *user)
    with tempfile.TemporaryDirectory(prefix="gantry-home-") as home:
        if sandboxed:
            env = algorithm_env(os.environ, "/tmp", sandbox.SANDBOX_INPUT, sandbox.SANDBOX_OUTPUT)
        else:
            if user is not None:
                os.chown(home, *user)
            env = algorithm_env(os.environ, home, str(config.input_root), str(config.output_root))
        workdir = str(config.workdir)
        check_command(config.command, env, workdir, None if sandboxed else user)
        argv = list(config.command)
        if sandboxed:
            prefixes = sandbox.executable_prefixes(argv[0], env.get("PATH"), config.workdir)
            argv = sandbox.build_command(
                argv,
                input_root=config.input_root,
                output_root=config.output_root,
                workdir=config.workdir,
                extra_ro_paths=[*config.ro_paths, *prefixes],
                drop_to=user,
                model_dir=model_dir,
            )
        log.info(f"Running {config.command!r} (sandboxed={sandboxed}, user={user})")
        outcome = _start(
            invocation, config, log, argv, env, workdir, None if sandboxed else user, sandboxed
        )
    return outcome


def _collect(
    client: Any,
    invocation: Invocation,
    config: RunnerConfig,
    result: dict[str, Any],
    *,
    algorithm_gone: bool = False,
) -> None:
    """Check and store the outputs. ``algorithm_gone``: no process of the algorithm is left
    (its sandbox's pid namespace is gone), so on one machine outputs may be moved to the
    store rather than copied; a warm server (invoke mode) or an unsandboxed run, whose
    processes may outlive their exit, keeps the copy."""
    room = MAX_KEY_BYTES - len(invocation.output_prefix.encode())
    scan = scan_outputs(
        config.output_root,
        max_name_bytes=room,
        max_files=config.limits.max_output_files,
        max_bytes=config.limits.max_output_bytes,
    )
    if scan.errors:
        # All or nothing: a job with a rejected output uploads none.
        result["user_safe_error_message"] = scan.errors[0]
        return

    def check(files: Mapping[str, int]) -> None:
        # Before the hand-over, which may move the files out of the output root.
        found = checks.check_outputs(invocation.outputs or (), files)
        result["output_errors"] = found
        if found:
            result["user_safe_error_message"] = next(iter(found.values()))

    outputs: list[ResultOutput] = upload_outputs(
        client,
        scan.files,
        invocation.output_bucket_name,
        invocation.output_prefix,
        concurrency=config.limits.download_concurrency,
        check=check if invocation.outputs else None,
        algorithm_gone=algorithm_gone,
        max_bytes=config.limits.max_output_bytes,
    )
    result["outputs"] = outputs


def record_failure(error: Exception, result: dict[str, Any], log: JsonLog) -> bool:
    """Put what went wrong around the algorithm's run into the result; False when the error
    was unexpected (the user sees only that the runner failed internally)."""
    if isinstance(error, ModelError):
        message = f"Could not set up model: {error}"
    elif isinstance(error, StagingError | UserError | SetupError):
        message = str(error)
        if isinstance(error, SetupError):
            result["return_code"] = error.return_code
    else:
        log.error(f"{MSG_INTERNAL}: {type(error).__name__}: {error}")
        result["user_safe_error_message"] = MSG_INTERNAL
        return False
    log.error(message)
    result["user_safe_error_message"] = message
    return True


def run_invocation(
    invocation: Invocation,
    config: RunnerConfig,
    *,
    client: Any | None = None,
    log: JsonLog | None = None,
) -> InferenceResult:
    """Run the whole job and write its signed result; raises only if that write failed."""
    if config.api_method == API_METHOD_INVOKE:
        from batch_runner.serving import InvokeSession

        session = InvokeSession(config, client=client, log=log or JsonLog(task=invocation.pk))
        try:
            return session.run(invocation)
        finally:
            session.close()
    started = time.monotonic()
    log = log or JsonLog(task=invocation.pk)
    log.task = invocation.pk
    client = client or s3_client()
    result: dict[str, Any] = {"pk": invocation.pk, "return_code": SETUP_FAILED}
    scratch = Path(tempfile.mkdtemp(prefix="gantry-runner-"))
    try:
        image_user = (
            resolve_image_user(config.algorithm_user, config.rootfs or Path("/"))
            if config.is_image
            else None
        )
        sandboxed = _use_sandbox(config, log, image_user)
        result["sandboxed"] = sandboxed
        clear_root(config.input_root)
        clear_root(config.output_root)
        # The algorithm user must be able to read what root stages.
        os.chmod(config.input_root, 0o755)
        visible = sandbox.SANDBOX_INPUT if sandboxed else str(config.input_root)
        staged = stage_inputs(
            client, invocation.inputs, config.input_root, config.limits, visible_root=visible
        )
        for entry in staged:
            # A zip may hold many thousands of members: log their number, not their names.
            files = entry.pop("files", None)
            if files is not None:
                entry["extracted_files"] = len(files)
            log.info(f"Staged input {json.dumps(entry)}")
        model_dir = _setup_model(client, invocation, config, log, scratch, sandboxed)
        if not sandboxed:
            model_dir = None  # extracted in place
        if image_user is not None:
            outcome = _execute_image(invocation, config, log, sandboxed, image_user, model_dir)
        else:
            outcome = _execute(invocation, config, log, sandboxed, model_dir)
        result.update(
            return_code=outcome.return_code,
            exec_duration=outcome.duration,
            user_process_last_stdout_lines=outcome.stdout_tail,
            user_process_last_stderr_lines=outcome.stderr_tail,
            user_safe_error_message=error_message(outcome),
        )
        log.info(f"Algorithm finished with code {outcome.return_code} in {outcome.duration:.2f}s")
        if outcome.return_code == 0 and not outcome.timed_out:
            # In the sandbox the kernel has ended every process of the algorithm by now: its
            # pid namespace's init exits (killing the rest) before bwrap, which we waited for.
            _collect(client, invocation, config, result, algorithm_gone=sandboxed)
    except Exception as error:  # the result must be written whatever went wrong
        record_failure(error, result, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.update(invoke_duration=time.monotonic() - started, runner_version=__version__)
    final = InferenceResult.model_validate(result)
    write_result(client, invocation, final, config.signing_key_hex)
    return final


def write_result(
    client: Any, invocation: Invocation, result: InferenceResult, key_hex: str | None
) -> bytes:
    """Put the result with the signature of its exact bytes as S3 metadata."""
    if not key_hex:
        raise RuntimeError("no signing key: the result cannot be signed")
    body = result.model_dump_json().encode()
    client.put_object(
        Bucket=invocation.output_bucket_name,
        Key=result_key(invocation.output_prefix),
        Body=body,
        ContentType="application/json",
        Metadata={SIGNATURE_METADATA_KEY: sign(body, key_hex)},
    )
    return body
