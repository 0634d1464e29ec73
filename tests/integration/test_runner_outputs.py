"""What an algorithm leaves in its output folder, as the runner scans, checks and stores it.

The algorithm is untrusted, and its processes may still run while the runner reads its
outputs (an invoke-mode server, an unsandboxed command's leftovers): whatever it puts there
or changes meanwhile, the runner stores only files of the output folder, never hangs, and
fails the job with a reason the user can act on.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_runner import checks, sandbox
from batch_runner.config import Limits
from batch_runner.staging import StagingError, scan_outputs, upload_outputs
from tests.integration.conftest import RunnerJob, RunnerS3

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


def _inline(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _failed_and_stored_nothing(runner_job: RunnerJob, code: str, **overrides: Any) -> str | None:
    result, _ = runner_job.run(_inline(code), **overrides)
    assert result.return_code == 0, result.user_process_last_stderr_lines
    assert result.outputs == []
    assert runner_job.output_keys() == [".sagemaker_shim/inference_result.json"]
    return result.user_safe_error_message


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b"bad\xff.txt", "The output name 'bad\\xff.txt' is not valid UTF-8"),
        (b"two\nlines.txt", "The output name 'two\\nlines.txt' holds a control character"),
        (b"tab\t.txt", "The output name 'tab\\t.txt' holds a control character"),
    ],
)
def test_an_output_name_no_key_can_hold_fails_the_job(
    runner_job: RunnerJob, name: bytes, message: str
) -> None:
    code = f"""
    import os
    with open(os.environb[b"OUTPUT_DIR"] + b"/" + {name!r}, "wb") as handle:
        handle.write(b"x")
    """
    assert _failed_and_stored_nothing(runner_job, code) == message


def test_an_output_name_longer_than_a_key_fails_the_job(runner_job: RunnerJob) -> None:
    # An S3 key is at most 1024 bytes, the output prefix included; S3 would refuse the upload.
    code = """
    import os
    folder = os.path.join(os.environ["OUTPUT_DIR"], *["d" * 200] * 5)
    os.makedirs(folder)
    open(os.path.join(folder, "out.txt"), "w").write("x")
    """
    message = _failed_and_stored_nothing(runner_job, code)
    assert message is not None
    assert message.startswith("The output name 'dddd")
    assert message.endswith(f"is too long: at most {1024 - len(runner_job.prefix)} bytes")


# Folders 3000 deep in the output folder: deeper than a path may be (PATH_MAX) and than
# Python recurses.
DEEP_TREE = """
import os
os.chdir(os.environ["OUTPUT_DIR"])
for _ in range(3000):
    os.mkdir("d")
    os.chdir("d")
