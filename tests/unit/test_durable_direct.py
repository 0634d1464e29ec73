"""Upload parts are written around the page cache (O_DIRECT) where the file system allows it,
hashed and written by a thread of their own while the next bytes arrive: whatever the sizes of
the reads and of the whole, the stored file holds exactly the bytes, the digest is theirs,
and a body cut short or a failed write leaves nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import io
import mmap
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gantry.local import direct
from gantry.local.direct import ALIGN, DIRECT_BUFFER
from gantry.local.durable import DurableStore
from gantry.local.httpserver import body_reader


def _reader(data: bytes, step: int) -> Callable[[memoryview], int]:
    """A readinto that gives at most ``step`` bytes a call, as a socket does."""
    source = io.BytesIO(data)

    def read(view: memoryview) -> int:
        return source.readinto(view[:step])

    return read


@pytest.mark.parametrize(
    ("total", "step"),
    [
        (0, 1),
        (13, 13),
        (ALIGN, 1000),
        (DIRECT_BUFFER, 1024 * 1024),
        (2 * DIRECT_BUFFER + ALIGN + 13, 1024 * 1024 + 7),
        (16 * 1024 * 1024, 16 * 1024),
    ],
)
def test_a_direct_write_stores_exactly_the_bytes(tmp_path: Path, total: int, step: int) -> None:
    store = DurableStore(tmp_path)
    data = os.urandom(total)
    digest = hashlib.md5()
    path, size = store.write_direct(_reader(data, step), digest)
    assert size == total
    assert path.read_bytes() == data
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()
    assert path.parent == store.objects
    assert [p.name for p in store.objects.iterdir()] == [path.name]  # nothing else left
    store.close()


def test_a_file_system_without_o_direct_gets_a_buffered_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = os.open

    def refuse_direct(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return opened(path, flags, mode)

    store = DurableStore(tmp_path)
    monkeypatch.setattr(direct.os, "open", refuse_direct)
    data = os.urandom(DIRECT_BUFFER + ALIGN + 5)
    path, size = store.write_direct(_reader(data, 65536))
    monkeypatch.undo()
    assert (size, path.read_bytes()) == (len(data), data)
    store.close()


def test_a_body_cut_short_leaves_no_file(tmp_path: Path) -> None:
    store = DurableStore(tmp_path)
    source = io.BytesIO(os.urandom(3 * DIRECT_BUFFER))

    def read(view: memoryview) -> int:
        if source.tell() >= 2 * DIRECT_BUFFER + 5:
            raise TimeoutError("the client went away")
        return source.readinto(view[:65536])

    with pytest.raises(TimeoutError):
        store.write_direct(read, hashlib.md5())
    assert list(store.objects.iterdir()) == []
    store.close()


def test_a_failed_write_is_the_callers_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DurableStore(tmp_path)
    written = os.write
    calls = []

    def disk_full(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return written(fd, data)

    monkeypatch.setattr(direct.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_direct(_reader(os.urandom(5 * DIRECT_BUFFER), 1024 * 1024))
    monkeypatch.undo()
    assert list(store.objects.iterdir()) == []
    # The next write gets buffers as before.
    data = os.urandom(DIRECT_BUFFER + 1)
    path, _size = store.write_direct(_reader(data, 1024 * 1024))
    assert path.read_bytes() == data
    store.close()


def test_a_body_is_read_no_further_than_its_length_from_any_wsgi_stream() -> None:
    data = os.urandom(100_000)
    read = body_reader({"wsgi.input": io.BytesIO(data + b"the next request")}, len(data))
    buffer = bytearray(len(data) + 100)
    got = 0
    with memoryview(buffer) as view:
        while count := read(view[got : got + 4096]):
            got += count
    assert bytes(buffer[:got]) == data


def _resident(path: Path) -> int:
    """Bytes of the file in the page cache (mincore)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    # A private mapping: ctypes takes the address of writable buffers only; nothing is written.
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as m:
        first = ctypes.c_char.from_buffer(m)
        try:
            address = ctypes.c_void_p(ctypes.addressof(first))
            if libc.mincore(address, ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del first
    return sum(page & 1 for page in vector) * mmap.PAGESIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and O_DIRECT: Linux")
def test_a_direct_write_is_read_back_into_the_page_cache_whole(tmp_path: Path) -> None:
    # The job's copy of an uploaded input reads it next: from the disk it took 2-3x longer.
    # The kernel reads back at most its read-ahead window per request (8 MiB here).
    store = DurableStore(tmp_path)
    path, size = store.write_direct(_reader(os.urandom(24 * 1024 * 1024 + 13), 1024 * 1024))
    deadline = time.monotonic() + 30  # the read-back is asynchronous
    while _resident(path) < size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _resident(path) >= size
    store.close()
