"""A small HTTPS client for the Gantry API, and what the API commands share.

The client speaks the API's grand-challenge REST shape: Bearer token, JSON bodies, limit/offset
pages, multipart uploads through presigned part URLs, file downloads through redirects to
presigned S3 URLs. Every failure becomes a ``CliError`` whose text is one line for the user.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import ssl
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gantry.local.connection import DEFAULT_STATE_DIR, Connection, resolve

PART_SIZE = 16 * 1024 * 1024
# Parts sent at once: the next part is read and sent while the storage still writes (and, on
# one machine, fsyncs) the previous one. The client holds this many parts in memory.
PARTS_IN_FLIGHT = 3
# The API presigns at most this many parts per request.
PARTS_PER_REQUEST = 1000
PAGE_LIMIT = 1000


ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        help="The API's base URL (default: $GANTRY_API_URL, then local.json).",
        show_default=False,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(help="API token (default: $GANTRY_TOKEN, then local.json).", show_default=False),
]
CaFile = Annotated[
    str | None,
    typer.Option(
        help="CA certificate to trust for the API (default: $GANTRY_CA_FILE, then local.json).",
        show_default=False,
    ),
]
StateDir = Annotated[Path, typer.Option(help="Where `gantry local up` keeps local.json.")]
Timeout = Annotated[
    float | None,
    typer.Option(help="Stop waiting after this many seconds.", show_default=False),
]


class CliError(Exception):
    """A failure the user can act on; its text is the one line they see."""


class ApiError(CliError):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {api_message(body)}")


def api_message(body: Any) -> str:
    """The API's own words: ``detail``, prefixed with the field it names when it names one."""
    if not isinstance(body, dict):
        text = str(body or "").strip().splitlines()
        return text[0][:300] if text else "no details"
    detail = body.get("detail")
    fields = {
        name: messages
        for name, messages in body.items()
        if name != "detail" and isinstance(messages, list) and messages
    }
    if isinstance(detail, str) and detail:
        if len(fields) == 1:
            name, messages = next(iter(fields.items()))
            if messages == [detail]:
                return f"{name}: {detail}"
        return detail
    if fields:
        return "; ".join(f"{n}: {', '.join(map(str, m))}" for n, m in fields.items())
    return json.dumps(body)[:300]


# Consoles are made per use, so each command sees the terminal (and COLUMNS) it runs in.
# Progress, status and errors go to stderr, so stdout stays clean for what a command prints.
def _stdout() -> Console:
    return Console()


def _stderr() -> Console:
    return Console(stderr=True)


def say(text: str) -> None:
    """A line of output (rich markup); never wrapped, so paths and ids stay whole."""
    _stdout().print(text, highlight=False, soft_wrap=True)


def render(renderable: Any) -> None:
    """A table or another rich renderable, on stdout."""
    _stdout().print(renderable)


