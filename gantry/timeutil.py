"""Timestamps and durations in the shapes the grand-challenge API uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None = None) -> str:
    return (moment or now()).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def duration_string(seconds: float | None) -> str | None:
    """Django's DurationField format: '[D ]HH:MM:SS[.ffffff]'."""
    if seconds is None:
        return None
    delta = timedelta(seconds=seconds)
    days = delta.days
    rest = delta - timedelta(days=days)
    hours, remainder = divmod(rest.seconds, 3600)
    minutes, secs = divmod(remainder, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    if rest.microseconds:
        text += f".{rest.microseconds:06d}"
    return f"{days} {text}" if days else text
