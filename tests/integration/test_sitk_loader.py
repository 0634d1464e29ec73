"""SimpleITK from the stack's S3 archive, in a Python where it is not installed (as on Lambda).

The archives are laid out as the CDK CLI zips the bundled asset (infra/packaging.py): the
``pip install --target`` tree at the root, files only. Each imaging run happens in a fresh
``python -I -S`` whose sys.path holds the repository and this venv's packages minus SimpleITK,
against a moto server, so download, extraction, sys.path and import are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import boto3
import pytest

from gantry.sitk_loader import (
    ARCHIVE_ENV,
    SimpleItkUnavailable,
    archive_dir,
    fetch_archive,
)
from tests.integration.conftest import REPO, RunnerS3

SITE_PACKAGES = Path(boto3.__file__).resolve().parents[1]

# Runs in the child: reports whether SimpleITK was importable before, then loads it.
CHILD = """
import importlib.util, json, sys
sys.path[:0] = json.loads(sys.argv[1])
report = {"before": importlib.util.find_spec("SimpleITK") is not None}
from gantry.sitk_loader import ensure_simpleitk
try:
    added = ensure_simpleitk()
    import SimpleITK
    report.update(added=str(added), file=SimpleITK.__file__,
                  version=getattr(SimpleITK, "Version", None) and str(SimpleITK.Version()))
    if len(sys.argv) > 2:
        from gantry.imaging import read_image_info
        info = read_image_info(sys.argv[2])
        report.update(pixel_type=info.pixel_type, shape=info.shape_without_color)
except Exception as error:
    report.update(error=type(error).__name__, message=str(error))
print(json.dumps(report))
"""


def zip_like_cdk(files: Iterable[tuple[Path, str]], archive: Path, level: int = 6) -> Path:
    """Files only, relative names, Unix modes: what the CDK CLI uploads for a bundled asset."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for path, name in files:
            zf.write(path, name)
    return archive


def tree(root: Path) -> list[tuple[Path, str]]:
    return [(p, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


@pytest.fixture(scope="module")
def without_simpleitk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This venv's site-packages as links, minus SimpleITK."""
    shadow = tmp_path_factory.mktemp("site-packages")
    for entry in SITE_PACKAGES.iterdir():
        name = entry.name.lower()
        if name.startswith(("simpleitk", "__editable__")) or name.endswith(".pth"):
            continue
        (shadow / entry.name).symlink_to(entry)
    return shadow


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    """A small package named SimpleITK, bundled like the real one."""
    root = tmp_path / "bundle"
    package = root / "SimpleITK"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def Version():\n    return 'stand-in'\n")
    (package / "_data.bin").write_bytes(os.urandom(256 * 1024))
    info = root / "simpleitk-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Name: SimpleITK\nVersion: 0.0\n")
    return zip_like_cdk(tree(root), tmp_path / "stand-in.zip")


def upload(s3: RunnerS3, archive: Path) -> str:
    key = f"assets/{uuid.uuid4().hex}.zip"
    s3.client.upload_file(str(archive), s3.bucket, key)
    return f"s3://{s3.bucket}/{key}"


def run_child(
    s3: RunnerS3,
    shadow: Path,
    cache: Path,
    uri: str | None,
    *image: Path,
) -> dict[str, Any]:
    env = {**s3.env(), "PATH": os.environ.get("PATH", ""), "TMPDIR": str(cache)}
    if uri is not None:
        env[ARCHIVE_ENV] = uri
    cache.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, json.dumps([str(REPO), str(shadow)])]
        + [str(p) for p in image],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_imports_simpleitk_from_the_archive(
    runner_s3: RunnerS3, without_simpleitk: Path, stand_in: Path, tmp_path: Path
) -> None:
    uri = upload(runner_s3, stand_in)
    cache = tmp_path / "tmp"
    report = run_child(runner_s3, without_simpleitk, cache, uri)
    assert report["before"] is False
    assert "error" not in report, report
    assert report["version"] == "stand-in"
    unpacked = archive_dir(uri, cache)
    assert report["added"] == str(unpacked)
    assert report["file"] == str(unpacked / "SimpleITK" / "__init__.py")
    # The archive and the staging directory are gone; only the unpacked tree stays.
    assert [p.name for p in cache.iterdir()] == [unpacked.name]
    assert sorted(p.name for p in unpacked.iterdir()) == ["SimpleITK", "simpleitk-0.0.dist-info"]


