"""An S3 object read as a seekable file: the bytes it returns and the requests it makes."""

from __future__ import annotations

import io
import random

import pytest

from gantry.s3file import S3File


@pytest.fixture
def stored(ctx):
    data = random.Random(3).randbytes(300_000)
    s3, bucket = ctx.clients.s3, ctx.settings.bucket_name
    s3.put_object(Bucket=bucket, Key="uploads/a/x.bin", Body=data)
    return s3, bucket, data


def test_reads_and_seeks_return_the_object_bytes(stored) -> None:
    s3, bucket, data = stored
    with S3File(s3, bucket, "uploads/a/x.bin", block=10_000) as handle:
        assert handle.size == len(data) and handle.seekable()
        assert handle.read(10) == data[:10]
        handle.seek(9995)
        assert handle.read(10) == data[9995:10005]  # across the end of the cached block
        handle.seek(-7, io.SEEK_END)
        assert handle.read(100) == data[-7:] and handle.read(1) == b""
        handle.seek(5000)
        assert handle.read(200_000) == data[5000:205_000]  # one GET, not cached
        assert handle.tell() == 205_000
        small_reads = handle.requests
        handle.seek(250_002)
        for index in range(50):
            start = 250_002 + 8 * index
            assert handle.read(8) == data[start : start + 8]  # tags read one by one
        assert handle.requests == small_reads + 1  # one cached block serves them
        assert handle.fetched < len(data)


def test_a_missing_object_and_an_overwrite_while_reading(stored) -> None:
    s3, bucket, _ = stored
    with pytest.raises(s3.exceptions.ClientError):
        S3File(s3, bucket, "uploads/a/gone.bin")
    with S3File(s3, bucket, "uploads/a/x.bin") as handle:
        handle.read(10)
        s3.put_object(Bucket=bucket, Key="uploads/a/x.bin", Body=b"another file" * 10_000)
        with pytest.raises(s3.exceptions.ClientError):
            handle.read(100_000)  # never a mix of two files' bytes


def test_forward_reads_grow_the_block_and_tags_read_again_are_kept(stored) -> None:
    """Small reads walking forward (a TIFF's tags, page after page) take few requests, and
    walking them again (tifffile does, to parse them) takes none."""
    s3, bucket, data = stored
    with S3File(s3, bucket, "uploads/a/x.bin", block=10_000, max_block=80_000) as handle:
        positions = range(0, len(data) - 200, 7000)
        for position in positions:
            handle.seek(position)
            assert handle.read(200) == data[position : position + 200]
        first_walk = handle.requests
        assert first_walk < len(positions) // 4
        for position in positions:
            handle.seek(position)
            assert handle.read(200) == data[position : position + 200]
        assert handle.requests == first_walk
        assert handle.fetched <= len(data) + 80_000
