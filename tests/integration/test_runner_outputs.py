"""What an algorithm leaves in its output folder, as the runner scans, checks and stores it.

The algorithm is untrusted, and its processes may still run while the runner reads its
outputs (an invoke-mode server, an unsandboxed command's leftovers): whatever it puts there
or changes meanwhile, the runner stores only files of the output folder, never hangs, and
fails the job with a reason the user can act on.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from batch_runner.staging import StagingError, scan_outputs, upload_outputs
from tests.integration.conftest import RunnerS3

PREFIX = "io/job/1/output/"


def _keys(s3: RunnerS3) -> list[str]:
    listing = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=PREFIX)
    return [item["Key"].removeprefix(PREFIX) for item in listing.get("Contents", [])]


@pytest.fixture
def s3(runner_s3: RunnerS3) -> RunnerS3:
    for key in _keys(runner_s3):
        runner_s3.client.delete_object(Bucket=runner_s3.bucket, Key=PREFIX + key)
    return runner_s3


def test_a_folder_swapped_for_a_link_after_the_scan_is_not_followed(
    s3: RunnerS3, tmp_path: Path
) -> None:
    # The runner (root) must not read, through the algorithm's link, what the algorithm
    # itself may not: another folder's file of the same name.
    output = tmp_path / "output"
    (output / "d").mkdir(parents=True)
    (output / "d" / "secret.txt").write_text("the algorithm's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("root's only")
    scan = scan_outputs(output)
    assert [relative for relative, _path in scan.files] == ["d/secret.txt"]
    os.rename(output / "d", output / "old")
    os.symlink(elsewhere, output / "d")

    with pytest.raises(StagingError) as raised:
        upload_outputs(s3.client, scan.files, s3.bucket, PREFIX)

    assert str(raised.value) == "Output 'd/secret.txt' could not be read"

    assert _keys(s3) == []


def test_a_file_swapped_for_a_fifo_after_the_scan_does_not_hang_the_runner(
    s3: RunnerS3, tmp_path: Path
) -> None:
    output = tmp_path / "output"
    output.mkdir()
    (output / "out.bin").write_bytes(b"x")
    scan = scan_outputs(output)
    (output / "out.bin").unlink()
    os.mkfifo(output / "out.bin")
    raised: list[BaseException] = []

    def upload() -> None:
        try:
            upload_outputs(s3.client, scan.files, s3.bucket, PREFIX)
        except BaseException as error:
            raised.append(error)

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    worker.join(timeout=10)
    hung = worker.is_alive()
    if hung:
        # Let the blocked open go on: a writer opening the FIFO ends its wait.
        os.close(os.open(output / "out.bin", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=10)
    assert not hung, "opening a FIFO output blocked the runner"
    assert [str(error) for error in raised] == ["Output 'out.bin' is not a regular file"]
    assert _keys(s3) == []
