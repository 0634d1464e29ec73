"""grand-challenge's algorithms tutorial against the local platform's HTTPS API: as written with
older gcapi releases, and its equivalents with the current one (0.16.1).

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

from tests.e2e.conftest import EXAMPLES, JOB_TIMEOUT, ROOT, TERMINAL, Platform, checked, make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.long]

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


def run_client(
    release: str,
    platform: Platform,
    args: list[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``args`` with gcapi ``release``'s Python against the platform (its URL, token and CA
    in GANTRY_API_URL, GANTRY_TOKEN, GANTRY_CA); its stdout. Skips when the release is not
    installed."""
    python = python_of(release)
    if not python.exists():
        pytest.skip(f"gcapi {release} is not installed: run `make gcapi-clients`")
    run = subprocess.run(
        [str(python), *args],
        cwd=cwd,
        env={
            **os.environ,
            "GANTRY_API_URL": platform.api_url,
            "GANTRY_TOKEN": platform.token,
            "GANTRY_CA": platform.ca_file,
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout


def last_json(stdout: str) -> Any:
    return json.loads(stdout.splitlines()[-1])


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
    platform = tutorial_platform
    (tmp_path / "io").mkdir()
    case01 = make_image(tmp_path / "io" / "case01.mha", offset=0.0)
    case02 = make_image(tmp_path / "io" / "case02.mha", size=14, offset=5.0)
    # The tutorial writes into these folders without creating them.
    (tmp_path / "output_scans").mkdir()
    (tmp_path / "output_screenshots").mkdir()
    run_client(
        release,
        platform,
        [str(SCRIPT)],
        cwd=tmp_path,
        env={"GANTRY_JOB_TIMEOUT": str(JOB_TIMEOUT)},
        timeout=JOB_TIMEOUT * 4,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    version = "from importlib.metadata import version; print(version('gcapi'))"
    assert run_client(release, platform, ["-c", version], timeout=60).strip() == release

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


def wait_until_ended(client: Any, pks: list[str]) -> list[Any]:
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        jobs = [client.algorithm_jobs.detail(pk) for pk in pks]
        if all(job.status in TERMINAL for job in jobs):
            return jobs
        assert time.monotonic() < deadline, [job.status for job in jobs]
        time.sleep(0.2)


def download(client: Any, url: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(client(url=url, follow_redirects=True).content)
    return path


def test_tutorial_equivalents_with_current_gcapi(
    tutorial_platform: Platform, tmp_path: Path
) -> None:
    """The same three sections with gcapi 0.16.1: ``start_algorithm_job`` with
    ``SocketValueSpec``s instead of ``run_external_job``, models instead of dicts."""
    from gcapi import SocketValueSpec

    platform = tutorial_platform
    client = platform.gcapi()
    case01 = make_image(tmp_path / "case01.mha", offset=0.0)
    case02 = make_image(tmp_path / "case02.mha", size=14, offset=5.0)

    # Section 1: upload and run, then download each image output.
    algorithm_1 = client.algorithms.detail(slug="pulmonary-lobe-segmentation")
    assert [s.slug for s in algorithm_1.interfaces[0].inputs] == ["generic-medical-image"]
    jobs = [
        client.start_algorithm_job(
            algorithm_slug="pulmonary-lobe-segmentation",
            inputs=[SocketValueSpec(socket_slug="generic-medical-image", files=[str(path)])],
        )
        for path in (case01, case02)
    ]
    jobs = wait_until_ended(client, [job.pk for job in jobs])
    assert [job.status for job in jobs] == ["Succeeded", "Succeeded"]
    lungs = []
    for job, ct in zip(jobs, (case01, case02), strict=True):
        (output,) = [o for o in job.outputs if o.image is not None]
        (file,) = client(url=output.image)["files"]
        lobes = download(client, file["file"], ct.with_name(ct.stem + "_lobes.mha"))
        assert ((voxels(lobes) > 0) == (voxels(ct) > -500)).all()
        # Section 2's preparation: the lobes binarised into a lung mask.
        import SimpleITK

        mask = SimpleITK.ReadImage(str(lobes)) > 0
        lungs.append(ct.with_name(ct.stem + "_lungs.mha"))
        SimpleITK.WriteImage(SimpleITK.Cast(mask, SimpleITK.sitkUInt8), str(lungs[-1]), True)

    # Section 2: four image inputs.
    registration = client.start_algorithm_job(
        algorithm_slug="deep-learning-based-ct-lung-registration",
        inputs=[
            SocketValueSpec(socket_slug="fixed-image", files=[str(case01)]),
            SocketValueSpec(socket_slug="moving-image", files=[str(case02)]),
            SocketValueSpec(socket_slug="fixed-mask", files=[str(lungs[0])]),
            SocketValueSpec(socket_slug="moving-mask", files=[str(lungs[1])]),
        ],
    )
    (registration,) = wait_until_ended(client, [registration.pk])
    assert registration.status == "Succeeded"
    (output,) = registration.outputs
    assert output.interface.slug == "registered-moving-image"
    (file,) = client(url=output.image)["files"]
    registered = download(client, file["file"], tmp_path / "registered-moving-image.mha")
    assert voxels(registered).shape == voxels(case01).shape

    # Section 3: the archive's images by name, a job on each, results mapped back by image
    # uuid, MHD and TIFF outputs downloaded.
    archives = client(url=f"{platform.api_url}archives/")["results"]
    archive = next(a for a in archives if a["name"] == "coronacases.org")
    slug = "pulmonary-lobe-segmentation-for-covid-19-ct-scans"
    names, response = {}, client(path="cases/images/", params={"archive": archive["id"]})
    while True:
        names.update({image["pk"]: image["name"] for image in response["results"]})
        if response["next"] is None:
            break
        response = client(url=response["next"])
    assert sorted(names.values()) == ["coronacase_001.mha", "coronacase_002.mha"]
    started = [
        client.start_algorithm_job(
            algorithm_slug=slug,
            inputs=[
                SocketValueSpec(
                    socket_slug="ct-image",
                    existing_image_api_url=f"{platform.api_url}cases/images/{pk}/",
                )
            ],
        )
        for pk in names
    ]
    ended = wait_until_ended(client, [job.pk for job in started])
    assert [job.status for job in ended] == ["Succeeded", "Succeeded"]
    algorithm_pk = client(path="algorithms/", params={"slug": slug})["results"][0]["pk"]
    scans = platform.workdir / "coronacases"
    for image_uuid, name in names.items():
        params = {"algorithm_image__algorithm": algorithm_pk, "input_image": image_uuid}
        results = list(client.algorithm_jobs.iterate_all(params))
        assert started[list(names).index(image_uuid)].pk in {r.pk for r in results}
        mine = next(r for r in results if r.pk in {job.pk for job in started})
        by_slug = {o.interface.slug: o for o in mine.outputs}
        files = {
            slug: {f["image_type"]: f["file"] for f in client(url=o.image)["files"]}
            for slug, o in by_slug.items()
        }
        mhd = download(client, files["pulmonary-lobes"]["MHD"], tmp_path / "scans" / name)
        assert ((voxels(mhd) > 0) == (voxels(scans / name) > -500)).all()
        tif = download(
            client,
            files["pulmonary-lobes-screenshot"]["TIFF"],
            tmp_path / "screenshots" / f"{Path(name).stem}_{image_uuid}.tif",
        )
        assert voxels(tif).shape == voxels(scans / name).shape[1:]


UPLOAD_CASES = """
import json, os, sys, time
from pathlib import Path
import gcapi

client = gcapi.Client(
    token=os.environ["GANTRY_TOKEN"], base_url=os.environ["GANTRY_API_URL"],
    verify=os.environ["GANTRY_CA"],
)
session = client.upload_cases(files=[Path(p) for p in sys.argv[2:]], archive=sys.argv[1])
while session["status"] not in ("Succeeded", "Failed"):
    time.sleep(0.2)
    session = client.raw_image_upload_sessions.detail(session["pk"])
print(json.dumps(session))
"""


@pytest.mark.parametrize("release", RELEASES)
def test_upload_cases_adds_an_item_per_image_to_an_archive(
    tutorial_platform: Platform, tmp_path: Path, release: str
) -> None:
    platform = tutorial_platform
    archive = checked(platform.http.post("archives/", json={"title": f"Uploads {release}"}))
    files = [make_image(tmp_path / f"scan{n}.mha", size=8 + n) for n in range(2)]
    stdout = run_client(
        release,
        platform,
        ["-c", UPLOAD_CASES, archive["slug"], *map(str, files)],
        timeout=JOB_TIMEOUT,
    )
    session = last_json(stdout)
    assert session["status"] == "Succeeded", session["error_message"]
    items = checked(platform.http.get("archives/items/", params={"archive": archive["pk"]}))
    assert sorted(i["title"] for i in items["results"]) == ["scan0.mha", "scan1.mha"]
    # grand-challenge's default interface for cases added without one.
    slugs = {v["interface"]["slug"] for i in items["results"] for v in i["values"]}
    assert slugs == {"generic-medical-image"}
    assert sorted(v["image"] for i in items["results"] for v in i["values"]) == sorted(
        session["image_set"]
    )


RUN_JOBS = """
import json, os, sys, time
from pathlib import Path
import gcapi
import httpx

client = gcapi.Client(
    token=os.environ["GANTRY_TOKEN"], base_url=os.environ["GANTRY_API_URL"],
    verify=os.environ["GANTRY_CA"],
)


def ended(job):
    while job["status"] not in ("Succeeded", "Failed", "Cancelled"):
        time.sleep(0.2)
        job = client.algorithm_jobs.detail(job["pk"])
    return job


sleep_slug, multi_slug, image, labels = sys.argv[1:]
value_job = client.run_external_job(algorithm=sleep_slug, inputs={"seconds": 0.25})
result = {"value_job": ended(value_job)}
try:
    job = client.run_external_job(
        algorithm=multi_slug,
        inputs={"ct-image": [Path(image)], "threshold": 50.0, "labels": [Path(labels)]},
    )
    result["multi_job"] = ended(job)
except httpx.HTTPStatusError as error:
    result["multi_refused"] = [error.response.status_code, error.response.json()]
except TypeError as error:
    result["multi_client_error"] = str(error)
print(json.dumps(result))
"""


@pytest.mark.parametrize("release", RELEASES)
def test_run_external_job_with_values_images_and_files(
    tutorial_platform: Platform, tmp_path: Path, release: str
) -> None:
    platform = tutorial_platform
    image = make_image(tmp_path / "scan.mha", size=10, offset=100.0)
    labels = tmp_path / "labels.csv"
    labels.write_text("voxel_value,name\n0,air\n1,tissue\n")
    slugs = [platform.algorithms[name]["slug"] for name in ("sleep", "multi-input")]
    stdout = run_client(
        release,
        platform,
        ["-c", RUN_JOBS, *slugs, str(image), str(labels)],
        timeout=JOB_TIMEOUT * 2,
    )
    result = last_json(stdout)
    value_job = result["value_job"]
    assert value_job["status"] == "Succeeded", value_job["error_message"]
    assert [(o["interface"]["slug"], o["value"]) for o in value_job["outputs"]] == [("slept", 0.25)]
    if release == "0.5.4":
        # gcapi 0.5 puts a file input's path into the job's JSON: it fails in the client.
        assert "not JSON serializable" in result["multi_client_error"]
    else:
        # gcapi 0.12 uploads a file input as a user upload, the image through a session.
        multi_job = result["multi_job"]
        assert multi_job["status"] == "Succeeded", multi_job["error_message"]
        inputs = {v["interface"]["slug"]: v for v in multi_job["inputs"]}
        assert inputs["threshold"]["value"] == 50.0
        assert inputs["labels"]["file"] and inputs["ct-image"]["image"]
        assert {o["interface"]["slug"] for o in multi_job["outputs"]} == {
            "segmentation",
            "summary",
            "report",
        }


RUN_JOBS_WITH_MODELS = """
import json, os, sys, time
from pathlib import Path
import gcapi

client = gcapi.Client(
    token=os.environ["GANTRY_TOKEN"], base_url=os.environ["GANTRY_API_URL"],
    verify=os.environ["GANTRY_CA"],
)


def ended(job):
    while job.status not in ("Succeeded", "Failed", "Cancelled"):
        time.sleep(0.2)
        job = client.algorithm_jobs.detail(job.pk)
    return job


threshold_slug, sleep_slug, image = sys.argv[1:]
image_inputs = {"ct-image": [Path(image)]}
on_image = ended(client.run_external_job(algorithm=threshold_slug, inputs=image_inputs))
on_value = ended(client.run_external_job(algorithm=sleep_slug, inputs={"seconds": 0.25}))
print(json.dumps({
    "statuses": [on_image.status, on_value.status],
    "image_outputs": sorted(o.interface.slug for o in on_image.outputs),
    "value_outputs": [(o.interface.slug, o.value) for o in on_value.outputs],
}))
"""


def test_gcapi_0_13_runs_jobs_on_an_upload_and_a_value(
    tutorial_platform: Platform, tmp_path: Path
) -> None:
    """gcapi 0.13.4, the first release with pydantic models and a version check: the
    platform's lowest supported version lets it in, and its ``run_external_job`` sends images
    through an upload session."""
    platform = tutorial_platform
    image = make_image(tmp_path / "scan.mha")
    slugs = [platform.algorithms[name]["slug"] for name in ("threshold", "sleep")]
    stdout = run_client(
        "0.13.4",
        platform,
        ["-c", RUN_JOBS_WITH_MODELS, *slugs, str(image)],
        # 0.13's version check does not pass the client's ``verify`` on.
        env={"SSL_CERT_FILE": platform.ca_file},
        timeout=JOB_TIMEOUT * 2,
    )
    result = last_json(stdout)
    assert result["statuses"] == ["Succeeded", "Succeeded"]
    assert result["image_outputs"] == ["results", "segmentation"]
    assert result["value_outputs"] == [["slept", 0.25]]
