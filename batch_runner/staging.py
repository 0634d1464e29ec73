"""Inputs from S3 to the input root, outputs from the output root to S3.

The runner writes nothing of its own under the input root: ``inputs.json`` there is one of
the invocation's inputs (the platform writes it in grand-challenge's shape). What was staged
is returned, one object per input, for the runner's log::

    {"relative_path": "images/ct-image/<uuid>.mha",   # as in the invocation
     "path": "/input/images/ct-image/<uuid>.mha",     # where the algorithm sees it
     "size": 1234,                                    # bytes downloaded
     "decompress": false,
     "files": ["/input/..."]}                         # extracted files, zips only
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import resource
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from batch_runner import local_files
from batch_runner.config import Limits
from batch_runner.transfer import Download, Upload, download_all, upload_all
from batch_runner.unzip import UnsafeZipError, safe_extract
from gantry.contract import InvocationInput, ResultOutput
from gantry.paths import clear_folder, safe_join
from gantry.resources import RESULT_FILE_SUFFIX

# The result file lives under this folder of the output prefix; outputs may not claim it.
RESERVED_OUTPUT_DIR = RESULT_FILE_SUFFIX.split("/", 1)[0]
# S3's longest key, in bytes of UTF-8: an output's name and the output prefix together.
MAX_KEY_BYTES = 1024


class StagingError(Exception):
    """Inputs could not be staged; the message is safe to show to users."""


def clear_root(root: Path) -> None:
    """Create ``root`` or empty it, without following any link inside it, at any depth the
    last algorithm nested folders to."""
    root.mkdir(parents=True, exist_ok=True)
    clear_folder(root)


@dataclass
class _Staged:
    item: InvocationInput
    target: Path
    # Where the download lands: the target itself, or the archive for a zip.
    download_to: str


def stage_inputs(
    client: Any,
    inputs: Sequence[InvocationInput],
    input_root: Path,
    limits: Limits,
    visible_root: str = "/input",
) -> list[dict[str, Any]]:
    """Download (and unzip) every input; returns what was staged. On one machine an input is
    copied from the endpoint's file instead, where it offers one (``batch_runner.local_files``)."""
    staged: list[_Staged] = []
    with tempfile.TemporaryDirectory(prefix="gantry-zips-") as zips:
        for index, item in enumerate(inputs):
            try:
                target = Path(safe_join(str(input_root), item.relative_path))
            except ValueError as error:
                raise StagingError(
                    f"Input path '{item.relative_path}' is outside the input directory"
                ) from error
            if item.decompress:
                # The archive itself stays outside the input root; only its members land.
                download_to = os.path.join(zips, f"{index}.zip")
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                download_to = str(target)
                try:
                    # A placeholder claims the path: a second input for it is an error.
                    target.touch(exist_ok=False)
                except FileExistsError as error:
                    raise StagingError(
                        f"Input path '{item.relative_path}' is used more than once"
                    ) from error
            staged.append(_Staged(item, target, download_to))
        downloads = staged
        if local_files.wanted():
            # One machine: copied from the endpoint's own files where it offers them.
            downloads = [
                s
                for s in staged
                if not local_files.copy_local(
                    client, s.item.bucket_name, s.item.bucket_key, s.download_to
                )
            ]
        try:
            download_all(
                client,
                (Download(s.item.bucket_name, s.item.bucket_key, s.download_to) for s in downloads),
                concurrency=limits.download_concurrency,
            )
        except (ClientError, BotoCoreError) as error:
            raise StagingError("An input file could not be downloaded") from error
        entries = [_extract(s, input_root, limits, visible_root) for s in staged]
    return entries


def _visible(path: Path, input_root: Path, visible_root: str) -> str:
    return f"{visible_root.rstrip('/')}/{path.relative_to(input_root).as_posix()}"


def _extract(s: _Staged, input_root: Path, limits: Limits, visible_root: str) -> dict[str, Any]:
    size = os.path.getsize(s.download_to)
    entry: dict[str, Any] = {
        "relative_path": s.item.relative_path,
        "path": _visible(s.target, input_root, visible_root),
        "size": size,
        "decompress": s.item.decompress,
    }
    if s.item.decompress:
        # As sagemaker-shim: members land in the folder that holds relative_path.
        s.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            files = safe_extract(Path(s.download_to), s.target.parent, limits)
        except UnsafeZipError as error:
            raise StagingError(f"Input '{s.item.relative_path}': {error}") from error
        entry["files"] = [_visible(f, input_root, visible_root) for f in files]
    return entry


# --- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputScan:
    files: list[tuple[str, Path]]
    errors: list[str]


def _shown(relative: str, limit: int = 80) -> str:
    """``relative`` for a message: undecodable bytes and control characters escaped."""
    text = relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name_problem(relative: str, max_name_bytes: int) -> str | None:
    """Why ``relative`` cannot name an object (under a prefix leaving ``max_name_bytes``)."""
    try:
        size = len(relative.encode("utf-8"))
    except UnicodeEncodeError:
        # os.scandir gives undecodable bytes as lone surrogates, which no key can hold.
        return f"The output name '{_shown(relative)}' is not valid UTF-8"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in relative):
        return f"The output name '{_shown(relative)}' holds a control character"
    if size > max_name_bytes:
        return f"The output name '{_shown(relative)}' is too long: at most {max_name_bytes} bytes"
    return None


