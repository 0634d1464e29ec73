"""Inputs and outputs copied to and from the one-machine endpoint's files, not sent by HTTP.

On one machine the object store is a folder on the runner's disk: downloading an input
through HTTP reads it, sends it through two processes and writes it again, several times
slower than a copy. When the local compute backend asks for it (``GANTRY_RUNNER_LOCAL_FILES=1``,
never set on AWS), the runner still asks S3 for the object (one ranged GetObject of one byte,
so the same access rules apply) and adds a request header; the local endpoint answers it with
the object's stored file, which the runner then copies with ``copy_file_range`` (a reflink on
file systems that have them, a copy inside the kernel elsewhere). The copy is the job's own:
nothing a job does to its input reaches the stored object, whose file the endpoint never
changes in place. Any other answer (another endpoint, an object it does not keep as a file,
an error) leaves the input to the usual download.

Outputs go the other way when the backend names the endpoint's incoming folder
(``GANTRY_RUNNER_LOCAL_INCOMING``): the runner copies the output file there (a copy, never a
link: the job may still hold the original) and sends a PutObject with an empty body whose
``x-gantry-local-file`` header names the copy; the endpoint moves that file into its store.
Refused, the output is uploaded as anywhere else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gantry.contract import LOCAL_FILE_HEADER, LOCAL_FILES_ENV, LOCAL_INCOMING_ENV

_TOTAL = re.compile(r"^bytes \d+-\d+/(\d+)$")
_CHUNK = 64 * 1024 * 1024
# copy_file_range refused (another file system, an old kernel): sendfile copies instead.
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def wanted() -> bool:
    return os.environ.get(LOCAL_FILES_ENV) == "1"


def _ask_for_file(request: Any, **_kwargs: Any) -> None:
    request.headers[LOCAL_FILE_HEADER] = "1"


def copy_local(client: Any, bucket: str, key: str, target: str) -> bool:
    """Copy the object from the endpoint's file to ``target``; False where the endpoint
    offers no file (nothing is then written), the caller downloads it instead."""
    client.meta.events.register(
        "before-sign.s3.GetObject", _ask_for_file, unique_id="gantry-local-file"
    )
    try:
        response = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")
    except (ClientError, BotoCoreError):
        return False  # the download reports it, with the same error
    response["Body"].close()
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    path = headers.get(LOCAL_FILE_HEADER)
    total = _TOTAL.match(response.get("ContentRange") or "")
    if not path or total is None or not os.path.isabs(path):
        return False
    try:
        source = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # replaced meanwhile: the download gets the newer version
    try:
        info = os.fstat(source)
        if not stat.S_ISREG(info.st_mode) or info.st_size != int(total.group(1)):
            return False
        _copy(source, target, info.st_size)
    except OSError:
        with contextlib.suppress(OSError):
            os.truncate(target, 0)
        return False
    finally:
        os.close(source)
    return True


def put_local(client: Any, source: int, bucket: str, key: str) -> bool:
    """Store the open file ``source`` as the object through the endpoint's incoming folder;
    False where the backend named none or the endpoint refused (nothing is then stored)."""
    incoming = os.environ.get(LOCAL_INCOMING_ENV)
    if not incoming:
        return False
    copy = os.path.join(incoming, secrets.token_hex(16))

    def name_the_copy(request: Any, **_kwargs: Any) -> None:
        request.headers[LOCAL_FILE_HEADER] = copy

    try:
        size = os.fstat(source).st_size
        _copy(source, copy, size, exclusive=True)
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


def _copy(source: int, target_path: str, size: int, *, exclusive: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    if exclusive:
        flags |= os.O_EXCL
    # An input is read by the algorithm's user; an output's copy only by the endpoint.
    target = os.open(target_path, flags, 0o600 if exclusive else 0o644)
    try:
        copied = 0
        cross_device = False
        while copied < size:
            count = min(_CHUNK, size - copied)
            if not cross_device:
                try:
                    sent = os.copy_file_range(source, target, count, copied, copied)
                except OSError as error:
                    if error.errno not in _NO_COPY_FILE_RANGE:
                        raise
                    cross_device = True
                    continue
            else:
                os.lseek(target, copied, os.SEEK_SET)
                sent = os.sendfile(target, source, copied, count)
            if sent == 0:
                raise OSError(errno.EIO, "the stored file ended early")
            copied += sent
    finally:
        os.close(target)
