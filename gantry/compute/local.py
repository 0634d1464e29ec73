"""Local backend: the runner as a subprocess on this machine, reporting like AWS Batch.

Each attempt runs ``<python> -m batch_runner invoke --file s3://... [--workdir DIR]`` in a
bounded thread pool, against the same S3 endpoint as the rest of the local stack. The
algorithm's ENTRYPOINT/CMD and the signing key travel in the same environment variables as
on Batch, so the runner takes the same path everywhere. When the runner starts and ends, the
backend calls ``on_event`` with an event of the exact "Batch Job State Change" shape, so the
local stack feeds it to the same job callback as EventBridge does on AWS.

Wiring: ``LocalBackend(settings, on_event)`` with ``settings.endpoint_url`` pointing at the
local S3 endpoint (the runner gets it as AWS_ENDPOINT_URL, plus region and credentials from
this process or ``extra_env``) and ``settings.local_workers`` runner processes at most. An
algorithm image runs ``entrypoint + command`` with ``workdir`` as its working directory; an
OCI image (``image`` = ``oci:sha256:…``) runs from its root filesystem in ``image_store``
(``gantry.oci``), with its USER, ENV and WORKDIR; an imported image (``host/repository@sha256:…``)
is first pulled from ``registry`` into that store.
An invoke-mode image (label ``org.grand-challenge.api-method=invoke``) runs in a warm runner
instead: ``python -m batch_runner serve``, one per image configuration, takes its jobs one
after another on stdin, so the image's server (and the model it loads) starts once for many
jobs; it stops after ``settings.local_invoke_idle_seconds`` without a job, or at shutdown.
Each job still gets RUNNING and SUCCEEDED/FAILED events of its own.
Events come from worker threads, possibly before ``submit``'s caller has stored the returned
id: the callback should find the job by the name (``parse_compute_name``) or the tags.
Call ``shutdown`` at exit; ``describe`` knows only this process's jobs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gantry.algorithms import AlgorithmImage
from gantry.compute.base import (
    RUNNER_MARGIN_SECONDS,
    ComputeState,
    SubmitError,
    compute_name,
    job_tags,
    runner_environment,
)
from gantry.compute.events import batch_state
from gantry.compute.forked import ForkedProcess, ForkServer, ForkServerError
from gantry.contract import LOCAL_FILES_ENV
from gantry.jobs import Job
from gantry.oci import ImageError, ImageStore, is_image_ref
from gantry.oci.push import pull
from gantry.oci.registry import split_reference
from gantry.paths import remove_tree
from gantry.resources import (
    API_METHOD_INVOKE,
    BATCH_DETAIL_TYPE,
    BATCH_EVENT_SOURCE,
    ENV_API_METHOD,
    ENV_MEMORY_LIMIT_MB,
    ENV_SIGNING_KEY,
)
from gantry.settings import Settings

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]

LOCAL_ACCOUNT = "000000000000"
LOCAL_IMAGE = "local"
REASON_EXITED = "Essential container in task exited"
REASON_TIMEOUT = "Job attempt duration exceeded timeout"
REASON_CANCELLED = "Cancelled by Gantry"
REASON_SHUTDOWN = "The local compute backend shut down"
KILL_GRACE_SECONDS = 5.0
OUTPUT_TAIL_BYTES = 8192


# A runner process: started on its own, or forked by the warm runner.
Process = subprocess.Popen[bytes] | ForkedProcess


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class LocalJob:
    job_id: str
    name: str
    queue: str
    command: list[str]
    environment: dict[str, str]
    resources: list[dict[str, str]]
    tags: dict[str, str]
    time_limit: int
    workdir: str | None
    created_at: int = field(default_factory=_now_ms)
    status: str = "SUBMITTED"
    status_reason: str = ""
    exit_code: int | None = None
    started_at: int | None = None
    stopped_at: int | None = None
    cancel_reason: str | None = None
    process: Process | None = None
    future: Future[None] | None = None
    output_tail: str = ""


class LocalBackend:
    """Runs attempts as runner subprocesses; ``describe`` answers from memory."""

    def __init__(
        self,
        settings: Settings,
        on_event: EventSink | None = None,
        *,
        python: str = sys.executable,
        sandbox: str | None = None,
        scratch_root: str | Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        margin_seconds: int = RUNNER_MARGIN_SECONDS,
        image_store: str | Path | None = None,
        invoke_idle_seconds: float | None = None,
        registry: Any = None,
        fork_server: bool | None = None,
    ) -> None:
        self.settings = settings
        # Exec-mode runners forked from one warm runner (gantry.compute.forked), or each
        # started as an interpreter of its own.
        self.fork_server = (
            settings.local_fork_server if fork_server is None else fork_server
        ) and sys.platform.startswith("linux")
        self._forks: ForkServer | None = None
        self._forks_lock = threading.Lock()
        self.fork_server_starts = 0
        # Invoke-mode images: one warm runner (and server) per image configuration, stopped
        # after this long without a job.
        self.invoke_idle_seconds = invoke_idle_seconds or settings.local_invoke_idle_seconds
        self._warm: dict[str, _Warm] = {}
        self._warm_lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._closing = threading.Event()
        self.warm_starts = 0
        self.image_store = Path(image_store) if image_store else None
        # Imported images: pulled from here into the image store (gantry.local.images).
        self.registry = registry
        self.on_event = on_event
        self.python = python
        self.sandbox = sandbox
        self.scratch_root = Path(scratch_root) if scratch_root else None
        self.extra_env = dict(extra_env or {})
        # Past the job's time limit, as on Batch: the runner's staging gets this long.
        self.margin_seconds = margin_seconds
        self.queue_arn = (
            f"arn:aws:batch:{settings.region}:{LOCAL_ACCOUNT}:job-queue/"
            f"{settings.batch_job_queue_cpu}-local"
        )
        self._jobs: dict[str, LocalJob] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, settings.local_workers), thread_name_prefix="gantry-compute"
        )

    # --- The backend ----------------------------------------------------------------------

    def submit(self, job: Job, image: AlgorithmImage, invocation_uri: str) -> str:
        command = [self.python, "-m", "batch_runner", "invoke", "--file", invocation_uri]
        if image.workdir:
            command += ["--workdir", image.workdir]
        record = LocalJob(
            job_id=str(uuid.uuid4()),
            name=compute_name(job.pk, job.attempt),
            queue=self.queue_arn,
            command=command,
            environment=self.runner_environment_for(job, image),
            resources=[
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": str(job.requires_memory_gb * 1024)},
            ],
            tags=job_tags(job),
            time_limit=job.time_limit + self.margin_seconds,
            workdir=image.workdir,
        )
        with self._lock:
            self._jobs[record.job_id] = record
            record.future = self._pool.submit(self._run, record)
        return record.job_id

    def runner_environment_for(self, job: Job, image: AlgorithmImage) -> dict[str, str]:
        """The runner's variables for this attempt; an OCI image adds its root and config."""
        environment = runner_environment(job, image)
        # On AWS the compute service enforces the memory; here the runner does.
        environment[ENV_MEMORY_LIMIT_MB] = str(job.requires_memory_gb * 1024)
        pushed = split_reference(image.image) if self.registry is not None else None
        if is_image_ref(image.image) or pushed:
            if self.image_store is None:
                raise SubmitError("This local compute backend has no image store for OCI images")
            try:
                store = ImageStore(self.image_store)
                if pushed:
                    # The stack has one registry (its port may differ from the push's run):
                    # the image is pulled by repository and manifest digest, unpacked once.
                    _, repository, digest = pushed
                    prepared = pull(self.registry, repository, digest, store)
                else:
                    prepared = store.prepare(image.image)
                prepared.check_reachable()
            except ImageError as error:
                raise SubmitError(str(error)) from None
            environment.update(prepared.runner_environment())
        return environment

    def cancel(self, compute_job_id: str) -> None:
        self._stop(compute_job_id, REASON_CANCELLED)

    def describe(self, compute_job_id: str) -> ComputeState | None:
        with self._lock:
            record = self._jobs.get(compute_job_id)
            return batch_state(self._detail(record)) if record else None

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; without ``wait``, stop the running ones and drop queued ones."""
        if not wait:
            with self._lock:
                ids = [j.job_id for j in self._jobs.values() if j.status not in _FINAL]
            for job_id in ids:
                self._stop(job_id, REASON_SHUTDOWN)
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self._closing.set()
        if self._reaper is not None:
            self._reaper.join(timeout=60)
        with self._forks_lock:
            forks, self._forks = self._forks, None
        if forks is not None:
            forks.close(wait=60 if wait else None)

    # --- Running one attempt --------------------------------------------------------------

    def _stop(self, job_id: str, reason: str) -> None:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.status in _FINAL or record.cancel_reason:
                return
            record.cancel_reason = reason
            process = record.process
            queued = process is None and record.future is not None and record.future.cancel()
        if queued:
            # It never started: Batch reports such a job FAILED with the given reason.
            self._finish(record, "FAILED", reason, None)
        elif process is not None:
            _terminate(process)

    def _base_environment(self, scratch: Path | None = None) -> dict[str, str]:
        """The runner's environment before the job's own variables (and its folders)."""
        env = dict(os.environ)
        # The runner must reach the same S3 as the rest of the local stack.
        if self.settings.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.settings.endpoint_url
        env["AWS_DEFAULT_REGION"] = env["AWS_REGION"] = self.settings.region
        env.setdefault("AWS_ACCESS_KEY_ID", "local")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        if scratch is not None:
            env["GANTRY_INPUT_ROOT"] = str(scratch / "input")
            env["GANTRY_OUTPUT_ROOT"] = str(scratch / "output")
        # Inputs copied from the endpoint's files where it offers them (one machine only).
        env[LOCAL_FILES_ENV] = "1"
        if self.sandbox:
            env["GANTRY_SANDBOX"] = self.sandbox
        # The runner package must be importable whatever the current directory.
        spec = importlib.util.find_spec("batch_runner")
        if spec and spec.origin:
            root = str(Path(spec.origin).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        return env

    def _environment(self, record: LocalJob, scratch: Path) -> dict[str, str]:
        env = self._base_environment(scratch)
        env.update(record.environment)
        return env

    def _run(self, record: LocalJob) -> None:
        if record.environment.get(ENV_API_METHOD) == API_METHOD_INVOKE:
            self._run_warm(record)
            return
        scratch = Path(tempfile.mkdtemp(prefix="gantry-job-", dir=self.scratch_root))
        # The runner may drop to an unprivileged user, who must reach the roots.
        scratch.chmod(0o755)
        log_path = scratch / "runner.log"
        try:
            with self._lock:
                if record.cancel_reason:
                    cancelled = record.cancel_reason
                else:
                    cancelled = None
                    record.process = self._start(record, scratch, log_path)
                    record.status, record.started_at = "RUNNING", _now_ms()
            if cancelled:
                self._finish(record, "FAILED", cancelled, None)
                return
            self._emit(record)
            assert record.process is not None
            reason = REASON_EXITED
            try:
                code = record.process.wait(timeout=record.time_limit)
            except subprocess.TimeoutExpired:
                reason = REASON_TIMEOUT
                _terminate(record.process)
                code = record.process.wait()
            exit_code = 128 - code if code < 0 else code  # killed by a signal, as Docker says
            record.output_tail = _tail(log_path)
            reason = record.cancel_reason or reason
            status = "SUCCEEDED" if exit_code == 0 and reason == REASON_EXITED else "FAILED"
            if status == "FAILED":
                log.warning("%s failed (%s, %s): %s", record.name, reason, code, record.output_tail)
            self._finish(record, status, reason, exit_code)
        except Exception as error:  # e.g. the interpreter cannot be started
            log.exception("local compute job %s could not run", record.name)
            self._finish(record, "FAILED", f"Task failed to start: {error}", None)
        finally:
            _remove_scratch(scratch)

    # --- Invoke mode: warm runners -------------------------------------------------------

    def _warm_for(self, record: LocalJob) -> _Warm:
        """The warm runner for this job's image configuration, started when there is none."""
        settings = {k: v for k, v in record.environment.items() if k != ENV_SIGNING_KEY}
        key = json.dumps(settings, sort_keys=True)
        with self._warm_lock:
            warm = self._warm.get(key)
            if warm is not None and warm.process.poll() is None and not warm.closing:
                warm.last_used = time.monotonic()
                return warm
            if warm is not None and warm.process.poll() is not None:
                # Dead (cancelled): its process has exited, only its folder is left.
                _remove_scratch(warm.scratch)
            scratch = Path(tempfile.mkdtemp(prefix="gantry-serve-", dir=self.scratch_root))
            scratch.chmod(0o755)
            env = self._environment(record, scratch)
            env.pop(ENV_SIGNING_KEY, None)
            process = subprocess.Popen(
                [self.python, "-m", "batch_runner", "serve"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            warm = _Warm(key, process, scratch)
            warm.reader = threading.Thread(target=warm.read, daemon=True, name="gantry-serve")
            warm.reader.start()
            self._warm[key] = warm
            self.warm_starts += 1
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, daemon=True, name="gantry-serve-reaper"
                )
                self._reaper.start()
            return warm

    def _run_warm(self, record: LocalJob) -> None:
        """One job through the image's warm runner: its server serves job after job."""
        uri = record.command[record.command.index("--file") + 1]
        try:
            with self._lock:
                cancelled = record.cancel_reason
            if cancelled:
                self._finish(record, "FAILED", cancelled, None)
                return
            while True:
                warm = self._warm_for(record)
                warm.lock.acquire()
                # A runner that died (cancelled with its job) while this job waited: anew.
                if warm.process.poll() is None:
                    break
                warm.lock.release()
            try:
                with self._lock:
                    if record.cancel_reason:
                        cancelled = record.cancel_reason
                    else:
                        record.process = warm.process
                        record.status, record.started_at = "RUNNING", _now_ms()
                if cancelled:
                    self._finish(record, "FAILED", cancelled, None)
                    return
                self._emit(record)
                task = {"file": uri, "signing_key_hex": record.environment[ENV_SIGNING_KEY]}
                mark = warm.mark()
                reply = warm.send(task, record.name, timeout=record.time_limit)
                warm.last_used = time.monotonic()
                record.output_tail = warm.since(mark)
            finally:
                warm.lock.release()
            if reply is None:
                if warm.process.poll() is None:
                    _terminate(warm.process)
                    reason = record.cancel_reason or REASON_TIMEOUT
                else:
                    reason = record.cancel_reason or REASON_EXITED
                self._finish(record, "FAILED", reason, warm.process.poll() or 1)
            elif "return_code" in reply:
                # The runner wrote the signed result; the callback decides from it.
                self._finish(record, "SUCCEEDED", REASON_EXITED, 0)
            else:
                self._finish(record, "FAILED", REASON_EXITED, 1)
        except Exception as error:
            log.exception("local compute job %s could not run", record.name)
            self._finish(record, "FAILED", f"Task failed to start: {error}", None)

    def _reap(self) -> None:
        """Stop warm runners idle for ``invoke_idle_seconds`` (and all at shutdown)."""
        while True:
            closing = self._closing.wait(timeout=min(1.0, self.invoke_idle_seconds / 2))
            now = time.monotonic()
            with self._warm_lock:
                idle = [
                    w
                    for w in self._warm.values()
                    if closing
                    or w.process.poll() is not None
                    or (not w.lock.locked() and now - w.last_used > self.invoke_idle_seconds)
                ]
                for warm in idle:
                    warm.closing = True
                    del self._warm[warm.key]
            for warm in idle:
                warm.close()
            if closing:
                return

    @property
    def warm_runners(self) -> int:
        with self._warm_lock:
            return len(self._warm)

    def warm_up(self) -> None:
        """Start the warm runner now, in the background, rather than for the first job.

        It imports the runner, boto3 and pydantic before it can fork (seconds on a loaded
        machine); started with the stack, that happens while nobody waits for a job. Jobs
        use it only if their environment still matches (``_fork_server``).
        """
        if not self.fork_server:
            return
        env = self._base_environment()

        def start() -> None:
            try:
                self._fork_server(env)
            except OSError as error:  # the first job tries again, or runs on its own
                log.warning("could not start the warm runner: %s", error)

        threading.Thread(
            target=start,
            daemon=True,
            name="gantry-forks-start",
        ).start()

    def _fork_server(self, env: Mapping[str, str]) -> ForkServer | None:
        """The warm runner to fork this job's runner from; None: start one of its own.

        The server was started with the environment every job shares; a job whose
        environment differs beyond the runner's own ``GANTRY_`` variables (this process's
        environment changed) gets a new server, so nothing a job's interpreter would have
        read at start differs from what its own interpreter would have read.
        """
        if not self.fork_server:
            return None
        with self._forks_lock:
            if self._closing.is_set():
                return None
            server = self._forks
            if server is not None and (
                not server.alive() or _shared_part(server.env) != _shared_part(env)
            ):
                server.close(wait=None)
                server = None
            if server is None:
                server = ForkServer(
                    [self.python, "-m", "batch_runner", "fork-server"], self._base_environment()
                )
                self._forks = server
                self.fork_server_starts += 1
            return server if _shared_part(server.env) == _shared_part(env) else None

    def _start(self, record: LocalJob, scratch: Path, log_path: Path) -> Process:
        env = self._environment(record, scratch)
        # Absolute: the warm runner's own working directory is not this process's.
        cwd = os.path.abspath(record.workdir or os.getcwd())
        server = self._fork_server(env) if os.path.isdir(cwd) else None
        if server is not None:
            runner = record.command.index("batch_runner") + 1
            try:
                return server.spawn(
                    record.command[runner:],
                    env=env,
                    cwd=cwd,
                    log_path=str(log_path),
                    command=record.command,
                )
            except ForkServerError as error:
                log.warning("%s: starting its runner on its own (%s)", record.name, error)
        with log_path.open("wb") as output:
            return subprocess.Popen(
                record.command,
                env=env,
                cwd=record.workdir or None,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group, so cancel stops the runner and its children.
                start_new_session=True,
            )

    def _finish(self, record: LocalJob, status: str, reason: str, exit_code: int | None) -> None:
        with self._lock:
            if record.status in _FINAL:
                return
            record.status, record.status_reason = status, reason
            record.exit_code, record.stopped_at = exit_code, _now_ms()
        self._emit(record)

    # --- Events ---------------------------------------------------------------------------

    def _emit(self, record: LocalJob) -> None:
        if self.on_event is None:
            return
        with self._lock:
            event = self.event(record)
        try:
            self.on_event(event)
        except Exception:
            # The callback must not kill the worker; it is at-least-once on AWS, too.
            log.exception("the job event handler failed for %s", record.name)

    def job_arn(self, record: LocalJob) -> str:
        return f"arn:aws:batch:{self.settings.region}:{LOCAL_ACCOUNT}:job/{record.job_id}"

    def _detail(self, record: LocalJob) -> dict[str, Any]:
        """The JobDetail DescribeJobs would return, as a Batch event carries it."""
        environment = [
            {"name": k, "value": "********" if k == ENV_SIGNING_KEY else v}
            for k, v in sorted(record.environment.items())
        ]
        container: dict[str, Any] = {
            "image": LOCAL_IMAGE,
            "command": record.command,
            "volumes": [],
            "environment": environment,
            "mountPoints": [],
            "ulimits": [],
            "networkInterfaces": [],
            "resourceRequirements": record.resources,
            "secrets": [],
        }
        attempts: list[dict[str, Any]] = []
        if record.stopped_at is not None and record.started_at is not None:
            container["exitCode"] = record.exit_code
            container["logStreamName"] = f"local/runner/{record.job_id}"
            attempts.append(
                {
                    "container": {
                        "exitCode": record.exit_code,
                        "logStreamName": container["logStreamName"],
                        "networkInterfaces": [],
                    },
                    "startedAt": record.started_at,
                    "stoppedAt": record.stopped_at,
                    "statusReason": record.status_reason,
                }
            )
        detail: dict[str, Any] = {
            "jobArn": self.job_arn(record),
            "jobName": record.name,
            "jobId": record.job_id,
            "jobQueue": record.queue,
            "status": record.status,
            "attempts": attempts,
            "createdAt": record.created_at,
            "retryStrategy": {"attempts": 1, "evaluateOnExit": []},
            "dependsOn": [],
            "jobDefinition": (
                f"arn:aws:batch:{self.settings.region}:{LOCAL_ACCOUNT}:job-definition/"
                f"{self.settings.batch_job_definition}-local:1"
            ),
            "parameters": {},
            "container": container,
            "timeout": {"attemptDurationSeconds": record.time_limit},
            "tags": dict(record.tags),
            "propagateTags": True,
            "platformCapabilities": ["EC2"],
            "eksAttempts": [],
        }
        if record.status_reason:
            detail["statusReason"] = record.status_reason
        if record.started_at is not None:
            detail["startedAt"] = record.started_at
        if record.stopped_at is not None:
            detail["stoppedAt"] = record.stopped_at
        return detail

    def event(self, record: LocalJob) -> dict[str, Any]:
        """The EventBridge envelope of a "Batch Job State Change"."""
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": BATCH_DETAIL_TYPE,
            "source": BATCH_EVENT_SOURCE,
            "account": LOCAL_ACCOUNT,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self.settings.region,
            "resources": [self.job_arn(record)],
            "detail": self._detail(record),
        }


