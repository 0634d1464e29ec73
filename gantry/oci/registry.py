"""A client of the OCI distribution API: push and pull blobs and manifests, no container engine.

One code path for every registry Gantry talks to: the local stack's (the CNCF distribution
registry on loopback) and ECR (``Registry.ecr``, a token from ``ecr.get_authorization_token``).
Standard library only (``http.client``), so it runs in a Lambda or a Batch job as it is.

- Blobs are uploaded in chunks (``POST`` then ``PATCH`` with ``Content-Range``, then ``PUT
  ?digest=``), read from their source stream one chunk at a time: memory stays at one chunk
  whatever the layer's size, and the digest is computed on the way and checked before the
  upload is committed. ``HEAD`` first: a blob the repository holds is not sent again.
- Auth: the registry's ``401`` challenge decides; ``Basic`` sends the credentials, ``Bearer``
  trades them at the challenge's realm for a token of the repository's scope.
- Pulls follow redirects (ECR and S3-backed registries send blobs from object storage)
  without the registry's credentials, and every blob's digest is checked as it is read.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from gantry.oci.errors import ImageError

DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024  # ECR wants chunks of at least 5 MiB but the last
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_REDIRECTS = {301, 302, 303, 307, 308}


class RegistryError(ImageError):
    """The registry refused or failed a request; the message says which and why."""


@dataclass
class _Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass
class Registry:
    """``url``: ``http://127.0.0.1:5000`` or ``https://<account>.dkr.ecr.<region>.amazonaws.com``."""

    url: str
    username: str | None = None
    password: str | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout: float = 120.0
    _tokens: dict[str, str] = field(default_factory=dict, repr=False)
    _basic: bool = field(default=False, repr=False)

    @classmethod
    def ecr(cls, client: Any, registry_id: str | None = None) -> Registry:
        """The account's ECR registry, with a token from ``get_authorization_token`` (12 h)."""
        kwargs = {"registryIds": [registry_id]} if registry_id else {}
        data = client.get_authorization_token(**kwargs)["authorizationData"][0]
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        return cls(data["proxyEndpoint"].rstrip("/"), user, password)

    @property
    def host(self) -> str:
        """``host[:port]`` as image references name the registry."""
        return urllib.parse.urlsplit(self.url).netloc

    # --- Blobs ----------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob the repository holds, None when it does not hold it."""
        response = self._call("HEAD", repository, f"blobs/{digest}")
        if response.status == 404:
            return None
        self._expect(response, {200}, f"check blob {digest}")
        return int(response.headers.get("Content-Length", "0"))

    def push_blob(self, repository: str, digest: str, stream: IO[bytes]) -> int:
        """Upload ``stream`` as the blob ``digest`` in chunks; its size. The stream is read
        once, one chunk in memory at a time; a stream whose bytes do not match ``digest`` is
        refused before the registry commits it."""
        response = self._call("POST", repository, "blobs/uploads/")
        self._expect(response, {202}, f"start the upload of {digest}")
        location = self._location(response)
        hasher = hashlib.sha256()
        offset = 0
        while chunk := _read_full(stream, self.chunk_bytes):
            hasher.update(chunk)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            }
            response = self._call("PATCH", repository, location, headers, chunk)
            self._expect(response, {202}, f"upload {digest}")
            location = self._location(response)
            offset += len(chunk)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            self._call("DELETE", repository, location)
            raise RegistryError(f"The blob read for {digest} has the digest {actual}: damaged")
        response = self._call("PUT", repository, _with_query(location, digest=digest), {}, b"")
        self._expect(response, {201}, f"finish the upload of {digest}")
        return offset

    def push_bytes(self, repository: str, data: bytes) -> str:
        """Upload a small blob (a config) in one request, unless present; its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.blob_size(repository, digest) is not None:
            return digest
        response = self._call("POST", repository, "blobs/uploads/")
        self._expect(response, {202}, f"start the upload of {digest}")
        headers = {"Content-Type": "application/octet-stream"}
        location = _with_query(self._location(response), digest=digest)
        response = self._call("PUT", repository, location, headers, data)
        self._expect(response, {201}, f"upload {digest}")
        return digest

    @contextlib.contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[IO[bytes]]:
        """The blob as a stream (follows redirects); the caller checks its digest."""
        connection, response = self._open(
            "GET", self._url(repository, f"blobs/{digest}"), self._auth(repository)
        )
        try:
            if response.status == 401:
                response.read()
                connection.close()
                self._authenticate(repository, response.headers)
                connection, response = self._open(
                    "GET", self._url(repository, f"blobs/{digest}"), self._auth(repository)
                )
            hops = 0
            while response.status in _REDIRECTS and hops < 5:
                target = urllib.parse.urljoin(
                    self._url(repository, f"blobs/{digest}"), response.headers["Location"]
                )
                response.read()
                connection.close()
                # Object storage answers a presigned URL and refuses a second credential.
                connection, response = self._open("GET", target, {})
                hops += 1
            if response.status != 200:
                body = response.read(4096)
                raise RegistryError(
                    f"The registry {self.host} could not send the blob {digest} of "
                    f"{repository}: HTTP {response.status} {_error_text(body)}"
                )
            yield response
        finally:
            connection.close()

    # --- Manifests ------------------------------------------------------------------------

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a tag or its digest; the digest of ``data``."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = self._call(
            "PUT", repository, f"manifests/{reference}", {"Content-Type": media_type}, data
        )
        self._expect(response, {201}, f"store the manifest {repository}:{reference}")
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise RegistryError(
                f"The registry {self.host} stored the manifest as {answered}, not {digest}"
            )
        return digest

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The manifest's bytes and media type; a digest reference is checked against them."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        response = self._call("GET", repository, f"manifests/{reference}", headers)
        if response.status == 404:
            raise RegistryError(f"The registry {self.host} has no image {repository}:{reference}")
        self._expect(response, {200}, f"read the manifest {repository}:{reference}")
        if reference.startswith("sha256:"):
            actual = "sha256:" + hashlib.sha256(response.body).hexdigest()
            if actual != reference:
                raise RegistryError(f"The manifest {reference} read back as {actual}: damaged")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media_type = json.loads(response.body).get("mediaType") or media_type
        except (ValueError, AttributeError):
            raise RegistryError(f"The manifest {repository}:{reference} is not JSON") from None
        return response.body, media_type

    def delete_manifest(self, repository: str, digest: str) -> None:
        response = self._call("DELETE", repository, f"manifests/{digest}")
        self._expect(response, {202, 404}, f"delete the manifest {repository}@{digest}")

    # --- HTTP -----------------------------------------------------------------------------

    def _url(self, repository: str, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/"):
            return urllib.parse.urljoin(self.url + "/", path)
        check_repository(repository)
        return f"{self.url}/v2/{repository}/{path}"

    def _location(self, response: _Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"The registry {self.host} answered an upload without Location")
        return location

    def _auth(self, repository: str) -> dict[str, str]:
        token = self._tokens.get(repository)
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self._basic and self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def _authenticate(self, repository: str, headers: http.client.HTTPMessage) -> None:
        challenge = headers.get("WWW-Authenticate", "")
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self.username is None:
                raise RegistryError(f"The registry {self.host} needs a user name and password")
            self._basic = True
            return
        if scheme.lower() != "bearer":
            raise RegistryError(f"The registry {self.host} asks for '{challenge}': not supported")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or f"repository:{repository}:pull,push"
        url = params["realm"] + "?" + urllib.parse.urlencode(query)
        headers_out: dict[str, str] = {}
        if self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            headers_out["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        response = self._request("GET", url, headers_out, None)
        if response.status != 200:
            raise RegistryError(
                f"The registry {self.host} refused a token for {repository}: HTTP "
                f"{response.status} {_error_text(response.body)}"
            )
        answer = json.loads(response.body)
        self._tokens[repository] = answer.get("token") or answer.get("access_token") or ""

    def _call(
        self,
        method: str,
        repository: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> _Response:
        url = self._url(repository, path)
        response = self._request(method, url, {**(headers or {}), **self._auth(repository)}, body)
        if response.status == 401:
            # Bodies are whole bytes (one chunk at most), so the request can be sent again.
            self._authenticate(repository, response.headers)
            response = self._request(
                method, url, {**(headers or {}), **self._auth(repository)}, body
            )
        return response

    def _open(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.netloc, timeout=self.timeout
            )
        else:
            connection = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if body is not None:
            headers = {**headers, "Content-Length": str(len(body))}
        try:
            connection.request(method, target, body=body, headers=headers)
            return connection, connection.getresponse()
        except OSError as error:
            connection.close()
            raise RegistryError(
                f"The registry at {parts.netloc} cannot be reached: {error}"
            ) from None

    def _request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> _Response:
        connection, response = self._open(method, url, headers, body)
        try:
            data = b"" if method == "HEAD" else response.read(MAX_MANIFEST_BYTES + 1)
            return _Response(response.status, response.headers, data)
        finally:
            connection.close()

    def _expect(self, response: _Response, statuses: set[int], what: str) -> None:
        if response.status not in statuses:
            raise RegistryError(
                f"The registry {self.host} could not {what}: HTTP {response.status} "
                f"{_error_text(response.body)}"
            )


def check_repository(repository: str) -> None:
    if not _REPOSITORY.match(repository):
        raise RegistryError(
            f"'{repository}' is not a repository name (lower-case letters, digits, "
            "'.', '_', '-', '/')"
        )


def split_reference(reference: str) -> tuple[str, str, str] | None:
    """``host[:port]/repository@sha256:<hex>`` as (host, repository, digest); None for
    anything else (a tag reference, an ``oci:`` image of the local image store)."""
    name, at, digest = reference.partition("@")
    host, slash, repository = name.partition("/")
    algorithm, _, value = digest.partition(":")
    if not (at and slash and algorithm == "sha256" and len(value) == 64):
        return None
    if not _REPOSITORY.match(repository) or not all(c in "0123456789abcdef" for c in value):
        return None
    return host, repository, digest


def _error_text(body: bytes) -> str:
    """The registry's own error messages (``{"errors": [{"code", "message"}]}``)."""
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def _with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


def _read_full(stream: IO[bytes], size: int) -> bytes:
    """``size`` bytes unless the stream ends first (streams may return short reads)."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
