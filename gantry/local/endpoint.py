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
from pathlib import Path
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

    from gantry.local import transactions

    # Transactions without a copy of the whole table each (gantry.local.transactions).
    transactions.install()
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
        address, self.port = self.server.server_address[:2]
        # typeshed allows a bytes host; an AF_INET server's is a str.
        self.host: str = address if isinstance(address, str) else bytes(address).decode()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=name)

    def serve(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class EmbeddedAws(ServerThread):
    """moto's backends behind a threaded HTTP server on a loopback port; with ``data_dir``,
    every acknowledged write is on disk there before its response (``gantry.local.persist``)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, data_dir: Path | None = None
    ) -> None:
        self.store: Any = None  # DurableStore, with a data directory
        app = moto_app()
        if data_dir is not None:
            from gantry.local.durable import DurableStore
            from gantry.local.persist import persisting

            self.store = DurableStore(data_dir)
            # Inside the DynamoDB lock: an item is read back and stored before the next
            # write to the table runs, so the stored order is moto's order.
            app = persisting(app, self.store)
        self.app = serialise_dynamodb(app)
        super().__init__(self.app, host=host, port=port, name="gantry-aws")

    def restore(self) -> tuple[int, int]:
        """Put the stored items, objects and multipart uploads in progress into the
        provisioned table and bucket: (items, objects)."""
        from gantry.local.persist import restore_items, restore_objects, restore_uploads

        if self.store is None:
            return 0, 0
        counts = restore_items(self.store), restore_objects(self.store)
        restore_uploads(self.store)
        return counts

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmbeddedAws:
        self.serve()
        return self

    def stop(self) -> None:
        super().stop()
        if self.store is not None:
            self.store.close()
