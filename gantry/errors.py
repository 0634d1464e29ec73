"""Errors a caller can act on. The API maps each to one HTTP status with a JSON body."""

from __future__ import annotations

from typing import Any


class GantryError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.message}
        if self.field:
            # DRF-style: the field name maps to a list of messages.
            body[self.field] = [self.message]
        body.update(self.extra)
        return body


class ValidationFailed(GantryError):
    status_code = 400


class NotAuthenticated(GantryError):
    status_code = 401


class PermissionDenied(GantryError):
    status_code = 403


class NotFound(GantryError):
    status_code = 404


class Conflict(GantryError):
    status_code = 409


class PayloadTooLarge(GantryError):
    status_code = 413


class TooManyRequests(GantryError):
    """Over a limit for now; ``retry_after`` seconds is a fair time to try again."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after
