"""The local stack's HTTP server: cheroot, with HTTP/1.1 keep-alive, in a thread.

The embedded AWS endpoint and the HTTPS gateway answer every AWS SDK and API request of one
machine. werkzeug's development server, which moto ships with, answers each with
``Connection: close``, so every request cost a new TCP connection (and a TLS handshake on the
gateway) and a new thread. cheroot keeps a connection open between requests: botocore's and
httpx's connection pools reuse it; a fixed pool of threads answers requests, and idle
connections wait in a selector without holding one.

The WSGI environ is the one moto's own server (werkzeug's request handler with moto's
``make_environ``) builds, so moto and the durable layer see no difference:

- ``PATH_INFO`` is the path percent-decoded in full (``%2F`` too); ``RAW_URI`` and
  ``REQUEST_URI`` the request target as sent, which moto matches S3 keys against;
- a header whose name has an underscore is dropped (WSGI cannot tell ``X_Foo`` from
  ``X-Foo``, so one could pass for the other), except S3 user metadata (``x-amz-meta-…``),
  whose names may hold underscores: their spelling as sent is kept for moto under
  ``moto.preserved_header_names``, and a dashed header with the same WSGI name wins;
- request bodies are read from the socket as the application reads them, never buffered
  whole (large uploads stream into the durable store).

Keep-alive needs what ``Connection: close`` used to hide: a HEAD, 1xx, 204 or 304 answer
carries no body, and a response shorter than its ``Content-Length``, or a chunked request
body left unread, ends its connection rather than corrupting the next request on it.

On TLS the handshake runs in the worker thread on the connection's first read, not in the
accept loop, where a client that connects and says nothing would hold up everyone else.
"""

from __future__ import annotations

import io
import itertools
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from cheroot import makefile as cheroot_makefile
from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cheroot.workers import threadpool

logger = logging.getLogger(__name__)
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# moto reads these names (moto.core.request); the rule for which underscored names it keeps
# is its own.
PRESERVED_HEADER_NAMES = "moto.preserved_header_names"
KEPT_UNDERSCORED_PREFIX = b"x-amz-meta-"

# Requests served at once. Most take a millisecond or two; the long ones are SQS long polls
# (the stack's pollers) and large transfers, so this leaves room for a burst of runners.
WORKER_THREADS = 32
# Idle connections kept open at once (beyond that, a response closes its connection) and
# for how long; also the socket timeout while a request is read or its response written.
KEEP_ALIVE_CONNECTIONS = 256
SOCKET_TIMEOUT_SECONDS = 120
# The accept loop's select timeout: stop() waits for it once.
SELECT_SECONDS = 0.1
LISTEN_BACKLOG = 128
STOP_TIMEOUT_SECONDS = 5
BODYLESS_STATUSES = (b"204", b"304")
# A refused body (413) up to this size is read and dropped before the answer is sent.
DRAIN_LIMIT = 64 * 1024 * 1024
DRAIN_CHUNK = 1024 * 1024


def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


class _HeaderReader(cheroot_server.HeaderReader):
    """Headers as werkzeug's handler and moto's keep them: underscored names dropped but for
    S3 user metadata, whose names keep their spelling; the rest title-cased as cheroot looks
    them up (Content-Length, Connection, Expect, Transfer-Encoding)."""

    def _transform_key(self, key_name: bytes) -> bytes:
        key = key_name.strip()
        return key if b"_" in key else key.title()

    def _allow_header(self, key_name: bytes) -> bool:
        return b"_" not in key_name or key_name.lower().startswith(KEPT_UNDERSCORED_PREFIX)


class _Request(cheroot_server.HTTPRequest):
    header_reader = _HeaderReader()

    def read_request_headers(self) -> bool:
        ok: bool = super().read_request_headers()
        if ok and self.chunked_read:
            # cheroot drains an unread body before the next request only when its length is
            # known; a chunked one (rare: SDKs send Content-Length) ends its connection.
            self.close_connection = True
        return ok

    def send_headers(self) -> None:
        remaining = getattr(self.rfile, "remaining", 0)
        if self.status[:3] == b"413" and 0 < remaining <= DRAIN_LIMIT:
            # cheroot closes after a 413 without reading the refused body; a client still
            # sending it would fail to write instead of reading the answer.
            while remaining > 0 and self.rfile.read(min(remaining, DRAIN_CHUNK)):
                remaining = self.rfile.remaining
        super().send_headers()


