"""The embedded AWS endpoint: moto's server on loopback, with DynamoDB's write semantics.

moto applies a conditional write as a check and a separate write, so two racing requests can
both pass the check; DynamoDB never lets that happen, and the store's compare-and-set relies
on it. Serialising DynamoDB requests restores that guarantee (moto answers each in well under
a millisecond, so the cost is small); other services stay concurrent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gantry.local.httpserver import ServerThread, WsgiApp

DYNAMODB_TARGET = "DynamoDB_"
__all__ = ["DYNAMODB_TARGET", "EmbeddedAws", "ServerThread", "WsgiApp", "moto_app"]


# Distinct hosts whose backend is remembered (S3 virtual-host names add one per bucket).
BACKEND_CACHE_SIZE = 1024


def moto_app() -> WsgiApp:
    from moto.server import create_backend_app

    from gantry.local import dynamodb_responses, s3_multipart, transactions

    # Transactions without a copy of the whole table each (gantry.local.transactions).
    transactions.install()
    # moto's DynamoDB responses, the same bytes for a fraction of the CPU.
    dynamodb_responses.install()
    # NoSuchUpload, not a 500 that clients retry, for completing an upload moto does not know.
    s3_multipart.install()
    return _dispatcher_class()(create_backend_app)


def _dispatcher_class() -> Any:
    from moto.server import DomainDispatcherApplication

    class RememberingDispatcher(DomainDispatcherApplication):
        """moto's dispatcher, remembering which backend serves a host. moto works it out
        again for every request: it lists its package folder on disk and tries hundreds of
        URL patterns, 0.2 ms of CPU per DynamoDB request and 0.5 ms per S3 request here. The
        answer depends on the host name alone; a host no backend serves is not remembered, so
        moto still reports it."""

        def __init__(self, create_app: Callable[..., Any]) -> None:
            super().__init__(create_app)
            self._backends: dict[str, Any] = {}

        def get_backend_for_host(self, host: str | None) -> Any:
            # Called under the dispatcher's own lock.
            if host is None:
                return None
            backend = self._backends.get(host)
            if backend is None:
                backend = super().get_backend_for_host(host)
                if backend and len(self._backends) < BACKEND_CACHE_SIZE:
                    self._backends[host] = backend
            return backend

    return RememberingDispatcher


def serialise_dynamodb(app: WsgiApp) -> WsgiApp:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(DYNAMODB_TARGET):
            return app(environ, start_response)
        with lock:
            # Drain the response under the lock: moto builds it lazily in some paths.
            return list(app(environ, start_response))

    return wrapped


class EmbeddedAws(ServerThread):
    """moto's backends behind an HTTP server on a loopback port (keep-alive, environ as moto's
    own server builds it: ``gantry.local.httpserver``); with ``data_dir``,
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
        super().__init__(serialise_dynamodb(app), host=host, port=port, name="gantry-aws")

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
