"""grand-challenge's "Using the API for algorithms" tutorial, run with the real gcapi client
(0.16.1) against the local platform's HTTPS API.

The tutorial was written for older gcapi: where its call no longer exists in 0.16.1, the
0.16.1 equivalent is used and the comment says so. The notable ones: ``run_external_job``
raises NotImplementedError (``start_algorithm_job`` with ``SocketValueSpec``s replaces it),
and the API objects are pydantic models (``job.pk``, not ``job["pk"]``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import JOB_TIMEOUT, TERMINAL, Platform, make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def wait_until_done(client: Any, pk: str, timeout: float = JOB_TIMEOUT) -> Any:
    """Poll ``algorithm_jobs.detail`` as the tutorial does, until the job has ended."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.algorithm_jobs.detail(pk)
        if job.status in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {pk} still {job.status!r}"
        time.sleep(0.2)


def read_image(path: Path) -> Any:
    import SimpleITK

    return SimpleITK.ReadImage(str(path))


def voxels(path: Path) -> Any:
    import SimpleITK

    return SimpleITK.GetArrayFromImage(read_image(path))


@pytest.fixture(scope="module")
def tutorial_jobs(platform: Platform) -> dict[str, Any]:
    """Section 1 of the tutorial: one job per input file, then their statuses."""
    from gcapi import SocketValueSpec

    client = platform.gcapi()
    slug = platform.algorithms["threshold"]["slug"]
    io_dir = platform.workdir / "io"
    io_dir.mkdir()
    files = [
        make_image(io_dir / "case01.mha", offset=0.0),
        make_image(io_dir / "case02.mha", size=14, offset=5.0),
    ]
    jobs = []
    for file in files:
        # Tutorial: client.run_external_job(algorithm=slug, inputs={"ct-image": [Path(file)]}).
        job = client.start_algorithm_job(
            algorithm_slug=slug, inputs=[SocketValueSpec(socket_slug="ct-image", file=file)]
        )
        jobs.append(job)
    jobs = [wait_until_done(client, job.pk) for job in jobs]
    return {"client": client, "files": files, "jobs": jobs, "slug": slug}


def test_client_sees_the_algorithm_and_what_it_expects(platform: Platform) -> None:
    client = platform.gcapi()
    slug = platform.algorithms["multi-input"]["slug"]
    algorithm = client.algorithms.detail(slug=slug)
    # Tutorial: algorithm["inputs"]; in 0.16.1 the inputs are per socket set (interfaces).
    (interface,) = algorithm.interfaces
    assert {s.slug for s in interface.inputs} == {"ct-image", "threshold", "labels"}
    assert {s.slug: s.super_kind for s in interface.outputs} == {
        "segmentation": "Image",
        "summary": "Value",
        "report": "File",
    }
    # The tutorial's raw lookup of the same algorithm by slug.
    found = client(path="algorithms/", params={"slug": slug})
    assert found["count"] == 1
    assert found["results"][0]["pk"] == algorithm.pk


def test_single_input_jobs_succeed_and_their_outputs_download(tutorial_jobs: dict) -> None:
    client, files, jobs = tutorial_jobs["client"], tutorial_jobs["files"], tutorial_jobs["jobs"]
    assert [job.status for job in jobs] == ["Succeeded", "Succeeded"]
    for job, input_fname in zip(jobs, files, strict=True):
        outputs = {output.interface.slug: output for output in job.outputs}
        assert set(outputs) == {"segmentation", "results"}
        # Section 2, as written: image details, then each file through its redirect.
        image_details = client(url=outputs["segmentation"].image)
        (file,) = image_details["files"]
        assert file["image_type"] == "MHD"
        assert file["file"].endswith(".mha")
        output_file = input_fname.with_name(input_fname.name.replace(".mha", "_lobes.mha"))
        output_file.write_bytes(client(url=file["file"], follow_redirects=True).content)

        segmentation, ct = read_image(output_file), read_image(input_fname)
        # The mask keeps the input's geometry and marks exactly the voxels above 0 HU.
        assert segmentation.GetSize() == ct.GetSize()
        assert segmentation.GetSpacing() == pytest.approx(ct.GetSpacing())
        assert segmentation.GetOrigin() == pytest.approx(ct.GetOrigin())
        assert (voxels(output_file) == (voxels(input_fname) > 0)).all()
        assert outputs["results"].value == {
            "threshold_hu": 0,
            "foreground_voxels": int((voxels(input_fname) > 0).sum()),
        }
        # gcapi's own download helper fetches the same bytes.
        (downloaded,) = client.images.download(
            url=outputs["segmentation"].image, output_directory=input_fname.parent / job.pk
        )
        assert downloaded.read_bytes() == output_file.read_bytes()