class _StreamReader(cheroot_makefile.StreamReader):
    """cheroot's socket reader, but a read larger than its buffer (a request body read a
    MiB at a time) is filled straight from the socket into one buffer, and ``readinto``
    fills the caller's own buffer (an upload part's, see ``body_reader``).

    cheroot's reader is the pure-Python ``_pyio.BufferedReader``: for such a read it gets the
    socket's bytes one TLS record (16 KiB) at a time, each into a new object, in a Python
    loop, and then joins and slices them; that loop showed up in profiles of uploads."""

    # _pyio.BufferedReader's own state, as cheroot's has_data() reads it.
    buffer_size: int
    _read_buf: bytes
    _read_pos: int
    _read_lock: Any

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size <= self.buffer_size:  # a negative size: to the end
            data: bytes = super().read(size)
            return data
        out = bytearray(size)
        del out[self.readinto(out) :]
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer``: first with what is buffered, then from the socket; the count is
        less than its size only at the end of the stream."""
        with memoryview(buffer) as whole, whole.cast("B") as view, self._read_lock:
            held = self._read_buf[self._read_pos : self._read_pos + len(view)]
            got = len(held)
            view[:got] = held
            self._read_pos += got
            while got < len(view):
                count = self.raw.readinto(view[got:])
                if not count:  # the end of the stream
                    break
                got += count
        self.bytes_read += got
        return got


def body_reader(environ: dict[str, Any], length: int) -> Callable[[memoryview], int]:
    """A ``readinto`` for the request's body, ``length`` bytes at most (0 at its end): on this
    server straight from the socket into the caller's buffer, elsewhere through
    ``wsgi.input.read``."""
    stream = environ["wsgi.input"]
    rfile = getattr(stream, "rfile", None)
    left = length
    if isinstance(stream, cheroot_server.KnownLengthRFile) and isinstance(rfile, _StreamReader):

        def read_socket(view: memoryview) -> int:
            nonlocal left
            count = rfile.readinto(view[: min(left, stream.remaining)])
            stream.remaining -= count  # as its own read() counts: what is left to drain
            left -= count
            return count

        return read_socket

    def read_stream(view: memoryview) -> int:
        nonlocal left
        data = stream.read(min(left, len(view))) if left else b""
        view[: len(data)] = data
        left -= len(data)
        return len(data)

    return read_stream


def _make_file(sock: Any, mode: str = "r", bufsize: int = io.DEFAULT_BUFFER_SIZE) -> Any:
    if "r" in mode:
        return _StreamReader(sock, mode, bufsize)
    return cheroot_makefile.StreamWriter(sock, mode, bufsize)


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request

    def __init__(self, server: Any, sock: Any, makefile: Any = None) -> None:
        # cheroot's and its TLS adapter's file makers give the same classes, TLS or not.
        super().__init__(server, sock, _make_file)
        server.count_connection()


class _Gateway(cheroot_wsgi.Gateway_10):
    """WSGI 1.0 with the environ of moto's server and bodies only where HTTP allows one."""

    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]  # stub says None
        env: dict[str, Any] = super().get_environ()
        target = self.req.uri.decode("latin-1")
        url = urlsplit(target)
        # As werkzeug: a target starting with "//" is a path, not a host.
        path = f"/{url.netloc}{url.path}" if not url.scheme and url.netloc else url.path
        env["PATH_INFO"] = unquote(path).encode().decode("latin-1")
        env["QUERY_STRING"] = url.query
        env["REQUEST_URI"] = env["RAW_URI"] = target
        env["SERVER_NAME"] = self.req.server.bind_addr[0]
        names: dict[str, str] = {}
        underscored = [(k, v) for k, v in self.req.inheaders.items() if b"_" in k]
        if underscored:
            dashed = {
                _environ_key(k.decode("latin-1")): v.decode("latin-1")
                for k, v in self.req.inheaders.items()
                if b"_" not in k
            }
            for raw_name, raw_value in underscored:
                name = raw_name.decode("latin-1")
                key = _environ_key(name)
                if key in dashed:
                    # Never let an underscored header stand in for a dashed one.
                    env[key] = dashed[key]
                    continue
                names.setdefault(key, name)
                env[key] = raw_value.decode("latin-1")
        env[PRESERVED_HEADER_NAMES] = names
        return env

    def respond(self) -> None:
        self._written = 0
        super().respond()
        declared = self.remaining_bytes_out  # the response's Content-Length, when it had one
        if declared is not None and not self._bodyless() and self._written != declared:
            # The client would wait for bytes that never come, or read the surplus as the
            # next response: the connection ends here.
            self.req.close_connection = True

    def write(self, chunk: bytes) -> None:
        if self._bodyless():
            self.req.ensure_headers_sent()
            return
        super().write(chunk)
        self._written += len(chunk)

    def _bodyless(self) -> bool:
        status = self.req.status[:3]
        return self.req.method == b"HEAD" or status < b"200" or status in BODYLESS_STATUSES


