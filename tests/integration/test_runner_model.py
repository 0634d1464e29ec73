"""The algorithm's model: downloaded, checked and extracted safely to /opt/ml/model."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from pathlib import Path
from typing import Literal

import pytest

from batch_runner.model import ModelError, extract_model
from tests.runner_rootfs import WORKDIR, build_busybox_root, remove

READ_MODEL = [
    "/bin/sh",
    "-c",
    "cat /opt/ml/model/weights/w.json > /output/weights.json; "
    "ls -l /opt/ml/model/run.sh | cut -c1-10 > /output/mode.txt; "
    "touch /opt/ml/model/new 2>/dev/null && echo yes > /output/writable.txt || true",
]


def tarball(
    members: list[tarfile.TarInfo | tuple[str, bytes]], mode: Literal["w", "w:gz"] = "w:gz"
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, body = member
                info = tarfile.TarInfo(name)
                info.size = len(body)
                info.mode = 0o4755 if name.endswith(".sh") else 0o600
                tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


MODEL = tarball([("weights/w.json", b'{"w": 0.5}'), ("run.sh", b"#!/bin/sh\n")])


@pytest.fixture(scope="module")
def rootfs():
    root = build_busybox_root()
    yield root
    remove(root)


def with_model(runner_job, body: bytes, sha256: str | None = "auto") -> None:
    key = f"models/{runner_job.pk}/model.tar.gz"
    runner_job.s3.client.put_object(Bucket=runner_job.s3.bucket, Key=key, Body=body)
    digest = hashlib.sha256(body).hexdigest() if sha256 == "auto" else sha256
    original = runner_job.task

    def task():
        value = original()
        value["model"] = {"bucket_name": runner_job.s3.bucket, "bucket_key": key, "sha256": digest}
        return value

    runner_job.task = task


def run(runner_job, rootfs: Path, command: list[str]):
    return runner_job.run(
        command,
        rootfs=rootfs,
        image_env=("PATH=/bin",),
        algorithm_user="algorithm",
        workdir=Path(WORKDIR),
    )


def test_the_model_is_at_opt_ml_model_read_only(runner_job, rootfs):
    with_model(runner_job, MODEL)
    result, lines = run(runner_job, rootfs, READ_MODEL)
    assert result.return_code == 0, (result.user_safe_error_message, lines)
    assert runner_job.read_output("weights.json") == b'{"w": 0.5}'
    # The setuid bit is gone; the owner's execute bit stays.
    assert runner_job.read_output("mode.txt") == b"-rwxr-xr-x\n"
    assert "writable.txt" not in runner_job.output_keys()


def test_a_missing_model_fails_the_job_before_the_algorithm_starts(runner_job, rootfs):
    with_model(runner_job, MODEL)
    runner_job.s3.client.delete_object(
        Bucket=runner_job.s3.bucket, Key=f"models/{runner_job.pk}/model.tar.gz"
    )
    result, lines = run(runner_job, rootfs, READ_MODEL)
    assert result.return_code == 125
    assert result.user_safe_error_message == (
        "Could not set up model: The model could not be downloaded"
    )
    assert not any(line["log"].startswith("Running") for line in lines)


def test_a_model_that_is_not_the_registered_one_is_refused(runner_job, rootfs):
    with_model(runner_job, MODEL, sha256="0" * 64)
    result, _ = run(runner_job, rootfs, READ_MODEL)
    assert result.user_safe_error_message == (
        "Could not set up model: The model's checksum does not match the registered one"
    )


def test_a_broken_model_fails_with_a_reason(runner_job, rootfs):
    with_model(runner_job, b"not a tarball at all")
    result, _ = run(runner_job, rootfs, READ_MODEL)
    assert (
        result.user_safe_error_message == "Could not set up model: The model is not a tar archive"
    )


def _refused(tmp_path: Path, members: list, message: str) -> None:
    """A tarball of ``members`` is refused, with ``message``, as it is unpacked as a model."""
    archive = tmp_path / "model.tar"
    archive.write_bytes(tarball(members, mode="w"))
    target = tmp_path / "model"
    target.mkdir()
    with pytest.raises(ModelError, match=message):
        extract_model(archive, target)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../escape.txt", b"x")], "is outside the model directory"),
        ([("a/../../escape.txt", b"x")], "is outside the model directory"),
        ([("/etc/escape.txt", b"x")], "has an absolute path"),
        ([special("link", tarfile.SYMTYPE, "/etc/passwd")], "links outside the model directory"),
        ([special("link", tarfile.SYMTYPE, "../../etc")], "links outside the model directory"),
        (
            # 'a/up' is the model's folder, so 'a/up/../escape' is beside it, not 'a/escape'.
            [
                special("a", tarfile.DIRTYPE),
                special("a/up", tarfile.SYMTYPE, ".."),
                special("link", tarfile.SYMTYPE, "a/up/../escape.txt"),
            ],
            "links outside the model directory",
        ),
        (
            [special("dir", tarfile.SYMTYPE, "sub"), ("dir/file", b"x")],
            "is below a link",
        ),
        (
            [special("dir", tarfile.SYMTYPE, "sub"), special("dir", tarfile.DIRTYPE)],
            "replaces a link",
        ),
        ([special("hard", tarfile.LNKTYPE, "/etc/passwd")], "has an absolute path"),
        ([special("hard", tarfile.LNKTYPE, "missing")], "is a link to no file"),
        ([special("fifo", tarfile.FIFOTYPE)], "is not a file or folder"),
        ([special("null", tarfile.CHRTYPE)], "is not a file or folder"),
    ],
)
def test_hostile_model_members_are_refused(tmp_path, members, message):
    _refused(tmp_path, members, message)
    assert not (tmp_path / "escape.txt").exists()


def test_model_size_and_member_limits(tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tarball([(f"f{i}", b"x" * 1000) for i in range(5)]))
    with pytest.raises(ModelError, match="larger than the limit of 2500 bytes"):
        extract_model(archive, tmp_path / "a", max_bytes=2500)
    with pytest.raises(ModelError, match="more than 3 members"):
        extract_model(archive, tmp_path / "b", max_members=3)
    assert extract_model(archive, tmp_path / "c") == 5000
    # Links inside the model are fine.
    linked = tmp_path / "linked.tar"
    linked.write_bytes(
        tarball([("w/a.bin", b"abc"), special("w/b.bin", tarfile.SYMTYPE, "a.bin")], mode="w")
    )
    extract_model(linked, tmp_path / "d")
    assert (tmp_path / "d" / "w" / "b.bin").read_bytes() == b"abc"


def test_a_folder_member_over_a_link_changes_nothing_outside_the_model(tmp_path):
    # 'a/up' leads back to the model's folder, so 'esc' leads to a sibling of it, though
    # 'a/up/../victim' looks inside; a folder member named 'esc' must not chmod that sibling.
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    members = [
        special("a", tarfile.DIRTYPE),
        special("a/up", tarfile.SYMTYPE, ".."),
        special("esc", tarfile.SYMTYPE, "a/up/../victim"),
        special("esc", tarfile.DIRTYPE),
    ]
    _refused(tmp_path, members, r"'esc' (replaces a link|links outside)")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700


def test_a_hard_link_member_over_a_link_writes_nothing_outside_the_model(tmp_path):
    # As above, 'esc' leads beside the model folder; a hard link named 'esc' was copied
    # through it, overwriting whatever file it named with the model's own bytes.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    members = [
        special("a", tarfile.DIRTYPE),
        special("a/up", tarfile.SYMTYPE, ".."),
        special("esc", tarfile.SYMTYPE, "a/up/../victim.txt"),
        ("payload", b"owned\n"),
        special("esc", tarfile.LNKTYPE, "payload"),
    ]
    _refused(tmp_path, members, r"'esc' (replaces a link|links outside)")
    assert victim.read_text() == "precious\n"
