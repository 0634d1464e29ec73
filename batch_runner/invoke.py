"""One invocation: stage inputs, run the algorithm, upload outputs, write the signed result."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from batch_runner import __version__, checks, process, sandbox
from batch_runner.config import RunnerConfig
from batch_runner.logs import JsonLog
from batch_runner.staging import (
    StagingError,
    clear_root,
    scan_outputs,
    stage_inputs,
    upload_outputs,
)
from batch_runner.transfer import s3_client
from batch_runner.users import UserError, resolve_user
from gantry.contract import InferenceResult, Invocation, ResultOutput, sign
from gantry.resources import SIGNATURE_METADATA_KEY, result_key

# Return codes of runs that never reached the algorithm, as docker run reports them.
SETUP_FAILED = 125
NOT_EXECUTABLE = 126
NOT_FOUND = 127
OOM_KILLED = 137

MSG_TIMEOUT = "Time limit exceeded"
MSG_OOM = "The container was killed as it exceeded its memory limit"
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


def check_command(argv: list[str], env: Mapping[str, str], workdir: str) -> None:
    """Fail early, with a clear message, when the command cannot be started at all."""
    name = argv[0]
    if "/" in name:
        path: str | None = name if name.startswith("/") else os.path.join(workdir, name)
        if not os.path.exists(path):
            path = None
    else:
        path = shutil.which(name, mode=os.F_OK, path=env.get("PATH"))
    if path is None:
        raise SetupError(f"The algorithm command '{name}' was not found", NOT_FOUND)
    if os.path.isdir(path) or not os.stat(path).st_mode & 0o111:
        raise SetupError(f"The algorithm command '{name}' is not executable", NOT_EXECUTABLE)


def error_message(outcome: process.Outcome) -> str | None:
    if outcome.timed_out:
        return MSG_TIMEOUT
    if outcome.return_code == 0:
        return None
    if outcome.return_code == OOM_KILLED:
        return MSG_OOM
    for line in reversed(outcome.stderr_tail):
        if line.strip():
            return line.strip()
    return f"The algorithm exited with code {outcome.return_code}"


def _use_sandbox(config: RunnerConfig, log: JsonLog) -> bool:
    if config.sandbox == "off":
        log.info("Sandbox disabled by configuration")
        return False
    probe = sandbox.probe()
    if probe.available:
        return True
    if config.sandbox == "required":
        log.error(f"Sandbox required but unavailable: {probe.reason}")
        raise SetupError("The job could not be run in a sandbox")
    log.warning(f"Running unsandboxed ({probe.reason}); the compute environment provides isolation")
    return False


def _execute(
    invocation: Invocation, config: RunnerConfig, log: JsonLog, sandboxed: bool
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
        check_command(config.command, env, workdir)
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
            )
        log.info(f"Running {config.command!r} (sandboxed={sandboxed}, user={user})")
        try:
            outcome = process.run(
                argv,
                env=env,
                cwd=workdir,
                timeout=invocation.timeout,
                log=log,
                max_line_bytes=config.limits.max_line_bytes,
                tail_lines=config.limits.tail_lines,
                grace_seconds=config.limits.kill_grace_seconds,
                user=None if sandboxed else user,
                sandboxed=sandboxed,
            )
        except PermissionError as error:
            raise SetupError(
                f"The algorithm command '{config.command[0]}' could not be started: "
                "permission denied",
                NOT_EXECUTABLE,
            ) from error
        except FileNotFoundError as error:
            raise SetupError(
                f"The algorithm command '{config.command[0]}' was not found", NOT_FOUND
            ) from error
        except OSError as error:
            raise SetupError(
                f"The algorithm command '{config.command[0]}' could not be started: "
                f"{error.strerror}"
            ) from error
    return outcome


def _collect(
    client: Any, invocation: Invocation, config: RunnerConfig, result: dict[str, Any]
) -> None:
    scan = scan_outputs(config.output_root)
    if scan.errors:
        # All or nothing: a job with a rejected output uploads none.
        result["user_safe_error_message"] = scan.errors[0]
        return
    outputs: list[ResultOutput] = upload_outputs(
        client,
        scan.files,
        invocation.output_bucket_name,
        invocation.output_prefix,
        concurrency=config.limits.download_concurrency,
    )
    result["outputs"] = outputs
    if invocation.outputs:
        found = checks.check_outputs(invocation.outputs, config.output_root)
        result["output_errors"] = found
        if found:
            result["user_safe_error_message"] = next(iter(found.values()))


def run_invocation(
    invocation: Invocation,
    config: RunnerConfig,
    *,
    client: Any | None = None,
    log: JsonLog | None = None,
) -> InferenceResult:
    """Run the whole job and write its signed result; raises only if that write failed."""
    started = time.monotonic()
    log = log or JsonLog(task=invocation.pk)
    log.task = invocation.pk
    client = client or s3_client()
    result: dict[str, Any] = {"pk": invocation.pk, "return_code": SETUP_FAILED}
    try:
        sandboxed = _use_sandbox(config, log)
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
        outcome = _execute(invocation, config, log, sandboxed)
        result.update(
            return_code=outcome.return_code,
            exec_duration=outcome.duration,
            user_process_last_stdout_lines=outcome.stdout_tail,
            user_process_last_stderr_lines=outcome.stderr_tail,
            user_safe_error_message=error_message(outcome),
        )
        log.info(f"Algorithm finished with code {outcome.return_code} in {outcome.duration:.2f}s")
        if outcome.return_code == 0 and not outcome.timed_out:
            _collect(client, invocation, config, result)
    except (StagingError, UserError) as error:
        log.error(str(error))
        result["user_safe_error_message"] = str(error)
    except SetupError as error:
        log.error(str(error))
        result.update(return_code=error.return_code, user_safe_error_message=str(error))
    except Exception as error:  # the result must be written whatever went wrong
        log.error(f"{MSG_INTERNAL}: {type(error).__name__}: {error}")
        result["user_safe_error_message"] = MSG_INTERNAL
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
