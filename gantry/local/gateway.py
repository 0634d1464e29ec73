"""The local HTTPS gateway: API Gateway's part, on one loopback port.

Requests under ``/api/v1/`` become API Gateway (REST, proxy integration) events for the same
API handler that runs on Lambda, as ``sam local start-api`` does. Every other request goes to
the embedded AWS endpoint, so presigned S3 URLs handed to clients are on the same https host
(gcapi follows only https URLs on its own host).
"""

from __future__ import annotations

import base64
import logging
import queue
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from gantry.context import Context
from gantry.local import presigned
from gantry.local.client import LambdaContextStub, proxy_event
from gantry.local.endpoint import ServerThread, WsgiApp
from gantry.local.tls import TlsFiles

logger = logging.getLogger(__name__)
API_PREFIX = "/api/v1/"
STAGE = "local"
# API Gateway's own payload limit; larger bodies are refused before they reach a handler.
MAX_BODY_BYTES = 10 * 1024 * 1024
INTERNAL_HEADERS = "HTTP_X_GANTRY_"
TEXT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded")
# S3's answer to a request whose signature does not match (or that has none).
_ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Only presigned URLs handed out by the API are served here</Message></Error>"
)


class ApiPool:
    """API handler instances, one per concurrent request, like warm Lambda instances: the
    Powertools resolver keeps the current event on itself, so one instance must not serve
    two requests at once."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def resolve(self, event: dict[str, Any]) -> dict[str, Any]:
        from lambdas.api.app import create_app

        try:
            app = self._idle.get_nowait()
        except queue.Empty:
            app = create_app(self.ctx)
        try:
            return app.resolve(event, LambdaContextStub())
        finally:
            self._idle.put(app)


def proxy_event_from_environ(environ: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The API Gateway REST proxy event for a WSGI request under ``/api/v1/``."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").title()] = value
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["Content-Length"] = environ["CONTENT_LENGTH"]
    query: dict[str, Any] = {}
    for key, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
        query.setdefault(key, []).append(value)
    binary = bool(body) and not headers.get("Content-Type", "").startswith(TEXT_TYPES)
    path = environ.get("PATH_INFO") or "/"
    return proxy_event(
        environ["REQUEST_METHOD"],
        path[len(API_PREFIX) :] if path.startswith(API_PREFIX) else "",
        headers=headers,
        body=(base64.b64encode(body).decode() if binary else body.decode("utf-8"))
        if body
        else None,
        query=query,
        stage=STAGE,
        base64_body=binary,
        source_ip=environ.get("REMOTE_ADDR", ""),
    )


# The access key and secret key the stack signs its presigned URLs with.
Signer = Callable[[], tuple[str, str]]


def gateway_app(pool: ApiPool, aws: WsgiApp | None, *, signer: Signer | None = None) -> WsgiApp:
    """The API, and the presigned S3 URLs signed by ``signer``'s credentials: the embedded
    endpoint accepts any request, so on the API's host (which every API user reaches) only
    those reach it; anything else there is 403 (gantry.local.presigned)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/"):
            return _api(pool, environ, start_response)
        if aws is not None:
            if signer is None or not presigned.is_valid(environ, *signer()):
                start_response("403 Forbidden", [("Content-Type", "application/xml")])
                return [_ACCESS_DENIED]
            # x-gantry-* headers are between the local runner and the endpoint (a stored
            # object's file path, a file to adopt): never accepted from outside.
            for name in [name for name in environ if name.startswith(INTERNAL_HEADERS)]:
                del environ[name]
            return aws(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"detail": "Not found."}']

    return app


def _api(
    pool: ApiPool, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length > MAX_BODY_BYTES:
        start_response("413 Request Entity Too Large", [("Content-Type", "application/json")])
        return [b'{"message": "Request Too Long"}']
    body = environ["wsgi.input"].read(length) if length else b""
    try:
        response = pool.resolve(proxy_event_from_environ(environ, body))
    except Exception:  # API Gateway answers 502 when the integration fails
        logger.exception("API handler failed")
        start_response("502 Bad Gateway", [("Content-Type", "application/json")])
        return [b'{"message": "Internal server error"}']
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, values in (response.get("multiValueHeaders") or {}).items():
        seen.add(name.lower())
        headers.extend((name, str(v)) for v in values)
    for name, value in (response.get("headers") or {}).items():
        if name.lower() not in seen:
            headers.append((name, str(value)))
    raw = response.get("body") or ""
    data = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode("utf-8")
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(data))))
    status = int(response["statusCode"])
    start_response(f"{status} {_reason(status)}", headers)
    return [data]


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _not_ready(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "application/json")])
    return [b'{"message": "Starting"}']


class Gateway(ServerThread):
    """The HTTPS server on a loopback port, in a thread."""

    def __init__(self, tls: TlsFiles, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        self.tls = tls
        # Bound now so the URL is known before the app behind it is built; served by start().
        super().__init__(
            _not_ready, host=host, port=port, name="gantry-gateway", ssl_context=context
        )

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    def start(self, app: WsgiApp) -> Gateway:
        self.app = app
        self.serve()
        return self
