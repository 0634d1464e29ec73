"""Large bodies (upload parts) written to a new file around the page cache, and hashed, while
the next bytes arrive.

A buffered write copies every byte into the page cache, and the fsync that durability needs
then writes it out: for an upload that copy was the largest single cost of the request
(measured: 40% of the endpoint's CPU). O_DIRECT sends the bytes from an aligned buffer to the
device instead; the fsync still makes the file's size and blocks durable. The tail that is
not a whole block, and every write on a file system that refuses O_DIRECT (EINVAL: tmpfs on
older kernels, other alignments), are written buffered.

The request's thread only receives: it fills one aligned buffer straight from the socket
(``read`` is a ``readinto``) while a writer thread hashes the buffer filled before (the part's
MD5, which S3's ETag needs) and writes it. Done one after the other on one thread, receiving,
hashing and the device's write each waited for the others: 600 MiB uploaded took 1.7 s where
receiving alone took 0.95 s.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

# Filled, hashed and written a buffer at a time: O_DIRECT needs the memory aligned (an
# anonymous mmap is page-aligned) and the size a multiple of the device's block.
DIRECT_BUFFER = 4 * 1024 * 1024
ALIGN = 4096
# One being filled while the other is hashed and written.
BUFFERS = 2
# Buffers kept for the next writes (their pages stay mapped: no faults, no zeroing).
POOLED = 8
# Smaller than any block device's usual read-ahead window (128 KiB is the least common).
READ_BACK_WINDOW = 128 * 1024

Reader = Callable[[memoryview], int]


class Hasher(Protocol):
    def update(self, data: memoryview, /) -> None: ...


_pool: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()


def write_direct(path: Path, read: Reader, digest: Hasher | None = None) -> int:
    """Write what ``read`` gives (until it gives 0) to a new file at ``path`` with O_DIRECT,
    ``digest`` updated with every byte in order, and fsync it; its size."""
    # The mode of open(path, "wb"), as the other object files.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    direct = getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, flags | direct, 0o666) if direct else os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        direct = 0
        fd = os.open(path, flags, 0o666)
    try:
        size = _Writer(fd, direct=bool(direct), digest=digest).run(read)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _read_back(fd: int, start: int, size: int) -> None:
    """Bring bytes written around the page cache back into it by the device's DMA, not by the
    CPU, for the readers that come next (validation, the job's copy of its inputs): read
    from the disk instead, the job's copy took 2-3x longer. The kernel reads at most the
    device's read-ahead window (often 8 MiB) per WILLNEED, so it is asked a window at a time."""
    if not hasattr(os, "posix_fadvise"):
        return
    for offset in range(start, start + size, READ_BACK_WINDOW):
        count = min(READ_BACK_WINDOW, start + size - offset)
        os.posix_fadvise(fd, offset, count, os.POSIX_FADV_WILLNEED)


class _Writer:
    """Hashes and writes filled buffers, in order, on a thread of its own."""

    def __init__(self, fd: int, *, direct: bool, digest: Hasher | None) -> None:
        self.fd, self.direct, self.digest = fd, direct, digest
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self.full: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self.failed: BaseException | None = None
        self.size = 0  # written so far

    def run(self, read: Reader) -> int:
        buffers = [_take() for _ in range(BUFFERS)]
        for buffer in buffers:
            self.free.put(buffer)
        thread = threading.Thread(target=self._drain, name="gantry-direct-write", daemon=True)
        thread.start()
        try:
            self._fill(read)
        finally:
            self.full.put(None)
            thread.join()
            for buffer in buffers:
                _give_back(buffer)
        if self.failed is not None:
            raise self.failed
        return self.size  # every byte read was written

    def _fill(self, read: Reader) -> None:
        while self.failed is None:
            buffer = self.free.get()
            filled = 0
            with memoryview(buffer) as view:
                while filled < DIRECT_BUFFER:
                    count = read(view[filled:])
                    if not count:
                        break
                    filled += count
            if filled:
                self.full.put((buffer, filled))
            if filled < DIRECT_BUFFER:
                break

    def _drain(self) -> None:
        while (item := self.full.get()) is not None:
            buffer, count = item
            if self.failed is None:
                try:
                    with memoryview(buffer) as view:
                        self._write(view[:count])
                except BaseException as error:
                    self.failed = error
            self.free.put(buffer)

    def _write(self, data: memoryview) -> None:
        if self.digest is not None:
            self.digest.update(data)
        whole = len(data) - len(data) % ALIGN
        if whole:
            direct, start = self.direct, self.size
            self._write_all(data[:whole])
            if direct:  # read back here, while the next buffer is received
                with contextlib.suppress(OSError):  # only ever a hint
                    _read_back(self.fd, start, whole)
        if whole < len(data):  # the last bytes, not a whole block: only at the end
            if self.direct:
                _buffered(self.fd)
                self.direct = False
            self._write_all(data[whole:])

    def _write_all(self, data: memoryview) -> None:
        while data:
            try:
                written = os.write(self.fd, data)
            except OSError as error:
                if not (self.direct and error.errno == errno.EINVAL):
                    raise
                # The file system wants another alignment than ALIGN: written buffered.
                _buffered(self.fd)
                self.direct = False
                continue
            data = data[written:]
            self.size += written


def _take() -> mmap.mmap:
    try:
        return _pool.get_nowait()
    except queue.Empty:
        return mmap.mmap(-1, DIRECT_BUFFER)


def _give_back(buffer: mmap.mmap) -> None:
    if _pool.qsize() < POOLED:
        _pool.put(buffer)
        return
    # Still viewed from a traceback: unmapped once that is gone.
    with contextlib.suppress(BufferError):
        buffer.close()


def _buffered(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