class _LazyHandshake(BuiltinSSLAdapter):
    """TLS whose handshake runs on the connection's first read, in its worker thread."""

    def __init__(self, context: ssl.SSLContext) -> None:
        # The base class would load certificate files; the context already holds them.
        self.context = context
        self.certificate = self.private_key = self.certificate_chain = None
        self.ciphers = None

    def wrap(self, sock: Any) -> tuple[Any, dict[str, str]]:
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}


class _DaemonThreadPool(threadpool.ThreadPool):
    """Workers as daemon threads: a process that ends without stopping the server is not
    held open by them (werkzeug's threads were daemons too)."""

    _threads: list[Any]  # cheroot's, missing from its stubs

    def grow(self, amount: int) -> None:
        # cheroot's grow() polls each new worker's readiness every 0.1 s; nothing here needs
        # a worker to have started before the server serves.
        budget = max(self.max - len(self._threads), 0)
        self._threads.extend(self._spawn_worker() for _ in range(min(amount, budget)))

    def _spawn_worker(self) -> Any:
        worker = threadpool.WorkerThread(self.server)
        worker.name = f"{self.server.thread_name}-{worker.name}"
        worker.daemon = True
        worker.start()
        return worker


class WsgiServer(cheroot_wsgi.Server):
    """cheroot's WSGI server with the environ above, daemon threads, logging through
    ``logging`` and a count of the connections it accepted."""

    ConnectionClass = _Connection
    _connections: Any  # cheroot's ConnectionManager, missing from its stubs

    def __init__(
        self,
        bind_addr: tuple[str, int],
        app: WsgiApp,
        *,
        name: str,
        threads: int = WORKER_THREADS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            bind_addr,
            app,
            numthreads=threads,
            server_name=name,
            request_queue_size=LISTEN_BACKLOG,
            timeout=SOCKET_TIMEOUT_SECONDS,
            shutdown_timeout=STOP_TIMEOUT_SECONDS,
        )
        self.thread_name = name
        self.gateway = _Gateway
        self.keep_alive_conn_limit = KEEP_ALIVE_CONNECTIONS
        self.expiration_interval = SELECT_SECONDS
        self.requests = _DaemonThreadPool(self, min=threads, max=threads)
        if ssl_context is not None:
            self.ssl_adapter = _LazyHandshake(ssl_context)
        self._accepted = itertools.count()
        self.connections_opened = 0

    @classmethod
    def prepare_socket(cls, *args: Any, **kwargs: Any) -> Any:
        sock = super().prepare_socket(*args, **kwargs)
        # cheroot leaves SO_REUSEADDR off for a port of 0; a stack restarted on the port it
        # was given would then wait for the old connections' TIME_WAIT (werkzeug set it).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock

    def count_connection(self) -> None:
        # itertools.count's next() is atomic under the GIL; no lock on the accept path.
        self.connections_opened = next(self._accepted) + 1

    def serve(self) -> None:
        # cheroot's serve() also starts a non-daemon thread for connections refused when its
        # queue is full; the queue here is unbounded, so that thread has nothing to do.
        while self.ready and not self.interrupt:
            try:
                self._connections.run(self.expiration_interval)
            except Exception:
                logger.exception("HTTP server %s: accept loop failed", self.thread_name)

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        # A client that closes during the TLS handshake, or a port probe, is not an error.
        if isinstance(sys.exc_info()[1], ssl.SSLError):
            level = logging.DEBUG
        logger.log(level, "%s: %s", self.thread_name, msg, exc_info=traceback)


class ServerThread:
    """A WSGI server on a loopback port, served from a daemon thread.

    Bound on construction, so its port is known before it serves; ``serve()`` starts it."""

    def __init__(
        self,
        app: WsgiApp,
        *,
        host: str,
        port: int,
        name: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = WsgiServer((host, port), app, name=name, ssl_context=ssl_context)
        self.server.prepare()
        address, self.port = self.server.socket.getsockname()[:2]
        self.host: str = address
        self._thread = threading.Thread(target=self.server.serve, daemon=True, name=name)

    @property
    def app(self) -> WsgiApp:
        app: WsgiApp = self.server.wsgi_app
        return app

    @app.setter
    def app(self, app: WsgiApp) -> None:
        self.server.wsgi_app = app

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since the start."""
        return self.server.connections_opened

    def serve(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(timeout=STOP_TIMEOUT_SECONDS)