def scan_outputs(
    output_root: Path,
    max_name_bytes: int = MAX_KEY_BYTES,
    *,
    max_files: int | None = None,
    max_bytes: int | None = None,
) -> OutputScan:
    """Every regular file under ``output_root``; links, special files and names that cannot
    be keys (of at most ``max_name_bytes``, what the output prefix leaves) are errors, and
    so are more than ``max_files`` files and folders or more than ``max_bytes`` in all.

    Walked without recursion, and never below a folder whose name is too long already: the
    algorithm may nest folders deeper than Python recurses or a path may be long. A folder
    is listed no further than the limit on files: the scan's time and memory are bounded.
    """
    files: list[tuple[str, Path]] = []
    errors: list[str] = []
    pending = [""]
    seen = 0
    total = 0
    while pending:
        folder = pending.pop()
        budget = None if max_files is None else max_files - seen + 1
        try:
            with os.scandir(output_root / folder) as found:
                entries = sorted(itertools.islice(found, budget), key=lambda entry: entry.name)
        except OSError:
            errors.append(f"Output folder '{_shown(folder)}' could not be read")
            continue
        seen += len(entries)
        if max_files is not None and seen > max_files:
            too_many = f"more than {max_files} files and folders in its output folder"
            return OutputScan([], [f"The algorithm left {too_many}"])
        folders: list[str] = []
        for entry in entries:
            relative = f"{folder}/{entry.name}" if folder else entry.name
            problem = _name_problem(relative, max_name_bytes)
            if problem is not None:
                errors.append(problem)
                continue
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                errors.append(f"Output '{relative}' is a symbolic link, which is not allowed")
            elif stat.S_ISDIR(mode):
                folders.append(relative)
            elif not stat.S_ISREG(mode):
                errors.append(f"Output '{relative}' is not a regular file")
            elif relative.split("/", 1)[0] == RESERVED_OUTPUT_DIR:
                errors.append(f"Output '{relative}' uses the reserved folder {RESERVED_OUTPUT_DIR}")
            else:
                files.append((relative, output_root / relative))
                total += entry.stat(follow_symlinks=False).st_size
        if max_bytes is not None and total > max_bytes:
            return OutputScan([], [f"The outputs are larger than the limit of {max_bytes} bytes"])
        pending.extend(reversed(folders))
    files.sort()
    return OutputScan(files, errors)


def _open_output(relative: str, path: Path) -> int:
    """Open the output ``relative`` (at ``path``) one name at a time from the output root,
    following no link: O_NOFOLLOW alone guards only the last name, and a folder the algorithm
    swapped for a link after the scan would make the runner read another folder's file."""
    names = relative.split("/")
    root = path.parents[len(names) - 1]
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names[:-1]:
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        # O_NONBLOCK: a FIFO swapped in after the scan would block the open until a writer
        # came; a regular file reads alike with it.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        return os.open(names[-1], flags, dir_fd=folder)
    finally:
        os.close(folder)


# Open files the runner needs beside its outputs: connections, the transfer's threads.
_SPARE_OPEN_FILES = 256


def _room_for_open_files(outputs: int) -> None:
    """Raise the soft limit on open files (often 1024 in a container) toward the hard one
    where it is too low to hold every output open at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = outputs + _SPARE_OPEN_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))


def upload_outputs(
    client: Any,
    files: Sequence[tuple[str, Path]],
    bucket: str,
    prefix: str,
    concurrency: int = 10,
    *,
    check: Callable[[Mapping[str, int]], None] | None = None,
    algorithm_gone: bool = False,
    max_bytes: int | None = None,
) -> list[ResultOutput]:
    """Upload the scanned files (opened without following links) under ``prefix``.

    Each file is opened once, following no link from the output root, and handed to the
    transfer manager as ``/proc/self/fd/N``: reopening that path reaches the same inode even
    if the name was swapped for a link after the scan, and parts are still read lazily from
    disk. On one machine a file is copied to the endpoint's store instead
    (``batch_runner.local_files``), or moved there when ``algorithm_gone`` (no process of the
    algorithm is left to change it): its name under the output root is then gone.

    ``check`` (the early output checks) runs once every file is open and before any is
    handed over, given the open files by relative path: the file checked is the file
    stored, whatever the names reach by then.

    Each file is stored as long as it was when opened (its ``size``), and they may be
    ``max_bytes`` in all: a process of the algorithm still running may grow them after the
    scan, a sparse terabyte in an instant.
    """
    fds: list[int] = []
    outputs: list[ResultOutput] = []
    _room_for_open_files(len(files))
    try:
        for relative, path in files:
            try:
                fd = _open_output(relative, path)
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE):
                    raise StagingError(
                        f"The {len(files)} output files could not all be held open at once"
                    ) from error
                raise StagingError(f"Output '{relative}' could not be read") from error
            fds.append(fd)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StagingError(f"Output '{relative}' is not a regular file")
            outputs.append(
                ResultOutput(
                    relative_path=relative,
                    bucket_name=bucket,
                    bucket_key=f"{prefix}{relative}",
                    size=info.st_size,
                )
            )
        total = sum(o.size or 0 for o in outputs)
        if max_bytes is not None and total > max_bytes:
            raise StagingError(f"The outputs are larger than the limit of {max_bytes} bytes")
        if check is not None:
            check({relative: fd for fd, (relative, _path) in zip(fds, files, strict=True)})
        uploads = [
            (fd, o)
            for fd, (_relative, path), o in zip(fds, files, outputs, strict=True)
            # One machine: handed to the endpoint as a file where it takes one.
            if not local_files.put_local(
                client,
                fd,
                o.bucket_name,
                o.bucket_key,
                move_from=str(path) if algorithm_gone else None,
                size=o.size,
            )
        ]
        upload_all(
            client,
            (
                Upload(f"/proc/self/fd/{fd}", o.bucket_name, o.bucket_key, o.size)
                for fd, o in uploads
            ),
            concurrency=concurrency,
        )
    except OSError as error:
        raise StagingError("An output file could not be read") from error
    finally:
        for fd in fds:
            os.close(fd)
    return outputs