"""


@contextlib.contextmanager
def _deep_tree_removed(runner_job: RunnerJob) -> Iterator[None]:
    try:
        yield
    finally:
        # Python's shutil.rmtree recurses too (before 3.13): rm takes any depth.
        subprocess.run(["rm", "-rf", str(runner_job.output_root)], check=True)


def test_a_deep_output_tree_fails_the_job_in_bounded_time(runner_job: RunnerJob) -> None:
    code = DEEP_TREE + 'open("out.txt", "w").write("x")\n'
    with _deep_tree_removed(runner_job):
        message = _failed_and_stored_nothing(runner_job, code)
    assert message is not None
    assert message.startswith("The output name 'd/d/d/")
    assert message.endswith(f"is too long: at most {1024 - len(runner_job.prefix)} bytes")


def test_the_next_job_in_the_same_roots_clears_a_deep_output_tree(runner_job: RunnerJob) -> None:
    # A warm runner (invoke mode) or any runner given the same roots again empties them
    # first: whatever the last algorithm left there must not fail every later job.
    with _deep_tree_removed(runner_job):
        runner_job.run(_inline(DEEP_TREE))
        write = """
        import os
        open(os.environ["OUTPUT_DIR"] + "/out.txt", "w").write("x")
        """
        result, _ = runner_job.run(_inline(write))

    assert result.user_safe_error_message is None
    assert [o.relative_path for o in result.outputs] == ["out.txt"]


@pytest.mark.in_process  # a Limits of its own: no runner subprocess takes one
def test_more_output_files_than_the_limit_fail_the_job_before_any_is_stored(
    runner_job: RunnerJob,
) -> None:
    code = """
    import os
    os.makedirs(os.environ["OUTPUT_DIR"] + "/many")
    for number in range(40):
        open(f"{os.environ['OUTPUT_DIR']}/many/{number}", "w").close()
    """
    limits = Limits(max_output_files=30, kill_grace_seconds=1.0)
    message = _failed_and_stored_nothing(runner_job, code, limits=limits)

    assert message == "The algorithm left more than 30 files and folders in its output folder"


@pytest.mark.in_process  # a Limits of its own: no runner subprocess takes one
def test_outputs_larger_than_the_limit_fail_the_job_before_any_is_stored(
    runner_job: RunnerJob,
) -> None:
    # Sparse: its size is what an upload would send, not what it takes on disk.
    code = """
    import os
    with open(os.environ["OUTPUT_DIR"] + "/big.bin", "wb") as handle:
        handle.truncate(3 * 1024 * 1024)
    open(os.environ["OUTPUT_DIR"] + "/small.txt", "w").write("x")
    """
    limits = Limits(max_output_bytes=2 * 1024 * 1024, kill_grace_seconds=1.0)
    message = _failed_and_stored_nothing(runner_job, code, limits=limits)

    assert message == "The outputs are larger than the limit of 2097152 bytes"


def test_a_sparse_terabyte_is_refused_by_the_default_limit_at_once(tmp_path: Path) -> None:
    with open(tmp_path / "huge.bin", "wb") as handle:
        handle.truncate(1024**4)
    limits = Limits()

    scan = scan_outputs(
        tmp_path, max_files=limits.max_output_files, max_bytes=limits.max_output_bytes
    )

    assert scan.errors == [
        f"The outputs are larger than the limit of {limits.max_output_bytes} bytes"
    ]


def test_a_file_count_bomb_is_refused_in_bounded_time(tmp_path: Path) -> None:
    names = 30_000
    for number in range(names):
        (tmp_path / str(number)).touch()
    limits = Limits()
    assert limits.max_output_files < names

    scan = scan_outputs(
        tmp_path, max_files=limits.max_output_files, max_bytes=limits.max_output_bytes
    )

    assert scan.errors == [
        f"The algorithm left more than {limits.max_output_files} files and folders in its "
        "output folder"
    ]


def test_outputs_beyond_the_open_files_limit_are_stored(s3: RunnerS3, tmp_path: Path) -> None:
    # Every output is held open until all are stored; a container's soft limit is often 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files is {hard} here")
    output = tmp_path / "output"
    output.mkdir()
    for number in range(1200):
        (output / f"{number:04}").write_bytes(b"x")
    scan = scan_outputs(output)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        stored = upload_outputs(s3.client, scan.files, s3.bucket, PREFIX)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    assert len(stored) == 1200
    assert len(_keys(s3)) == 1000  # one page of the listing


@pytest.mark.in_process
def test_the_early_checks_read_the_files_stored_not_what_their_names_reach_later(
    runner_job: RunnerJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process of the algorithm still running (an invoke-mode server) swaps a folder for a
    # link once the outputs are open: the checks must judge the stored file, and never put
    # what the link reaches (root's file, read by the root runner) into the job's messages.
    elsewhere = runner_job.tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.json").write_text('{"token": "root-only"}')
    original = checks.check_outputs

    def swapped_first(*args: Any, **kwargs: Any) -> dict[str, str]:
        os.rename(runner_job.output_root / "d", runner_job.output_root / "old")
        os.symlink(elsewhere, runner_job.output_root / "d")
        return original(*args, **kwargs)

    monkeypatch.setattr(checks, "check_outputs", swapped_first)
    runner_job.outputs = [
        {
            "slug": "x",
            "kind": "anything",
            "relative_path": "d/x.json",
            "schemas": [{"type": "array"}],
        }
    ]
    code = """
    import os
    os.mkdir(os.environ["OUTPUT_DIR"] + "/d")
    open(os.environ["OUTPUT_DIR"] + "/d/x.json", "w").write("[1]")
    """
    result, _ = runner_job.run(_inline(code))

    assert "root-only" not in result.model_dump_json()
    assert result.output_errors == {}
    assert result.user_safe_error_message is None
    assert runner_job.read_output("d/x.json") == b"[1]"


def test_an_output_grown_after_it_was_opened_is_stored_as_it_was_measured(
    s3: RunnerS3, tmp_path: Path
) -> None:
    # A live process of the algorithm (an invoke-mode server) may grow a file once the
    # limits were checked: a sparse terabyte would then be uploaded byte by byte.
    output = tmp_path / "output"
    output.mkdir()
    (output / "out.bin").write_bytes(b"x")
    scan = scan_outputs(output, max_bytes=1024)

    def grow(_files: object) -> None:
        os.truncate(output / "out.bin", 32 * 1024 * 1024)

    stored = upload_outputs(s3.client, scan.files, s3.bucket, PREFIX, check=grow)

    assert [o.size for o in stored] == [1]
    head = s3.client.head_object(Bucket=s3.bucket, Key=PREFIX + "out.bin")
    assert head["ContentLength"] == 1


def test_outputs_grown_past_the_limit_after_the_scan_are_refused(
    s3: RunnerS3, tmp_path: Path
) -> None:
    output = tmp_path / "output"
    output.mkdir()
    (output / "out.bin").write_bytes(b"x")
    scan = scan_outputs(output, max_bytes=1024)
    os.truncate(output / "out.bin", 1024**4)

    with pytest.raises(StagingError) as raised:
        upload_outputs(s3.client, scan.files, s3.bucket, PREFIX, max_bytes=1024)

    assert str(raised.value) == "The outputs are larger than the limit of 1024 bytes"
    assert _keys(s3) == []


@pytest.mark.skipif(
    not sandbox.probe().available, reason=f"no sandbox here: {sandbox.probe().reason}"
)
def test_no_process_of_a_sandboxed_algorithm_outlives_it_to_change_its_outputs(
    runner_job: RunnerJob,
) -> None:
    # A daemon (a new session, its parent gone) is still in the sandbox's pid namespace,
    # which the kernel empties when bwrap's init exits: before the outputs are collected.
    code = """
    import os, time
    out = os.environ["OUTPUT_DIR"]
    open(out + "/main.txt", "w").write("main")
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for _ in range(30):
                time.sleep(0.1)
                open(out + "/late.txt", "a").write("late")
                open(out + "/main.txt", "w").write("changed")
            os._exit(0)
        os._exit(0)
    """
    result, _ = runner_job.run(_inline(code))
    time.sleep(1)

    assert [o.relative_path for o in result.outputs] == ["main.txt"]
    assert runner_job.read_output("main.txt") == b"main"
    assert sorted(os.listdir(runner_job.output_root)) == ["main.txt"]
    assert (runner_job.output_root / "main.txt").read_text() == "main"
