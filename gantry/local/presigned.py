"""Checking a presigned S3 URL as S3 does (SigV4, query-string authentication).

The embedded AWS endpoint accepts any request, signed by anyone or not at all. The gateway,
on the API's own https host that every API user reaches, forwards to it only the presigned
URLs the API handed out: signed with the stack's own credentials, for this method, path and
query, and not expired. Without this check an API user could list the bucket and read any
user's objects, or write the table, through the API's host.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# S3's own bound on X-Amz-Expires (seven days).
MAX_EXPIRES_SECONDS = 7 * 24 * 3600


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """The raw (still percent-encoded) pairs of a query string, as botocore signs them."""
    return [
        (key, value) for key, _, value in (pair.partition("=") for pair in query.split("&") if pair)
    ]


def _raw_path(environ: Mapping[str, Any]) -> str:
    target = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
    if target.startswith("/"):
        return target.partition("?")[0]
    return quote(str(environ.get("PATH_INFO") or "/"), safe="/~")


def is_valid(
    environ: Mapping[str, Any],
    access_key: str,
    secret_key: str,
    *,
    now: datetime | None = None,
) -> bool:
    """Whether the WSGI request is a presigned S3 request signed with these credentials for
    exactly its method, path and query, and not expired."""
    if not access_key or not secret_key:
        return False
    pairs = _query_pairs(str(environ.get("QUERY_STRING") or ""))
    params: dict[str, str] = {}
    for name, text in pairs:
        if name in params:
            return False  # one value per parameter: nothing to pick between
        params[name] = text
    try:
        signature = params["X-Amz-Signature"]
        credential = unquote(params["X-Amz-Credential"])
        stamp = params["X-Amz-Date"]
        expires = int(params["X-Amz-Expires"])
        signed_headers = unquote(params["X-Amz-SignedHeaders"]).split(";")
        moment = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return False
    if unquote(params.get("X-Amz-Algorithm", "")) != ALGORITHM:
        return False
    key_id, _, scope = credential.partition("/")
    day, region, service, terminal = [*scope.split("/"), "", "", "", ""][:4]
    if (
        not hmac.compare_digest(key_id, access_key)
        or day != stamp[:8]
        or service != "s3"
        or terminal != "aws4_request"
        or not region
        or not 0 <= expires <= MAX_EXPIRES_SECONDS
    ):
        return False
    current = now or datetime.now(UTC)
    if not moment - timedelta(minutes=15) <= current <= moment + timedelta(seconds=expires):
        return False
    headers = []
    for name in signed_headers:
        if name == "host":
            value: Any = environ.get("HTTP_HOST")
        elif name == "content-type":
            value = environ.get("CONTENT_TYPE")
        elif name == "content-length":
            value = environ.get("CONTENT_LENGTH")
        else:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if value is None:
            return False
        headers.append(f"{name}:{' '.join(str(value).split())}\n")
    canonical = "\n".join(
        [
            str(environ.get("REQUEST_METHOD") or "").upper(),
            _raw_path(environ),
            "&".join(f"{k}={v}" for k, v in sorted(p for p in pairs if p[0] != "X-Amz-Signature")),
            "".join(headers),
            ";".join(signed_headers),
            UNSIGNED_PAYLOAD,
        ]
    )
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signing_key = ("AWS4" + secret_key).encode()
    for part in (day, region, service, terminal):
        signing_key = _hmac(signing_key, part)
    expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)