def test_a_restarted_runtime_reuses_the_unpacked_tree_without_s3(
    runner_s3: RunnerS3, without_simpleitk: Path, stand_in: Path, tmp_path: Path
) -> None:
    uri = upload(runner_s3, stand_in)
    cache = tmp_path / "tmp"
    first = run_child(runner_s3, without_simpleitk, cache, uri)
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    runner_s3.client.delete_object(Bucket=bucket, Key=key)
    second = run_child(runner_s3, without_simpleitk, cache, uri)
    assert "error" not in second, second
    assert second["file"] == first["file"]


def test_no_archive_uri_is_a_clear_error(
    runner_s3: RunnerS3, without_simpleitk: Path, tmp_path: Path
) -> None:
    report = run_child(runner_s3, without_simpleitk, tmp_path / "tmp", None)
    assert report["error"] == "SimpleItkUnavailable"
    assert ARCHIVE_ENV in report["message"]
    assert "not installed" in report["message"]


def test_a_failed_download_is_a_clear_error_and_leaves_nothing(
    runner_s3: RunnerS3, without_simpleitk: Path, tmp_path: Path
) -> None:
    uri = f"s3://{runner_s3.bucket}/assets/missing.zip"
    cache = tmp_path / "tmp"
    report = run_child(runner_s3, without_simpleitk, cache, uri)
    assert report["error"] == "SimpleItkUnavailable"
    assert f"could not be downloaded from {uri}" in report["message"]
    assert list(cache.iterdir()) == []


def test_an_archive_without_simpleitk_is_refused(
    runner_s3: RunnerS3, without_simpleitk: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.py"
    other.write_text("x = 1\n")
    uri = upload(runner_s3, zip_like_cdk([(other, "other.py")], tmp_path / "other.zip"))
    report = run_child(runner_s3, without_simpleitk, tmp_path / "tmp", uri)
    assert report["error"] == "SimpleItkUnavailable"
    assert "holds no SimpleITK package" in report["message"]


@pytest.mark.parametrize(
    ("name", "link"),
    [("../escaped.py", False), ("/abs/escaped.py", False), ("SimpleITK/link", True)],
)
def test_unsafe_members_are_refused_and_nothing_is_unpacked(
    runner_s3: RunnerS3, tmp_path: Path, name: str, link: bool
) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("SimpleITK/__init__.py", "")
        member = zipfile.ZipInfo(name)
        if link:
            member.external_attr = (0o120777) << 16
        zf.writestr(member, "/etc/passwd" if link else "print('escaped')\n")
    uri = upload(runner_s3, archive)
    cache = tmp_path / "cache"
    with pytest.raises(SimpleItkUnavailable, match="not a usable SimpleITK archive"):
        fetch_archive(uri, cache_root=cache, client=runner_s3.client)
    assert list(cache.iterdir()) == []
    assert not (tmp_path / "escaped.py").exists()


def test_concurrent_first_uses_end_with_one_complete_tree(
    runner_s3: RunnerS3, stand_in: Path, tmp_path: Path
) -> None:
    uri = upload(runner_s3, stand_in)
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            results.append(fetch_archive(uri, cache_root=cache, client=runner_s3.client))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(results) == {archive_dir(uri, cache)}
    assert [p.name for p in cache.iterdir()] == [archive_dir(uri, cache).name]
    data = archive_dir(uri, cache) / "SimpleITK" / "_data.bin"
    assert data.stat().st_size == 256 * 1024


@pytest.mark.slow
def test_the_real_simpleitk_reads_an_image_header_through_gantry_imaging(
    runner_s3: RunnerS3, without_simpleitk: Path, tmp_path: Path
) -> None:
    import SimpleITK as sitk

    image = sitk.Image([12, 10, 4], sitk.sitkInt16)
    path = tmp_path / "ct.mha"
    sitk.WriteImage(image, str(path), True)
    members = [
        (p, p.relative_to(SITE_PACKAGES).as_posix())
        for top in SITE_PACKAGES.iterdir()
        if top.name.lower().startswith("simpleitk")
        for p in sorted(top.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    # Level 1: the layout is what matters here, not the ratio; it keeps the test quick.
    uri = upload(runner_s3, zip_like_cdk(members, tmp_path / "simpleitk.zip", level=1))
    report = run_child(runner_s3, without_simpleitk, tmp_path / "tmp", uri, path)
    assert report["before"] is False
    assert "error" not in report, report
    assert report["file"].startswith(report["added"])
    assert report["version"] == str(sitk.Version())
    assert report["pixel_type"] == "16-bit signed integer"
    assert report["shape"] == [4, 10, 12]
