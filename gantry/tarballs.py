"""What a model tarball may hold: the one rule the import and the runner both apply.

The import checks an uploaded model once, while it streams through for its sha256
(``scan``), so a tarball the runner would refuse fails its import with the same reason; the
runner applies the same rule member by member while it extracts (``batch_runner.model``),
because the bytes it downloads are checked again there. A member is refused for:

- an absolute name, ``..``, a backslash or NUL in its name;
- being a device, fifo or other special member;
- a symbolic link that is absolute or points outside the model (or has '..' after a named
  part, which climbs from wherever that part, if a link, leads), a hard link to anything but
  an earlier file of the tarball, or lying below or replacing a link;
- making the tarball hold more than ``max_members`` members or more than ``max_bytes``
  (declared sizes: a tar stream's headers decide how many bytes each member has).

Standard library only: the runner's bundle imports it.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import IO, Protocol, cast

MAX_MODEL_BYTES = 64 * 1024**3
MAX_MODEL_MEMBERS = 100_000
_CHUNK = 1024 * 1024


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ModelTarballError(Exception):
    """The tarball cannot be a model; the message is safe to show to users."""


def _clean(name: str) -> str:
    if "\\" in name or "\x00" in name:
        raise ModelTarballError(f"Model member {name!r} has an invalid name")
    if name.startswith("/"):
        raise ModelTarballError(f"Model member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ModelTarballError(f"Model member {name!r} is outside the model directory")
    return "/".join(parts)


@dataclass
class ModelTarballRule:
    """Checks the members of one tarball in order; ``check`` before writing each member."""

    max_bytes: int = MAX_MODEL_BYTES
    max_members: int = MAX_MODEL_MEMBERS
    members: int = 0
    total_bytes: int = 0
    links: set[str] = field(default_factory=set)
    files: dict[str, int] = field(default_factory=dict)

    def check(self, member: tarfile.TarInfo) -> str:
        """The member's clean relative name ("" for the model folder itself); raises
        ModelTarballError if the member may not be extracted."""
        self.members += 1
        if self.members > self.max_members:
            raise ModelTarballError(f"The model has more than {self.max_members} members")
        name = _clean(member.name)
        if not name:
            return name
        parts = name.split("/")
        if any("/".join(parts[:i]) in self.links for i in range(1, len(parts))):
            raise ModelTarballError(f"Model member {member.name!r} is below a link")
        if name in self.links:
            # Extracting a folder there would find the link's target and chmod it.
            raise ModelTarballError(f"Model member {member.name!r} replaces a link")
        if member.isdir():
            return name
        if member.issym():
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            # normpath is exact only for leading '..': after a named part that is itself a
            # link, '..' climbs from wherever that link leads.
            target = [p for p in member.linkname.split("/") if p not in ("", ".")]
            first_named = next((i for i, p in enumerate(target) if p != ".."), len(target))
            climbs_late = ".." in target[first_named:]
            if member.linkname.startswith("/") or resolved.split("/")[0] == ".." or climbs_late:
                raise ModelTarballError(
                    f"Model member {member.name!r} links outside the model directory"
                )
            self.links.add(name)
            return name
        if member.islnk():
            source = _clean(member.linkname)
            if source not in self.files:
                raise ModelTarballError(f"Model member {member.name!r} is a link to no file")
            self._count(name, self.files[source])
            return name
        if member.isfile():
            self._count(name, member.size)
            return name
        raise ModelTarballError(f"Model member {member.name!r} is not a file or folder")

    def _count(self, name: str, size: int) -> None:
        self.total_bytes += size
        if self.total_bytes > self.max_bytes:
            raise ModelTarballError(f"The model is larger than the limit of {self.max_bytes} bytes")
        self.files[name] = size


def link_source(member: tarfile.TarInfo) -> str:
    """The earlier file a hard link ``member`` stands for (after ``check`` accepted it)."""
    return _clean(member.linkname)


def open_stream(stream: Readable) -> tarfile.TarFile:
    """``stream`` as a tar read front to back (any compression tarfile knows)."""
    try:
        # A stream mode reads only: any object with read() will do. Reads of 1 MiB, not
        # tarfile's 10 KiB records: an S3 body costs a call per read.
        return tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|*", bufsize=_CHUNK)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ModelTarballError("The model is not a tar archive") from error


def scan(stream: Readable, rule: ModelTarballRule | None = None) -> ModelTarballRule:
    """Check every member of the tarball in ``stream`` without writing anything, and read
    ``stream`` to its end (so a digest taken while reading covers every byte)."""
    rule = rule or ModelTarballRule()
    with open_stream(stream) as archive:
        try:
            for member in archive:
                rule.check(member)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ModelTarballError("The model archive is damaged") from error
    while stream.read(_CHUNK):
        pass
    return rule


class Digesting:
    """A read-only stream that takes the sha256 and size of what passes through it."""

    def __init__(self, body: Readable) -> None:
        self.body = body
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.body.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk

    @property
    def sha256(self) -> str:
        return f"sha256:{self.digest.hexdigest()}"
