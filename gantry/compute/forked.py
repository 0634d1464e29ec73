"""The local backend's side of the warm runner (``python -m batch_runner fork-server``).

``ForkServer(argv, env)`` starts the server, which imports the runner once; ``spawn`` asks it
for one runner process per job and returns a ``ForkedProcess``: the child's pid (leader of
its own process group, so it is stopped as a Popen'd runner is) and its exit code once the
server reports it, behind ``poll``/``wait`` as ``subprocess.Popen`` has them. One reader
thread takes the server's answers. If the server dies, its running children carry on (as
runners started one by one would); each is watched until it is gone and then reports
``LOST_EXIT_CODE`` (the platform decides from the job's signed result in any case), and the
next ``spawn`` raises ``ForkServerError`` so the backend can start another server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

log = logging.getLogger(__name__)

# The server imports boto3, pydantic and the runner before it answers; a loaded machine is
# slow at that.
START_TIMEOUT_SECONDS = 120.0
LOST_EXIT_CODE = 1
_ORPHAN_POLL_SECONDS = 0.2


class ForkServerError(Exception):
    """The server cannot start a runner (it is gone, or it refused)."""


class ForkedProcess:
    """A runner forked by the server: what the backend uses of ``subprocess.Popen``."""

    def __init__(self, pid: int, argv: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(argv)
        self.returncode: int | None = None
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def ended(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._ended.set()

    def watch_until_gone(self) -> None:
        """Its server died before it ended: wait until the process is gone."""

        def watch() -> None:
            while _alive(self.pid):
                time.sleep(_ORPHAN_POLL_SECONDS)
            self.ended(LOST_EXIT_CODE)

        threading.Thread(target=watch, daemon=True, name=f"gantry-orphan-{self.pid}").start()


def _alive(pid: int) -> bool:
    """Running, not a zombie (a zombie's parent, not us, would reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class ForkServer:
    """One ``batch_runner fork-server`` process and the runners it forked."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.process = subprocess.Popen(
            list(argv),
            env=self.env,
            # No folder of the machine's on the runner's import path (``-m`` puts the current
            # one first): the root holds no modules.
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting: dict[int, tuple[Future[ForkedProcess], Sequence[str]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._ready: Future[int] = Future()
        self._gone = False
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True, name="gantry-forks")
        self._reader.start()
        threading.Thread(target=self._read_stderr, daemon=True, name="gantry-forks-err").start()

    def alive(self) -> bool:
        return not self._gone and self.process.poll() is None

    def spawn(
        self,
        runner_args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        log_path: str,
        command: Sequence[str],
        timeout: float = START_TIMEOUT_SECONDS,
    ) -> ForkedProcess:
        """A runner process for ``runner_args`` (what follows ``-m batch_runner``)."""
        try:
            self._ready.result(timeout=timeout)
        except FutureTimeout:
            raise ForkServerError("the warm runner did not start in time") from None
        except ForkServerError:
            raise
        request: dict[str, Any] = {
            "argv": list(runner_args),
            "env": dict(env),
            "cwd": cwd,
            "log": log_path,
        }
        answer: Future[ForkedProcess] = Future()
        with self._lock:
            if self._gone:
                raise ForkServerError(self._reason())
            self._next_id += 1
            request["id"] = self._next_id
            self._waiting[self._next_id] = (answer, command)
            try:
                assert self.process.stdin is not None
                self.process.stdin.write((json.dumps(request) + "\n").encode())
                self.process.stdin.flush()
            except OSError as error:
                del self._waiting[self._next_id]
                raise ForkServerError(f"the warm runner is gone: {error}") from None
        try:
            return answer.result(timeout=timeout)
        except FutureTimeout:
            raise ForkServerError("the warm runner did not answer") from None

    def close(self, wait: float | None = 30.0) -> None:
        """End of requests: the server exits once its runners have ended."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        with self._lock:
            idle = self._next_id == 0
        if idle:
            # Started ahead of any job and never asked for one: nothing of it to wait for
            # (it may still be importing, which is what waiting would cost).
            self.process.kill()
            self.process.wait()
            return
        if wait is None:
            return
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # --- the server's answers -------------------------------------------------------------

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                message: dict[str, Any] = json.loads(raw)
            except ValueError:
                log.warning("warm runner: %s", raw.decode(errors="replace").rstrip())
                continue
            if "ready" in message:
                self._ready.set_result(int(message["ready"]))
            elif "exited" in message:
                self._exited(int(message["exited"]), int(message["code"]))
            else:
                self._answered(message)
        self.process.wait()
        with self._lock:
            self._gone = True
            unanswered = [answer for answer, _ in self._waiting.values()]
            self._waiting = {}
            orphans = [c for c in self._children.values() if c.returncode is None]
        error = ForkServerError(self._reason())
        if not self._ready.done():
            self._ready.set_exception(error)
        for answer in unanswered:
            answer.set_exception(error)
        for child in orphans:
            child.watch_until_gone()

    def _answered(self, message: dict[str, Any]) -> None:
        with self._lock:
            waiting = self._waiting.pop(message.get("id") or 0, None)
            if waiting is None:
                return
            answer, command = waiting
            if "pid" not in message:
                answer.set_exception(ForkServerError(str(message.get("error"))))
                return
            # Recorded before the next message is read: a child's exit always finds it.
            child = ForkedProcess(int(message["pid"]), command)
            self._children[child.pid] = child
        answer.set_result(child)

    def _exited(self, pid: int, code: int) -> None:
        with self._lock:
            child = self._children.pop(pid, None)
        if child is not None:
            child.ended(code)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr.append(line)
            del self._stderr[:-20]
            log.warning("warm runner: %s", line)

    def _reason(self) -> str:
        code = self.process.poll()
        detail = f": {self._stderr[-1]}" if self._stderr else ""
        return f"the warm runner exited with code {code}{detail}"
