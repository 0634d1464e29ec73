"""Invoke mode: the image's own web server, started once, called per task.

An image labelled ``org.grand-challenge.api-method=invoke`` runs its command once; the
runner waits until ``GET http://127.0.0.1:<port>/health`` answers 200, then, for each task,
stages the inputs and calls ``POST /invoke``, which must answer 201 (sagemaker-shim's
protocol, with its user-safe messages).

The server lives in the sandbox's own network namespace (loopback only, no way out). The
runner reaches it from outside by opening each connection's socket in that namespace: a
short-lived thread joins the namespace (``setns`` is per thread for network namespaces),
creates and connects the socket, and leaves; the socket stays in the sandbox's namespace.
This needs the runner to be root (``CAP_SYS_ADMIN``), as it is in its container and as the
local backend starts it.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import socket
import threading
import time
from dataclasses import dataclass

from batch_runner import process

CLONE_NEWNET = 0x40000000
DEFAULT_PORT = 4743
DEFAULT_START_TIMEOUT = 300.0
DEFAULT_CALL_TIMEOUT = 10.0

MSG_NOT_HEALTHY = (
    "The algorithm container's inference server didn’t pass the health check within "  # noqa: RUF001
    "{start:.0f} seconds or the /health endpoint took to long to respond ({call:.0f} seconds "
    "per call). Verify that the container starts correctly and that /health responds quickly."
)
MSG_START_FAILED = "Failed to start the algorithm container's inference server"
MSG_INVOKE_TIMEOUT = "Invoke time limit exceeded"
MSG_INVOKE_CONNECT = "Could not connect to invoke endpoint"
MSG_INVOKE_HTTP = "HTTP error calling invoke endpoint"


class ServerError(Exception):
    """The server failed; the message is safe to show to users."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        # For the runner's log only.
        self.detail = detail


@dataclass(frozen=True)
class ServerSettings:
    port: int = DEFAULT_PORT
    start_timeout: float = DEFAULT_START_TIMEOUT
    call_timeout: float = DEFAULT_CALL_TIMEOUT


def _net_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def sandbox_namespace(outer_pid: int) -> str | None:
    """``/proc/<pid>/ns/net`` of the first process under ``outer_pid`` in another netns."""
    own = _net_namespace(os.getpid())
    for pid in [outer_pid, *process.descendants(outer_pid)]:
        found = _net_namespace(pid)
        if found is not None and found != own:
            return f"/proc/{pid}/ns/net"
    return None


def connect_in(namespace: str | None, port: int, timeout: float) -> socket.socket:
    """A TCP socket to 127.0.0.1:``port`` inside ``namespace`` (None: this process's)."""
    outcome: dict[str, object] = {}

    def open_socket() -> None:
        try:
            if namespace is not None:
                fd = os.open(namespace, os.O_RDONLY)
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, f"setns: {os.strerror(error)}")
                finally:
                    os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(("127.0.0.1", port))
            except BaseException:
                sock.close()
                raise
            outcome["socket"] = sock
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    # A fresh thread: its namespace change dies with it, the runner's threads keep theirs.
    thread = threading.Thread(target=open_socket, name="gantry-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["socket"]  # type: ignore[return-value]


class _Connection(http.client.HTTPConnection):
    def __init__(self, namespace: str | None, port: int, timeout: float) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout)
        self._namespace = namespace

    def connect(self) -> None:
        self.sock = connect_in(self._namespace, self.port, self.timeout)  # type: ignore[arg-type]


def request(
    namespace: str | None, port: int, method: str, path: str, timeout: float
) -> http.client.HTTPResponse:
    connection = _Connection(namespace, port, timeout)
    try:
        connection.request(method, path, body=b"" if method == "POST" else None)
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


class InferenceServer:
    """The image's server process in its sandbox, and the calls to it."""

    def __init__(self, running: process.Running, settings: ServerSettings) -> None:
        self.running = running
        self.settings = settings
        self.namespace: str | None = None

    def exited(self) -> int | None:
        return self.running.process.poll()

    def wait_healthy(self) -> float:
        """Seconds until /health answered 200; ServerError otherwise."""
        settings = self.settings
        started = time.monotonic()
        deadline = started + settings.start_timeout
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                raise ServerError(MSG_START_FAILED, f"the server exited with code {code}")
            if self.namespace is None:
                self.namespace = sandbox_namespace(self.running.pid)
                if self.namespace is None:
                    time.sleep(0.05)
                    continue
            remaining = max(0.1, min(settings.call_timeout, deadline - time.monotonic()))
            try:
                response = request(self.namespace, settings.port, "GET", "/health", remaining)
            except (ConnectionError, OSError, http.client.HTTPException):
                # Not listening yet (refused), or too slow: ask again.
                time.sleep(min(0.2, settings.call_timeout))
                continue
            if response.status == 200:
                return time.monotonic() - started
            if 300 <= response.status < 400:
                raise ServerError(MSG_START_FAILED, "Health endpoint returned redirect response")
            time.sleep(min(0.2, settings.call_timeout))
        raise ServerError(
            MSG_NOT_HEALTHY.format(start=settings.start_timeout, call=settings.call_timeout)
        )

    def invoke(self, timeout: float) -> None:
        """POST /invoke; returns on 201, ServerError with the shim's message otherwise."""
        try:
            response = request(self.namespace, self.settings.port, "POST", "/invoke", timeout)
        except TimeoutError as error:
            raise ServerError(MSG_INVOKE_TIMEOUT) from error
        except ConnectionError as error:
            raise ServerError(MSG_INVOKE_CONNECT) from error
        except (OSError, http.client.HTTPException) as error:
            raise ServerError(MSG_INVOKE_HTTP, str(error)) from error
        if response.status != 201:
            raise ServerError(f"Invoke endpoint returned status {response.status}, expected 201")

    def stop(self) -> process.Outcome:
        return self.running.stop()
