"""Upload parts are written around the page cache (O_DIRECT) where the file system allows it:
whatever the sizes of the chunks and of the whole, the stored file holds exactly the bytes."""

from __future__ import annotations

import errno
import os
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
