"""Upload parts are written around the page cache (O_DIRECT) where the file system allows it:
whatever the sizes of the chunks and of the whole, the stored file holds exactly the bytes."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gantry.local import durable
from gantry.local.durable import ALIGN, DIRECT_BUFFER, DurableStore


def _chunks(total: int, step: int) -> list[bytes]:
    data = os.urandom(total)
    return [data[i : i + step] for i in range(0, total, step)]


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
    chunks = _chunks(total, step)
    path, size = store.write_file(iter(chunks), direct=True)
    assert size == total
    assert path.read_bytes() == b"".join(chunks)
    assert path.parent == store.objects
    assert [p.name for p in store.objects.iterdir()] == [path.name]  # no temporary left
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
    monkeypatch.setattr(durable.os, "open", refuse_direct)
    chunks = _chunks(DIRECT_BUFFER + ALIGN + 5, 65536)
    path, size = store.write_file(iter(chunks), direct=True)
    monkeypatch.undo()
    assert (size, path.read_bytes()) == (sum(map(len, chunks)), b"".join(chunks))
    store.close()


def test_the_store_is_its_own_users_alone(tmp_path: Path) -> None:
    """Objects and records of every API user lie here: no other OS user may enter, also in a
    state directory an older version made with the umask's modes."""
    fresh = DurableStore(tmp_path / "fresh")
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    older = DurableStore(old)
    try:
        for store in (fresh, older):
            assert store.directory.stat().st_mode & 0o777 == 0o700
    finally:
        fresh.close()
        older.close()


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
    chunks = _chunks(24 * 1024 * 1024 + 13, 1024 * 1024)
    path, size = store.write_file(iter(chunks), direct=True)
    deadline = time.monotonic() + 30  # the read-back is asynchronous
    while _resident(path) < size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _resident(path) >= size
    store.close()
