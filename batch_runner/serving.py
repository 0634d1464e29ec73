"""Invoke mode, one task or many: the image's server is started once per session.

``InvokeSession(config).run(invocation, key)`` runs one task: on the first it sets up the
model, starts the image's command in the sandbox and waits for ``/health``; then (every
task) it empties /input and /output, stages the inputs, calls ``POST /invoke`` and uploads
/output, writing a signed result as in exec mode. ``close`` stops the server. The local
backend keeps a session open between jobs of the same image and model (``batch_runner
serve``), so an image's server and its model load once for many jobs.

A failed health check, an /invoke that is not 201 or the time limit fail the task with
sagemaker-shim's messages. After a time limit or a dead server the session stops the server;
the next task starts it again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from batch_runner import __version__, limits, process
from batch_runner.config import RunnerConfig
from batch_runner.invoke import (
    OOM_KILLED,
    SETUP_FAILED,
    SetupError,
    _collect,
    _prepare_image,
    _setup_model,
    _use_sandbox,
    record_failure,
    write_result,
)
from batch_runner.logs import JsonLog
from batch_runner.server import MSG_START_FAILED, InferenceServer, ServerError
from batch_runner.staging import clear_root, stage_inputs
from batch_runner.transfer import s3_client
from batch_runner.users import resolve_image_user
from gantry.contract import InferenceResult, Invocation
from gantry.failures import OUT_OF_MEMORY, TIME_LIMIT


class InvokeSession:
    def __init__(
        self, config: RunnerConfig, *, client: Any | None = None, log: JsonLog | None = None
    ) -> None:
        self.config = config
        self.client = client or s3_client()
        self.log = log or JsonLog()
        self.server: InferenceServer | None = None
        self.confinement: limits.Confinement | None = None
        self.model_key: tuple[str, str] | None = None
        self.user_ids: tuple[int, int] | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="gantry-session-"))
        self.scratch.chmod(0o755)
        self.starts = 0

    # --- the server -----------------------------------------------------------------------

    def _start(self, invocation: Invocation) -> None:
        config, log = self.config, self.log
        user = resolve_image_user(config.algorithm_user, config.rootfs or Path("/"))
        if not _use_sandbox(config, log, user):
            # The server's loopback is reached through the sandbox's network namespace.
            raise SetupError("Invoke mode runs in the sandbox only")
        if os.geteuid() != 0:
            raise SetupError("Invoke mode needs the runner to run as root")
        clear_root(config.input_root)
        clear_root(config.output_root)
        os.chmod(config.input_root, 0o755)
        model_dir = _setup_model(self.client, invocation, config, log, self.scratch, True)
        self.model_key = _model_key(invocation)
        prepared = _prepare_image(config, log, True, user, model_dir)
        self.user_ids = (user.uid, user.gid)
        self.confinement = limits.confine(config.resource_limits)
        log.info(
            f"Resource limits {config.resource_limits} enforced by {self.confinement.mechanism}"
        )
        running = process.start(
            prepared.argv,
            env=prepared.env,
            cwd=prepared.cwd,
            log=log,
            max_line_bytes=config.limits.max_line_bytes,
            tail_lines=config.limits.tail_lines,
            grace_seconds=config.limits.kill_grace_seconds,
            user=prepared.drop,
            sandboxed=True,
            preexec=self.confinement.preexec if self.confinement.mechanism != "none" else None,
        )
        self.server = InferenceServer(running, config.server)
        self.starts += 1
        try:
            took = self.server.wait_healthy()
        except ServerError as error:
            if error.detail:
                log.error(f"Health check failed: {error.detail}")
            self.stop()
            raise
        log.info(f"The inference server is healthy after {took:.2f}s")

    def stop(self) -> None:
        if self.server is not None:
            outcome = self.server.stop()
            self.log.info(f"The inference server stopped with code {outcome.return_code}")
            self.server = None
        if self.confinement is not None:
            self.confinement.close()
            self.confinement = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- one task -------------------------------------------------------------------------

    def run(self, invocation: Invocation, key_hex: str | None = None) -> InferenceResult:
        """Run one task and write its signed result; raises only if that write failed."""
        config, log = self.config, self.log
        log.task = invocation.pk
        started = time.monotonic()
        result: dict[str, Any] = {
            "pk": invocation.pk,
            "return_code": SETUP_FAILED,
            "sandboxed": True,
        }
        try:
            if self.server is not None and self.server.exited() is not None:
                log.warning("The inference server has exited; starting it again")
                self.stop()
            if self.server is not None and _model_key(invocation) != self.model_key:
                log.info("The task has another model; restarting the inference server")
                self.stop()
            if self.server is None:
                self._start(invocation)
            assert self.server is not None
            clear_root(config.input_root)
            clear_root(config.output_root)
            os.chmod(config.input_root, 0o755)
            if self.user_ids is not None:
                os.chown(config.output_root, *self.user_ids)
            stage_inputs(
                self.client,
                invocation.inputs,
                config.input_root,
                config.limits,
                visible_root="/input",
            )
            result["return_code"] = 1
            called = time.monotonic()
            try:
                self.server.invoke(float(invocation.timeout))
            finally:
                result["exec_duration"] = time.monotonic() - called
                tails = self.server.running.tails if self.server else None
                if tails is not None:
                    result["user_process_last_stdout_lines"] = list(tails["stdout"].tail)
                    result["user_process_last_stderr_lines"] = list(tails["stderr"].tail)
            result["return_code"] = 0
            log.info(f"/invoke answered 201 in {result['exec_duration']:.2f}s")
            _collect(self.client, invocation, config, result)
        except ServerError as error:
            message = str(error)
            if message.startswith("Invoke time limit"):
                # As in exec mode; the server's state is unknown: it does not serve again.
                message = TIME_LIMIT
                self.stop()
            if self.confinement is not None and self.confinement.oom_killed():
                message, result["return_code"] = OUT_OF_MEMORY, OOM_KILLED
                self.stop()
            log.error(message + (f" ({error.detail})" if error.detail else ""))
            result["user_safe_error_message"] = message
            if self.server is not None and self.server.exited() is not None:
                self.stop()
        except Exception as error:  # the result must be written whatever went wrong
            if not record_failure(error, result, log):
                self.stop()  # the server's state is unknown: it does not serve again
        result.update(invoke_duration=time.monotonic() - started, runner_version=__version__)
        final = InferenceResult.model_validate(result)
        write_result(self.client, invocation, final, key_hex or config.signing_key_hex)
        return final


def _model_key(invocation: Invocation) -> tuple[str, str]:
    """Which model the server holds: its sha256 when known (each job names its own copy of
    the model, so the same bytes under another key are the same model), else its key."""
    model = invocation.model
    if model is None:
        return ("", "")
    return (
        ("sha256", model.sha256.removeprefix("sha256:")) if model.sha256 else (model.bucket_key, "")
    )


__all__ = ["MSG_START_FAILED", "InvokeSession"]