def note(text: str) -> None:
    """A line of progress (rich markup) on stderr."""
    _stderr().print(text, highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """One red line on stderr, exit status 1."""
    line = " ".join(message.split("\n")).strip()
    _stderr().print(f"[red]{escape(line)}[/]", soft_wrap=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn the failures a user can act on into one line instead of a traceback."""
    try:
        yield
    except CliError as error:
        fail(str(error))
    except OSError as error:  # reading an input, writing an output
        where = f"{error.filename}: " if error.filename else ""
        fail(f"{where}{error.strerror or error}")


class _NoSpinner:
    def update(self, _: str) -> None:
        pass


@contextlib.contextmanager
def spinner(text: str) -> Iterator[Any]:
    """A status line on a terminal; nothing in a pipe or a log."""
    console = _stderr()
    if not console.is_terminal:
        yield _NoSpinner()
        return
    with console.status(text) as status:
        yield status


def transfer_progress() -> Progress:
    console = _stderr()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        # Bars only on a terminal: in a pipe or a log they would be noise.
        disable=not console.is_terminal,
    )


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    # The system's CAs stay trusted next to the given one: presigned URLs may be on S3's host.
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as error:
            raise CliError(f"Cannot use the CA file {ca_file}: {error}") from None
    return context


def _transport_message(url: str, error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"The API at {url} has a certificate this machine does not trust: give its CA "
            "with --ca-file (or GANTRY_CA_FILE)"
        )
    if isinstance(error, httpx.TimeoutException):
        return f"The API at {url} did not answer in time"
    return f"Cannot reach the API at {url}: {text}"


class GantryClient:
    def __init__(self, connection: Connection, *, timeout: float = 60.0) -> None:
        self.connection = connection
        self.base_url = connection.api_url
        verify = _ssl_context(connection.ca_file)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {connection.token}"},
            verify=verify,
            timeout=timeout,
        )
        # Presigned URLs carry their own signature; an Authorization header would clash.
        self._plain = httpx.Client(verify=verify, timeout=timeout)

    @classmethod
    def connect(
        cls,
        api_url: str | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        state_dir: Path = DEFAULT_STATE_DIR,
    ) -> GantryClient:
        try:
            connection = resolve(api_url=api_url, token=token, ca_file=ca_file, state_dir=state_dir)
        except LookupError as error:
            raise CliError(str(error)) from None
        except (OSError, ValueError, KeyError) as error:
            raise CliError(f"Cannot read {state_dir / 'local.json'}: {error}") from None
        return cls(connection)

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def __enter__(self) -> GantryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- JSON requests ------------------------------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if "://" in url and not url.startswith(_origin(self.base_url) + "/"):
            # The token goes only to the API's own host.
            raise CliError(f"Refusing to follow {url}: not on the API's host")
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise CliError(_transport_message(self.base_url, error)) from None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """``path`` relative to the API base (``algorithms/``) or one of its absolute URLs."""
        response = self._send(
            method,
            path,
            json=body,
            params={k: v for k, v in (params or {}).items() if v is not None},
        )
        payload = _payload(response)
        if response.status_code >= 400:
            raise ApiError(response.status_code, payload)
        return payload

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any = None) -> Any:
        return self.request("PATCH", path, body)

    def iterate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every result of a paged list."""
        offset = 0
        while True:
            page = self.get(path, **params, limit=PAGE_LIMIT, offset=offset)
            results = page.get("results") or []
            yield from results
            offset += len(results)
            if not results or not page.get("next"):
                return

    # --- catalogue ----------------------------------------------------------------------

    def algorithm_by_slug(self, slug: str) -> dict[str, Any]:
        found = self.get("algorithms/", slug=slug).get("results") or []
        if not found:
            raise CliError(f"Algorithm '{slug}' not found (or you may not use it)")
        return found[0]

    # --- files --------------------------------------------------------------------------

    def upload(self, path: Path, progress: Progress | None = None) -> dict[str, Any]:
        """Upload a file through the multipart protocol; the completed upload."""
        size = path.stat().st_size
        upload = self.post("uploads/", {"filename": path.name})
        base = f"uploads/{upload['pk']}/{upload['s3_upload_id']}/"
        count = max(1, -(-size // PART_SIZE))
        task = progress.add_task(f"Uploading {path.name}", total=size) if progress else None
        parts: list[dict[str, Any]] = []
        sending: deque[tuple[int, int, Future[str]]] = deque()

        def sent() -> None:
            number, length, etag = sending.popleft()
            parts.append({"ETag": etag.result(), "PartNumber": number})
            if progress is not None and task is not None:
                progress.advance(task, length)

        pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="gantry-upload")
        try:
            with path.open("rb") as handle:
                for first in range(1, count + 1, PARTS_PER_REQUEST):
                    numbers = list(range(first, min(count, first + PARTS_PER_REQUEST - 1) + 1))
                    urls = self.patch(base + "generate-presigned-urls/", {"part_numbers": numbers})
                    for number in numbers:
                        if len(sending) == PARTS_IN_FLIGHT:
                            sent()
                        data = handle.read(PART_SIZE)
                        url = urls["presigned_urls"][str(number)]
                        sending.append((number, len(data), pool.submit(self._put_part, url, data)))
                    while sending:
                        sent()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            # Leave no half-finished upload behind; the original failure is what matters.
            with contextlib.suppress(Exception):
                self.patch(base + "abort-multipart-upload/")
            raise
        pool.shutdown()
        return self.patch(base + "complete-multipart-upload/", {"parts": parts})

    def _put_part(self, url: str, data: bytes) -> str:
        try:
            response = self._plain.put(
                url, content=data, headers={"Content-Type": "application/octet-stream"}
            )
        except httpx.TransportError as error:
            raise CliError(_transport_message(url.split("?", 1)[0], error)) from None
        if response.status_code >= 400:
            raise CliError(f"Uploading a part failed: HTTP {response.status_code}")
        etag = response.headers.get("ETag")
        if not etag:
            raise CliError("Uploading a part failed: the storage returned no ETag")
        return etag

    def download(
        self,
        url: str,
        target: Path,
        progress: Progress | None = None,
    ) -> Path:
        """Fetch a file URL of the API: it redirects to a short-lived storage URL."""
        response = self._send("GET", url, follow_redirects=False)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _payload(response))
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise CliError(f"Expected a redirect to the file from {url}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._plain.stream("GET", location) as stream:
                if stream.status_code >= 400:
                    raise CliError(f"Downloading {target.name} failed: HTTP {stream.status_code}")
                total = int(stream.headers.get("Content-Length") or 0) or None
                task = (
                    progress.add_task(f"Downloading {target.name}", total=total)
                    if progress
                    else None
                )
                with target.open("wb") as handle:
                    for chunk in stream.iter_bytes():
                        handle.write(chunk)
                        if progress is not None and task is not None:
                            progress.advance(task, len(chunk))
        except httpx.TransportError as error:
            raise CliError(_transport_message(location.split("?", 1)[0], error)) from None
        return target


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def _payload(response: httpx.Response) -> Any:
    text = response.text
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class ApiOptions:
    """What the connection options of an API command said; ``connect()`` resolves them."""

    api_url: str | None = None
    token: str | None = None
    ca_file: str | None = None
    state_dir: Path = DEFAULT_STATE_DIR

    def connect(self) -> GantryClient:
        return GantryClient.connect(self.api_url, self.token, self.ca_file, self.state_dir)


_API_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
    for name, annotation, default in (
        ("api_url", ApiUrl, None),
        ("token", Token, None),
        ("ca_file", CaFile, None),
        ("state_dir", StateDir, DEFAULT_STATE_DIR),
    )
]


def api_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the connection options, after its own, as one ``api: ApiOptions``
    argument. The command still decides when to connect, so its checks of its input come
    first."""
    own = [
        parameter
        for parameter in inspect.signature(command, eval_str=True).parameters.values()
        if parameter.name != "api"
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        # Typer passes every option by name, the connection options included.
        options = {p.name: kwargs.pop(p.name, p.default) for p in _API_OPTIONS}
        command(*args, api=ApiOptions(**options), **kwargs)

    # Typer reads both the signature and the type hints: both list the options, not ``api``.
    parameters = [*own, *_API_OPTIONS]
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
