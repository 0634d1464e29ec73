"""The algorithms tutorial with older gcapi releases, against the local platform's HTTPS API.

Each release runs in its own environment (``make gcapi-clients``; .ci/run makes them), since
they pin older httpx: 0.5.4, which the tutorial was written for (``run_external_job`` reads
the algorithm's top-level ``inputs`` and sends images through ``cases/upload-sessions/`` with
``uploads``), and 0.12.0, the last release before gcapi's pydantic models. The tutorial's code
runs as written (tests/e2e/gcapi_tutorial_script.py) on algorithms, interfaces and an archive
named as in the tutorial.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import EXAMPLES, JOB_TIMEOUT, ROOT, Platform, checked, make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RELEASES = ("0.5.4", "0.12.0")
SCRIPT = Path(__file__).with_name("gcapi_tutorial_script.py")
IMAGE_SOCKETS = [
    "Generic Medical Image",
    "Pulmonary Lobes",
    "Pulmonary Lobes Screenshot",
    "Fixed Image",
    "Moving Image",
    "Fixed Mask",
    "Moving Mask",
    "Registered Moving Image",
]
# title -> (inputs, outputs, command arguments)
ALGORITHMS = {
    "Pulmonary Lobe Segmentation": (["generic-medical-image"], ["pulmonary-lobes"], ["lobes"]),
    "Deep Learning-Based CT Lung Registration": (
        ["fixed-image", "moving-image", "fixed-mask", "moving-mask"],
        ["registered-moving-image"],
        ["register"],
    ),
    "Pulmonary Lobe Segmentation for COVID-19 CT Scans": (
        ["ct-image"],
        ["pulmonary-lobes", "pulmonary-lobes-screenshot"],
        ["lobes", "--screenshot"],
    ),
}


def python_of(release: str) -> Path:
    return ROOT / f".venv-gcapi-{release}" / "bin" / "python"


@pytest.fixture(scope="module")
def tutorial_platform(platform: Platform) -> Platform:
    http = platform.http
    for title in IMAGE_SOCKETS:
        slug = title.lower().replace(" ", "-")
        checked(
            http.post(
                "components/interfaces/",
                json={"title": title, "kind": "Image", "relative_path": f"images/{slug}"},
            )
        )
    for title, (inputs, outputs, args) in ALGORITHMS.items():
        algorithm = checked(
            http.post(
                "algorithms/",
                json={
                    "title": title,
                    "interfaces": [{"inputs": inputs, "outputs": outputs}],
                    "time_limit": 300,
                },
            )
        )
        checked(
            http.post(
                "algorithms/images/",
                json={
                    "algorithm": algorithm["api_url"],
                    "image": "local",
                    "command": [sys.executable, "main.py", *args],
                    "workdir": str(EXAMPLES / "lungs"),
                },
            )
        )
        platform.algorithms[title] = algorithm
    # The tutorial's archive: two CT scans added as cases.
    archive = checked(http.post("archives/", json={"title": "coronacases.org"}))
    client = platform.gcapi()
    from gcapi import SocketValueSpec

    scans = platform.workdir / "coronacases"
    scans.mkdir()
    items = [
        client.add_case_to_archive(
            archive_slug=archive["slug"],
            values=[SocketValueSpec(socket_slug="ct-image", files=[str(path)])],
            title=path.stem,
        )
        for path in (
            make_image(scans / "coronacase_001.mha", size=10, offset=3.0),
            make_image(scans / "coronacase_002.mha", size=11, offset=7.0),
        )
    ]
    deadline = time.monotonic() + JOB_TIMEOUT
    for item in items:
        while checked(http.get(f"archives/items/{item.pk}/"))["pending"]:
            assert time.monotonic() < deadline, f"archive item {item.pk} still pending"
            time.sleep(0.2)
    return platform


def voxels(path: Path) -> Any:
    import SimpleITK

    return SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(path)))


@pytest.mark.parametrize("release", RELEASES)
def test_tutorial_runs_as_written(
    tutorial_platform: Platform, tmp_path: Path, release: str
) -> None:
    python = python_of(release)
    if not python.exists():
        pytest.skip(f"gcapi {release} is not installed: run `make gcapi-clients`")
    platform = tutorial_platform
    (tmp_path / "io").mkdir()
    case01 = make_image(tmp_path / "io" / "case01.mha", offset=0.0)
    case02 = make_image(tmp_path / "io" / "case02.mha", size=14, offset=5.0)
    # The tutorial writes into these folders without creating them.
    (tmp_path / "output_scans").mkdir()
    (tmp_path / "output_screenshots").mkdir()
    env = {
        **os.environ,
        "GANTRY_API_URL": platform.api_url,
        "GANTRY_TOKEN": platform.token,
        "GANTRY_CA": platform.ca_file,
        "GANTRY_JOB_TIMEOUT": str(JOB_TIMEOUT),
    }
    run = subprocess.run(
        [str(python), str(SCRIPT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT * 4,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    version = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('gcapi'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == release

    # Section 1: one job per file, each input uploaded through an upload session.
    assert summary["algorithm_1_inputs"] == ["generic-medical-image"]
    assert summary["section_1_statuses"] == ["Succeeded", "Succeeded"]
    for ct in (case01, case02):
        lobes = voxels(ct.with_name(ct.name.replace(".mha", "_lobes.mha")))
        assert ((lobes > 0) == (voxels(ct) > -500)).all()
        assert set(lobes.ravel().tolist()) <= {0, 1, 2, 3, 4, 5}
        assert (voxels(ct.with_name(ct.name.replace(".mha", "_lungs.mha"))) == (lobes > 0)).all()

    # Section 2: four image inputs; the moving image resampled onto the fixed image's grid.
    assert summary["algorithm_2_inputs"] == [
        "fixed-image",
        "fixed-mask",
        "moving-image",
        "moving-mask",
    ]
    assert summary["section_2_status"] == "Succeeded"
    registered = voxels(tmp_path / "registered-moving-image.mha")
    assert registered.shape == voxels(case01).shape

    # Section 3: the archive's images, results mapped back by image uuid: MHD and TIFF.
    assert summary["section_3_statuses"] == ["Succeeded", "Succeeded"]
    mapping = summary["section_4_mapping"]
    assert sorted(mapping.values()) == ["coronacase_001.mha", "coronacase_002.mha"]
    assert summary["section_4_counter"] >= 2
    scans = platform.workdir / "coronacases"
    for name in mapping.values():
        lobes = voxels(tmp_path / "output_scans" / name)
        assert ((lobes > 0) == (voxels(scans / name) > -500)).all()
        # The tutorial names screenshots "<name>_<uuid>" with the suffix replaced by .tif.
        (screenshot,) = (tmp_path / "output_screenshots").glob(f"{Path(name).stem}*.tif")
        assert voxels(screenshot).shape == voxels(scans / name).shape[1:]
    assert all(f.endswith(".mha") for f in summary["output_image_files"])
    assert all(f.endswith(".tif") for f in summary["screenshot_files"])
    shutil.rmtree(tmp_path / "io")