def test_jobs_are_found_by_algorithm_and_by_input_image(tutorial_jobs: dict) -> None:
    client, jobs = tutorial_jobs["client"], tutorial_jobs["jobs"]
    # Section 4: the algorithm's pk from a raw lookup by slug.
    algorithm = client(path="algorithms/", params={"slug": tutorial_jobs["slug"]})["results"][0]
    by_algorithm = client.algorithm_jobs.iterate_all(
        params={"algorithm_image__algorithm": algorithm["pk"]}
    )
    assert {job.pk for job in by_algorithm} == {job.pk for job in jobs}

    # The images a user may see, paged through by following "next" as the tutorial does.
    image_uuids = []
    response = client(path="cases/images/", params={"limit": 1})
    while True:
        image_uuids += [image["pk"] for image in response["results"]]
        if response["next"] is None:
            break
        response = client(url=response["next"])
    for job in jobs:
        (input_value,) = job.inputs
        input_pk = client.images.detail(api_url=input_value.image).pk
        assert input_pk in image_uuids
        # Tutorial: client.algorithm_jobs.iterate_all(params) with both filters.
        params = {"algorithm_image__algorithm": algorithm["pk"], "input_image": input_pk}
        assert [found.pk for found in client.algorithm_jobs.iterate_all(params)] == [job.pk]


def test_job_with_an_image_a_value_and_a_file(platform: Platform) -> None:
    from gcapi import SocketValueSpec

    client = platform.gcapi()
    work = platform.workdir / "multi"
    work.mkdir()
    image = make_image(work / "scan.mha", size=10, offset=100.0)
    labels = work / "labels.csv"
    labels.write_text("voxel_value,name\n0,air\n1,tissue\n")
    threshold = 50.0

    job = client.start_algorithm_job(
        algorithm_slug=platform.algorithms["multi-input"]["slug"],
        inputs=[
            SocketValueSpec(socket_slug="ct-image", file=image),
            SocketValueSpec(socket_slug="threshold", value=threshold),
            SocketValueSpec(socket_slug="labels", file=labels),
        ],
    )
    assert job.status == "Validating inputs"
    job = wait_until_done(client, job.pk)
    assert job.status == "Succeeded", client(path=f"algorithms/jobs/{job.pk}/")["error_message"]

    inputs = {value.interface.slug: value for value in job.inputs}
    assert inputs["threshold"].value == threshold
    assert inputs["labels"].file and inputs["ct-image"].image

    # Every output through gcapi's download_socket_value, at its relative path.
    out = work / "outputs"
    for output in job.outputs:
        client.download_socket_value(output, output_directory=out)
    expected = voxels(image) > threshold
    (segmentation,) = (out / "images" / "segmentation").iterdir()
    assert (voxels(segmentation) == expected).all()
    summary = json.loads((out / "summary.json").read_text())
    counts = {"air": int((~expected).sum()), "tissue": int(expected.sum())}
    assert summary == {"threshold": threshold, "input": summary["input"], "voxels": counts}
    assert summary["input"].endswith(".mha")
    rows = list(csv.reader(io.StringIO((out / "report.csv").read_text())))
    assert rows == [["name", "voxels"], *([k, str(v)] for k, v in counts.items())]

    # The file input downloads as it was uploaded.
    assert client(url=inputs["labels"].file, follow_redirects=True).content == labels.read_bytes()


@pytest.mark.parametrize(
    ("example", "reason"),
    [
        ("crash", "RuntimeError: model weights not found"),
        ("no-output", "Output file 'results.json' was not produced"),
    ],
)
def test_failing_job_tells_why(platform: Platform, example: str, reason: str) -> None:
    from gcapi import SocketValueSpec

    client = platform.gcapi()
    job = client.start_algorithm_job(
        algorithm_slug=platform.algorithms[example]["slug"],
        inputs=[SocketValueSpec(socket_slug="threshold", value=1.5)],
    )
    assert wait_until_done(client, job.pk).status == "Failed"
    # gcapi 0.16.1's job model has no error_message field: read it from the raw response.
    detail = client(path=f"algorithms/jobs/{job.pk}/")
    assert detail["outputs"] == []
    assert reason in detail["error_message"]


def test_bad_token_is_rejected(platform: Platform) -> None:
    # The version check needs no token, so the client is made; its first call is refused.
    client = platform.gcapi(token="gnt_not-a-real-token")
    with pytest.raises(httpx.HTTPStatusError) as raised:
        client.algorithms.detail(slug=platform.algorithms["threshold"]["slug"])
    assert raised.value.response.status_code == 401
    # The same call with the real token goes through.
    assert platform.gcapi().algorithms.detail(slug=platform.algorithms["threshold"]["slug"])
