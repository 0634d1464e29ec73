"""Users and API tokens. Tokens are random and long, so a SHA-256 hash is what is stored."""

from __future__ import annotations

import hashlib
import secrets

from pydantic import BaseModel, Field

TOKEN_PREFIX = "gnt_"


class User(BaseModel):
    username: str = Field(min_length=1, max_length=150, pattern=r"^[A-Za-z0-9_.@+-]+$")
    is_admin: bool = False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_authorization(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; the scheme in any case."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        return None
    return token.strip()
