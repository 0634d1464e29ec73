"""Input staging: what was staged, zips (safe and hostile), path traversal."""

from __future__ import annotations

import io
import json
import stat
import sys
import zipfile

import pytest

from batch_runner.config import Limits
from batch_runner.staging import StagingError, stage_inputs
from gantry.contract import InvocationInput

NOOP = [sys.executable, "examples/algorithms/noop/main.py"]


def make_zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in members.items():
            archive.writestr(name, body)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def test_staging_is_logged_and_zips_are_extracted(runner_job):
    runner_job.add_input("threshold.json", b"0.25")
    archive = make_zip({"series/a.dcm": b"A" * 10, "series/b.dcm": b"B" * 20})
    runner_job.add_input("dicom/archive.zip", archive, decompress=True)
    result, lines = runner_job.run(NOOP)
    assert result.return_code == 0, lines
    root = runner_job.input_root
    assert (root / "dicom/series/a.dcm").read_bytes() == b"A" * 10
    # The archive itself is not staged, only its members.
    assert not (root / "dicom/archive.zip").exists()
    # The runner writes no file of its own under /input; what it staged is in its log.
    assert sorted(p.name for p in root.iterdir()) == ["dicom", "threshold.json"]
    staged = [
        json.loads(line["log"].removeprefix("Staged input "))
        for line in lines
        if line["log"].startswith("Staged input ")
    ]
    assert staged == [
        {
            "relative_path": "threshold.json",
            "path": "/input/threshold.json",
            "size": 4,
            "decompress": False,
        },
        {
            "relative_path": "dicom/archive.zip",
            "path": "/input/dicom/archive.zip",
            "size": len(archive),
            "decompress": True,
            "extracted_files": 2,
        },
    ]


def test_input_roots_are_emptied_first(runner_job):
    runner_job.input_root.mkdir()
    runner_job.output_root.mkdir()
    (runner_job.input_root / "stale.txt").write_text("old")
    (runner_job.output_root / "stale").mkdir()
    (runner_job.output_root / "stale" / "old.json").write_text("1")
    result, _ = runner_job.run(NOOP)
    assert result.outputs == []
    assert not (runner_job.input_root / "stale.txt").exists()


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ({"../evil.txt": b"x"}, None, "is outside the target directory"),
        ({"a/../../evil.txt": b"x"}, None, "is outside the target directory"),
        ({"/etc/evil.txt": b"x"}, None, "has an absolute path"),
        ({}, {"link": "/etc/passwd"}, "is a symbolic link"),
    ],
)
def test_hostile_zip_members_are_rejected(runner_job, members, links, message):
    runner_job.add_input("files/archive.zip", make_zip(members, links), decompress=True)
    result, _ = runner_job.run(NOOP)
    assert result.return_code == 125
    assert result.user_safe_error_message.startswith("Input 'files/archive.zip': Zip member")
    assert message in result.user_safe_error_message
    assert not (runner_job.tmp / "evil.txt").exists()
    assert runner_job.verified().return_code == 125


@pytest.mark.in_process
def test_zip_bomb_by_ratio_and_by_total_size(runner_job):
    runner_job.add_input(
        "files/bomb.zip", make_zip({"zeros": bytes(8 * 1024 * 1024)}), decompress=True
    )
    result, _ = runner_job.run(NOOP, limits=Limits(max_compression_ratio=100))
    assert result.user_safe_error_message == (
        "Input 'files/bomb.zip': Zip member 'zeros' has a suspicious compression ratio"
    )
    result, _ = runner_job.run(NOOP, limits=Limits(max_unzipped_bytes=1024 * 1024))
    assert result.user_safe_error_message == (
        f"Input 'files/bomb.zip': Zip file contents exceed the limit of {1024 * 1024} bytes"
    )


def test_not_a_zip(runner_job):
    runner_job.add_input("files/archive.zip", b"plain bytes", decompress=True)
    result, _ = runner_job.run(NOOP)
    assert result.user_safe_error_message == (
        "Input 'files/archive.zip': Input zip file could not be extracted"
    )


def test_missing_input_object(runner_job):
    item = runner_job.add_input("threshold.json", b"1")
    item["bucket_key"] = "io/does-not-exist"
    result, _ = runner_job.run(NOOP)
    assert result.return_code == 125
    assert result.user_safe_error_message == "An input file could not be downloaded"


def test_traversal_in_relative_path_never_reaches_the_disk(runner_s3, tmp_path):
    # The contract rejects it; the stager checks again for callers that bypass the model.
    with pytest.raises(ValueError):
        InvocationInput(relative_path="../escape.json", bucket_name="bucket", bucket_key="k")
    hostile = InvocationInput.model_construct(
        relative_path="../escape.json",
        bucket_name=runner_s3.bucket,
        bucket_key="k",
        decompress=False,
    )
    with pytest.raises(StagingError, match="outside the input directory"):
        stage_inputs(runner_s3.client, [hostile], tmp_path / "input", Limits())
    assert not (tmp_path / "escape.json").exists()


def test_duplicate_relative_paths(runner_job):
    runner_job.add_input("threshold.json", b"1")
    runner_job.add_input("threshold.json", b"2")
    result, _ = runner_job.run(NOOP)
    assert result.user_safe_error_message == "Input path 'threshold.json' is used more than once"
