"""Archives: collections of cases. Each archive item is one case, a set of socket values (a
CT image plus JSON values, say), as grand-challenge's archives and archive items are.

Members as grand-challenge has them: editors manage the archive (its title and members) and
add items, uploaders add items, users read the archive, its items and their images, and may
run algorithms over it. The archive's creator is an editor.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gantry.jobs import SocketValue

MAX_MEMBERS = 1000
USERNAME_PATTERN = r"^[A-Za-z0-9_.@+-]+$"
Username = Field(min_length=1, max_length=150, pattern=USERNAME_PATTERN)


def _distinct(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


class ArchiveMembers(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)

    editors: list[str] = Field(default_factory=list, max_length=MAX_MEMBERS)
    uploaders: list[str] = Field(default_factory=list, max_length=MAX_MEMBERS)
    users: list[str] = Field(default_factory=list, max_length=MAX_MEMBERS)

    @field_validator("editors", "uploaders", "users")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        import re

        bad = [n for n in names if not re.fullmatch(USERNAME_PATTERN, n) or len(n) > 150]
        if bad:
            raise ValueError(f"not a username: {bad[0]!r}")
        return _distinct(names)


class ArchiveFields(ArchiveMembers):
    title: str = Field(min_length=1, max_length=255)
    description: str = Field(default="", max_length=10_000)


class ArchiveUpdate(BaseModel):
    """A PATCH: only the fields given change; the slug stays."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, defer_build=True)

    title: str | None = Field(default=None, min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=10_000)
    editors: list[str] | None = Field(default=None, max_length=MAX_MEMBERS)
    uploaders: list[str] | None = Field(default=None, max_length=MAX_MEMBERS)
    users: list[str] | None = Field(default=None, max_length=MAX_MEMBERS)

    @field_validator("editors", "uploaders", "users")
    @classmethod
    def _names(cls, names: list[str] | None) -> list[str] | None:
        return None if names is None else ArchiveMembers._names(names)


class Archive(ArchiveFields):
    model_config = ConfigDict(extra="ignore")

    pk: str
    slug: str
    creator: str
    created: str
    modified: str

    def members(self) -> list[str]:
        return _distinct([self.creator, *self.editors, *self.uploaders, *self.users])


class ArchiveItem(BaseModel):
    """One case of an archive: at most one value per socket."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    pk: str
    archive: str
    title: str = ""
    values: list[SocketValue] = Field(default_factory=list)
    # Per socket slug: why the last uploaded value could not be added (it was dropped).
    errors: dict[str, str] = Field(default_factory=dict)
    # Who gave each value still pending, when not the item's creator (value pk -> user): its
    # uploads are checked against, and imported as, that user's.
    pending_by: dict[int, str] = Field(default_factory=dict)
    creator: str
    created: str
    modified: str

    def value_of(self, socket_slug: str) -> SocketValue | None:
        return next((v for v in self.values if v.socket == socket_slug), None)

    @property
    def pending(self) -> bool:
        return any(v.pending_upload or v.pending_uploads for v in self.values)


class RunState(StrEnum):
    """Where an archive run's fan-out is (its jobs have their own statuses)."""

    CREATING = "Creating jobs"
    WAITING = "Waiting for a free job slot"
    CREATED = "All jobs created"
    STOPPED = "Stopped"
    CANCELLED = "Cancelled"  # by its creator: no new jobs; its unfinished jobs cancelled

    @property
    def makes_no_more_jobs(self) -> bool:
        return self in (RunState.CREATED, RunState.STOPPED, RunState.CANCELLED)


class ArchiveRun(BaseModel):
    """One algorithm over an archive (or some of its items): a job per item."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    pk: str
    algorithm: str
    algorithm_image: str
    archive: str
    creator: str
    creator_is_admin: bool = False
    # The chosen items (pks), in order; None: every item of the archive.
    items: list[str] | None = None
    rerun: bool = False
    write_back: bool = False
    total: int = 0  # items in the run, when it started
    state: RunState = RunState.CREATING
    # Where the fan-out goes on: a key of the archive's item list, or {"index": n} of items.
    cursor: dict[str, Any] | None = None
    pages: int = 0  # pages of items handled
    stopped_reason: str = ""
    created: str
    modified: str
    # Per job status label, once every job has ended (counted once, then kept).
    final_counts: dict[str, Any] | None = None