_FINAL = frozenset({"SUCCEEDED", "FAILED"})


def _shared_part(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of a runner's environment that are not the runner's own settings."""
    return {k: v for k, v in env.items() if not k.startswith("GANTRY_")}


@dataclass
class _Warm:
    """A runner in serve mode: tasks in on stdin, log lines and replies out on stdout."""

    key: str
    process: subprocess.Popen[bytes]
    scratch: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    closing: bool = False
    reader: threading.Thread | None = None
    lines: list[str] = field(default_factory=list)
    replies: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)

    def read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            try:
                document = json.loads(text)
            except ValueError:
                document = None
            if isinstance(document, dict) and "served" in document:
                self.replies.put(document)
                continue
            self.lines.append(text)
            del self.lines[:-200]
        self.replies.put(None)

    def mark(self) -> int:
        return len(self.lines)

    def since(self, mark: int) -> str:
        return "\n".join(self.lines[mark:])[-OUTPUT_TAIL_BYTES:]

    def send(self, task: dict[str, str], name: str, timeout: float) -> dict[str, Any] | None:
        """The runner's reply to ``task``; None when it died or ``timeout`` passed."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(task) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if reply is None:
                self.replies.put(None)  # stays dead for later callers
                return None
            return reply

    def close(self) -> None:
        """End of input: the runner stops the server and exits."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _terminate(self.process)
            self.process.wait()
        _remove_scratch(self.scratch)


def _remove_scratch(scratch: Path) -> None:
    """Remove a job's folder, whatever the algorithm left in it: shutil.rmtree recurses (before
    Python 3.13) and raised RecursionError on a deep enough tree, which stayed on disk."""
    with contextlib.suppress(OSError):
        remove_tree(scratch)


def _terminate(process: Process) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after a grace period."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)

    def kill_later() -> None:
        try:
            process.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    threading.Thread(target=kill_later, daemon=True).start()


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - OUTPUT_TAIL_BYTES))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
