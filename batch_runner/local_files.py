"""Inputs and outputs copied to and from the one-machine endpoint's files, not sent by HTTP.

On one machine the object store is a folder on the runner's disk: downloading an input
through HTTP reads it, sends it through two processes and writes it again, several times
slower than a copy. When the local compute backend asks for it (``GANTRY_RUNNER_LOCAL_FILES=1``,
never set on AWS), the runner still asks S3 for the object (one ranged GetObject of its first
64 KiB, so the same access rules apply) and adds a request header. An object that small comes
whole in that answer and is written from it: no file copy, and no download (a HeadObject and
a GetObject through the transfer manager's threads) where the endpoint keeps no file. For a
larger one the local endpoint's answer names the object's stored files (one, or a completed
multipart upload's parts in order), which the runner then copies one after another into the
input with ``copy_file_range`` (a reflink on file systems that have them, a copy inside the
kernel elsewhere). The copy is the job's own: nothing a job does to its input reaches the
stored object, whose files the endpoint never changes in place. Any other answer (another
endpoint, an object it does not keep as a file, an error) leaves the input to the usual
download.

Outputs go the other way when the backend names the endpoint's incoming folder
(``GANTRY_RUNNER_LOCAL_INCOMING``): the runner puts the output file there and sends a PutObject
with an empty body whose ``x-gantry-local-file`` header names it; the endpoint moves that file
into its store. Refused, the output is uploaded as anywhere else.

The file put there is a copy, unless the caller says no process of the algorithm is left (a
job run in its sandbox, whose pid namespace the kernel empties before the sandbox's exit is
seen) and the file can be moved without anyone keeping a way to change it (``_move``): then
it is moved, and the job's own name for it is gone. A job's file and a stored object never
share an inode while both have a name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gantry.contract import (
    LOCAL_FILE_HEADER,
    LOCAL_FILES_ENV,
    LOCAL_INCOMING_ENV,
    local_file_paths,
)

_TOTAL = re.compile(r"^bytes \d+-\d+/(\d+)$")
# Asked for with the endpoint's files: an object up to this size comes whole in the answer.
WHOLE_UP_TO = 64 * 1024
ASK_RANGE = f"bytes=0-{WHOLE_UP_TO - 1}"
_CHUNK = 64 * 1024 * 1024
# copy_file_range refused (another file system, an old kernel): sendfile copies instead.
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def wanted() -> bool:
    return os.environ.get(LOCAL_FILES_ENV) == "1"


def _ask_for_file(request: Any, **_kwargs: Any) -> None:
    request.headers[LOCAL_FILE_HEADER] = "1"


def copy_local(client: Any, bucket: str, key: str, target: str) -> bool:
    """Copy the object from the endpoint's files to ``target``; False where the endpoint
    offers none (nothing is then written), the caller downloads it instead."""
    client.meta.events.register(
        "before-sign.s3.GetObject", _ask_for_file, unique_id="gantry-local-file"
    )
    try:
        response = client.get_object(Bucket=bucket, Key=key, Range=ASK_RANGE)
        # Read to the end (at most WHOLE_UP_TO bytes): the connection stays usable.
        with contextlib.closing(response["Body"]) as body:
            first = body.read()
    except (ClientError, BotoCoreError):
        return False  # the download reports it, with the same error
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    named = headers.get(LOCAL_FILE_HEADER)
    total = _TOTAL.match(response.get("ContentRange") or "")
    if total is not None and int(total.group(1)) == len(first):
        return _write_whole(first, target)
    if not named or total is None or not os.path.isabs(named):
        return False
    sources: list[tuple[int, int]] = []
    try:
        # All opened first: a newer version may replace (and unlink) them meanwhile.
        for path in local_file_paths(named):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            info = os.fstat(fd)
            sources.append((fd, info.st_size))
            if not stat.S_ISREG(info.st_mode):
                return False
        if sum(size for _fd, size in sources) != int(total.group(1)):
            return False

        def copy_sources(written: int) -> None:
            offset = 0
            for fd, size in sources:
                _copy(fd, written, size, offset)
                offset += size

        return _fill(target, copy_sources)
    except OSError:
        # Replaced meanwhile: the download gets the newer version.
        return False
    finally:
        for fd, _size in sources:
            os.close(fd)


def _write_whole(data: bytes, target: str) -> bool:
    """Write the whole object, received in the answer; False (nothing left) if that fails."""

    def write(written: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(written, view) :]

    return _fill(target, write)


def _fill(target: str, write: Callable[[int], None]) -> bool:
    """``target`` written from its start by ``write(fd)``; False, and ``target`` left empty
    for the download, if opening or writing it fails."""
    try:
        # No O_TRUNC: on ext4, truncating a file (even an empty one, as the placeholder that
        # claims the path) makes its close start writing all of it out, which took a third
        # of the job's copy time. Emptied only when something is in it.
        written = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            if os.fstat(written).st_size:
                os.ftruncate(written, 0)
            write(written)
        finally:
            os.close(written)
    except OSError:
        with contextlib.suppress(OSError):
            os.truncate(target, 0)
        return False
    return True


def put_local(
    client: Any,
    source: int,
    bucket: str,
    key: str,
    *,
    move_from: str | None = None,
    size: int | None = None,
) -> bool:
    """Store the open file ``source`` as the object through the endpoint's incoming folder;
    False where the backend named none or the endpoint refused (nothing is then stored).

    ``move_from``: the name ``source`` was opened by, given only when no process of the
    algorithm is left; the file is then moved there instead of copied where ``_move`` finds
    that safe, and that name is gone (also if the endpoint refuses: ``source`` is still open
    for the upload).

    ``size``: the bytes to copy from the file's start (as it was measured when the outputs
    were checked; another process may grow it since); None: its size now.
    """
    incoming = os.environ.get(LOCAL_INCOMING_ENV)
    if not incoming:
        return False
    copy = os.path.join(incoming, secrets.token_hex(16))

    def name_the_copy(request: Any, **_kwargs: Any) -> None:
        request.headers[LOCAL_FILE_HEADER] = copy

    try:
        if size is None:
            size = os.fstat(source).st_size
        # Moved only if still of the size measured; copied, it is cut to that size.
        if move_from is None or not _move(source, move_from, copy, size):
            # Only the endpoint reads the copy; a name taken already is never reused.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            target = os.open(copy, flags, 0o600)
            try:
                _copy(source, target, size, 0)
            finally:
                os.close(target)
        client.meta.events.register("before-sign.s3.PutObject", name_the_copy)
        try:
            response = client.put_object(Bucket=bucket, Key=key, Body=b"")
        finally:
            client.meta.events.unregister("before-sign.s3.PutObject", name_the_copy)
    except (OSError, ClientError, BotoCoreError):
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(copy)  # moved by the endpoint unless it refused
    # The endpoint says what it stored; one that ignored the header stored an empty object,
    # which the upload then replaces.
    return response["ResponseMetadata"]["HTTPHeaders"].get(LOCAL_FILE_HEADER) == str(size)


def _move(source: int, name: str, target: str, size: int | None = None) -> bool:
    """Rename ``name`` (the file open as ``source``, opened by that name with O_NOFOLLOW) to
    ``target``; False where it must be copied instead (its owner and mode may then have become
    those of a copy).

    Moved only if the open file is a regular file with no other name (of this user, or any as
    root), ``name`` still names that very inode (``lstat``) and ``target`` is on the same file
    system; it first becomes this user's, mode 0600, as a copy is. After the rename ``target``
    must be that inode with exactly one name, or it is renamed back and copied: the file the
    output checks read is the file stored. The endpoint checks again (a regular file of its
    user with one link) before it adopts it.
    """
    info = os.fstat(source)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        return False  # another name could change the stored object
    if size is not None and info.st_size != size:
        return False  # not the file measured: the copy takes its measured bytes
    owner = os.geteuid()
    if info.st_uid != owner and owner != 0:
        return False  # another user's file, which this user cannot make its own
    identity = (info.st_dev, info.st_ino)
    try:
        named = os.lstat(name)
        if (named.st_dev, named.st_ino) != identity:
            return False
        if os.stat(os.path.dirname(target)).st_dev != info.st_dev:
            return False  # another file system: a rename would fail with EXDEV
        # As a copy would be: this user's, readable by it only (the endpoint takes no other).
        # As root the algorithm's file (its user's, e.g. nobody) is taken over: none of its
        # processes is left to use it.
        if info.st_uid != owner:
            os.fchown(source, owner, os.getegid())
        os.fchmod(source, 0o600)
        os.rename(name, target)
    except OSError:
        return False  # EXDEV after all, a name that went away, ...: copied instead
    try:
        moved = os.lstat(target)
        if (moved.st_dev, moved.st_ino) == identity and os.fstat(source).st_nlink == 1:
            return True
        os.rename(target, name)  # not the file checked, or it has another name now
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(target)
    return False


def _copy(source: int, target: int, size: int, at: int) -> None:
    """Copy ``size`` bytes from the start of ``source`` to ``target`` from its offset ``at``,
    in the kernel."""
    copied = 0
    cross_device = False
    while copied < size:
        count = min(_CHUNK, size - copied)
        if not cross_device:
            try:
                sent = os.copy_file_range(source, target, count, copied, at + copied)
            except OSError as error:
                if error.errno not in _NO_COPY_FILE_RANGE:
                    raise
                cross_device = True
                continue
        else:
            os.lseek(target, at + copied, os.SEEK_SET)
            sent = os.sendfile(target, source, copied, count)
        if sent == 0:
            raise OSError(errno.EIO, "the stored file ended early")
        copied += sent
