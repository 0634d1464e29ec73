"""The runner's file copies on one machine work where copy_file_range does not."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from batch_runner import local_files


def test_a_copy_across_file_systems_falls_back_to_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_args: Any) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    # Two segments of one object, as the endpoint keeps a completed multipart upload.
    segments = [os.urandom(3 * 1024 * 1024 + 17), os.urandom(1000)]
    target = os.open(tmp_path / "copy", os.O_WRONLY | os.O_CREAT)
    try:
        at = 0
        for n, body in enumerate(segments):
            (tmp_path / f"segment-{n}").write_bytes(body)
            source = os.open(tmp_path / f"segment-{n}", os.O_RDONLY)
            try:
                local_files._copy(source, target, len(body), at)
            finally:
                os.close(source)
            at += len(body)
    finally:
        os.close(target)
    assert (tmp_path / "copy").read_bytes() == b"".join(segments)


def test_without_the_local_backend_nothing_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(local_files.LOCAL_INCOMING_ENV, raising=False)
    (tmp_path / "out").write_bytes(b"x")
    source = os.open(tmp_path / "out", os.O_RDONLY)
    try:
        # No client call at all: on AWS the output is uploaded as ever.
        assert not local_files.put_local(None, source, "bucket", "key")
    finally:
        os.close(source)
