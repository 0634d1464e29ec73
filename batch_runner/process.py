"""Run the algorithm's process: stream its output as JSON lines, enforce the time limit."""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from batch_runner.logs import JsonLog

StreamName = Literal["stdout", "stderr"]
_READ_CHUNK = 64 * 1024


@dataclass
class StreamTail:
    """Forwards a byte stream line by line with bounded memory; keeps the last lines."""

    source: StreamName
    log: JsonLog
    max_line_bytes: int
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=100))
    bytes_seen: int = 0

    def __post_init__(self) -> None:
        self._buffer = bytearray()
        self._skipping = False

    def _emit(self, raw: bytes) -> None:
        text = raw.replace(b"\x00", b"").decode("utf-8", errors="replace").rstrip("\r")
        self.tail.append(text)
        self.log.user(text, self.source)

    def _warn_long(self) -> None:
        text = f"A log line was skipped as it was longer than {self.max_line_bytes} bytes"
        self.tail.append(text)
        self.log.user(text, self.source, warning=True)

    def feed(self, chunk: bytes) -> None:
        self.bytes_seen += len(chunk)
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                break
            if self._skipping:
                self._skipping = False
                self._warn_long()
            elif len(self._buffer) + newline - start > self.max_line_bytes:
                self._buffer.clear()
                self._warn_long()
            else:
                self._buffer += chunk[start:newline]
                self._emit(bytes(self._buffer))
                self._buffer.clear()
            start = newline + 1
        rest = chunk[start:]
        if self._skipping:
            return
        if len(self._buffer) + len(rest) > self.max_line_bytes:
            # Drop the line now: holding it until its newline would let it grow unbounded.
            self._buffer.clear()
            self._skipping = True
        else:
            self._buffer += rest

    def close(self) -> None:
        if self._skipping:
            self._skipping = False
            self._warn_long()
        elif self._buffer:
            self._emit(bytes(self._buffer))
            self._buffer.clear()

    def pump(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, _READ_CHUNK):
                self.feed(chunk)
        finally:
            self.close()
            os.close(fd)


@dataclass(frozen=True)
class Outcome:
    return_code: int
    timed_out: bool
    duration: float
    stdout_tail: list[str]
    stderr_tail: list[str]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children[int(fields[1])].append(int(name))
    return children


def descendants(pid: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def terminate(process: subprocess.Popen[bytes], grace_seconds: float, sandboxed: bool) -> None:
    """SIGTERM the algorithm's processes, wait ``grace_seconds``, then SIGKILL all of them.

    bwrap neither forwards signals nor survives SIGTERM gracefully (its death SIGKILLs the
    sandbox), so the SIGTERM goes to the processes inside, not to bwrap itself.
    """
    targets = descendants(process.pid)
    if sandboxed:
        targets = [pid for pid in targets if _comm(pid) != "bwrap"]
    else:
        _signal_group(process.pid, signal.SIGTERM)
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    for pid in descendants(process.pid):
        _signal(pid, signal.SIGKILL)
    _signal_group(process.pid, signal.SIGKILL)
    _signal(process.pid, signal.SIGKILL)
    process.wait()


@dataclass
class Running:
    """A started process whose output is being forwarded; ``finish`` waits for it."""

    process: subprocess.Popen[bytes]
    tails: dict[str, StreamTail]
    pumps: list[threading.Thread]
    started: float
    sandboxed: bool
    grace_seconds: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def finish(self, timeout: float | None) -> Outcome:
        """Wait until it exits or ``timeout`` passes (then terminate it)."""
        process = self.process
        timed_out = False
        try:
            _wait(process, timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            terminate(process, self.grace_seconds, self.sandboxed)
        except BaseException:
            terminate(process, 0, self.sandboxed)
            raise
        duration = time.monotonic() - self.started
        if not self.sandboxed:
            # Background processes left behind would hold the pipes open (and the machine).
            _signal_group(process.pid, signal.SIGKILL)
        for pump in self.pumps:
            pump.join(timeout=10)
        code = process.returncode
        # Killed by a signal: report it as a shell (and bwrap) would, 128 + signal number.
        return_code = 128 - code if code < 0 else code
        return Outcome(
            return_code=return_code,
            timed_out=timed_out,
            duration=duration,
            stdout_tail=list(self.tails["stdout"].tail),
            stderr_tail=list(self.tails["stderr"].tail),
        )

    def stop(self) -> Outcome:
        """Terminate it (SIGTERM, the grace period, SIGKILL) and collect its outcome."""
        if self.process.poll() is None:
            terminate(self.process, self.grace_seconds, self.sandboxed)
        return self.finish(None)


def _wait(process: subprocess.Popen[bytes], timeout: float | None) -> None:
    """``process.wait(timeout)``, woken by the kernel when the process ends.

    With a timeout, Popen polls with sleeps growing to 50 ms: a job would wait up to that long
    after its algorithm ended. A pidfd (Linux) becomes readable when the process ends.
    """
    if timeout is not None and hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError:
            pidfd = -1  # an old kernel: Popen polls
        if pidfd >= 0:
            try:
                ended, _, _ = select.select([pidfd], [], [], max(timeout, 0))
            finally:
                os.close(pidfd)
            if not ended:
                raise subprocess.TimeoutExpired(process.args, timeout)
            timeout = None  # it has ended: collecting its status does not wait
    process.wait(timeout=timeout)


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    log: JsonLog,
    max_line_bytes: int,
    tail_lines: int,
    grace_seconds: float,
    user: tuple[int, int] | None = None,
    sandboxed: bool = False,
    preexec: Callable[[tuple[int, int] | None], Callable[[], None]] | None = None,
) -> Running:
    """Start ``argv`` and forward its output; raises OSError if it cannot start.

    ``preexec(user)`` builds what the child runs after fork (join resource-limit groups,
    then switch to ``user`` itself, as the groups are root's to join).
    """
    extra: dict[str, Any] = {}
    if preexec is not None:
        extra = {"preexec_fn": preexec(user)}
    elif user is not None:
        extra = {"user": user[0], "group": user[1], "extra_groups": []}
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            **extra,
        )
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    tails = {
        name: StreamTail(name, log, max_line_bytes, collections.deque(maxlen=tail_lines))
        for name in ("stdout", "stderr")
    }
    pumps = [
        threading.Thread(target=tails["stdout"].pump, args=(out_r,), daemon=True),
        threading.Thread(target=tails["stderr"].pump, args=(err_r,), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    return Running(process, tails, pumps, started, sandboxed, grace_seconds)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    timeout: float,
    log: JsonLog,
    max_line_bytes: int,
    tail_lines: int,
    grace_seconds: float,
    user: tuple[int, int] | None = None,
    sandboxed: bool = False,
    preexec: Callable[[tuple[int, int] | None], Callable[[], None]] | None = None,
) -> Outcome:
    """Run ``argv`` to completion or until ``timeout``; raises OSError if it cannot start."""
    running = start(
        argv,
        env=env,
        cwd=cwd,
        log=log,
        max_line_bytes=max_line_bytes,
        tail_lines=tail_lines,
        grace_seconds=grace_seconds,
        user=user,
        sandboxed=sandboxed,
        preexec=preexec,
    )
    return running.finish(timeout)
