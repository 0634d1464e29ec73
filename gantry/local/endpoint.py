"""The embedded AWS endpoint: moto's server on loopback, with DynamoDB's write semantics.

moto applies a conditional write as a check and a separate write, so two racing requests can
both pass the check; DynamoDB never lets that happen, and the store's compare-and-set relies
on it. Serialising DynamoDB requests restores that guarantee (moto answers each in well under
a millisecond, so the cost is small); other services stay concurrent.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import BaseWSGIServer, make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
DYNAMODB_TARGET = "DynamoDB_"


class QuietHandler(MotoRequestHandler):
    """moto's handler (it keeps headers with underscores, such as S3 metadata names) without
    an access log line per request: the local stack's console is for jobs."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def moto_app() -> WsgiApp:
    from moto.server import DomainDispatcherApplication, create_backend_app

    return DomainDispatcherApplication(create_backend_app)


def serialise_dynamodb(app: WsgiApp) -> WsgiApp:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(DYNAMODB_TARGET):
            return app(environ, start_response)
        with lock:
            # Drain the response under the lock: moto builds it lazily in some paths.
            return list(app(environ, start_response))

    return wrapped


class ServerThread:
    """A threaded werkzeug server on a loopback port, served from a daemon thread.

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
        self.server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, ssl_context=ssl_context, request_handler=QuietHandler
        )
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=name)

    def serve(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class EmbeddedAws(ServerThread):
    """moto's backends behind a threaded HTTP server on a loopback port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = serialise_dynamodb(moto_app())
        super().__init__(self.app, host=host, port=port, name="gantry-aws")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmbeddedAws:
        self.serve()
        return self
