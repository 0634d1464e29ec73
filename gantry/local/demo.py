"""The demo: a CT-like image through the threshold example algorithm, on the local stack.

Registers the interfaces and the example algorithm, makes a CT-like ``.mha`` (a sphere of
soft tissue in air, with noise), uploads it through the API's multipart protocol, starts a
job, follows it to the end and downloads the segmentation and ``results.json``.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gantry.local.client import InProcessApi

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD_EXAMPLE = ROOT / "examples" / "algorithms" / "threshold"


def make_ct_like_image(path: Path, size: int = 48) -> Path:
    import numpy
    import SimpleITK

    rng = numpy.random.default_rng(7)
    z, y, x = numpy.mgrid[:size, :size, :size]
    centre = (size - 1) / 2
    inside = (z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 < (size / 3) ** 2
    voxels = numpy.where(inside, 40.0, -1000.0) + rng.normal(0, 20, inside.shape)
    image = SimpleITK.GetImageFromArray(voxels.astype(numpy.int16))
    image.SetSpacing((0.8, 0.8, 1.5))
    image.SetOrigin((-20.0, -20.0, 10.0))
    SimpleITK.WriteImage(image, str(path), True)
    return path


def register_threshold_algorithm(api: InProcessApi) -> dict[str, Any]:
    sockets: list[dict[str, Any]] = [
        {"title": "CT Image", "kind": "Image", "relative_path": "images/ct-image"},
        {
            "title": "Segmentation",
            "kind": "Segmentation",
            "relative_path": "images/segmentation",
            "overlay_segments": [
                {"name": "background", "voxel_value": 0, "visible": False},
                {"name": "body", "voxel_value": 1, "visible": True},
            ],
        },
        {"title": "Results", "kind": "Anything", "relative_path": "results.json"},
    ]
    existing = {
        s["slug"]
        for s in api.request("GET", "components/interfaces/", query={"limit": 1000})["results"]
    }
    for socket in sockets:
        if socket["title"].lower().replace(" ", "-") not in existing:
            api.request("POST", "components/interfaces/", socket)
    found = api.request("GET", "algorithms/", query={"slug": "threshold-segmentation"})["results"]
    if found:
        return found[0]
    algorithm = api.request(
        "POST",
        "algorithms/",
        {
            "title": "Threshold segmentation",
            "description": "Segments everything above 0 HU.",
            "interfaces": [{"inputs": ["ct-image"], "outputs": ["segmentation", "results"]}],
            "time_limit": 300,
        },
    )
    api.request(
        "POST",
        "algorithms/images/",
        {
            "algorithm": algorithm["api_url"],
            "image": "local",
            "command": [sys.executable, "main.py"],
            "workdir": str(THRESHOLD_EXAMPLE),
        },
    )
    return algorithm


def upload_file(api: InProcessApi, path: Path) -> dict[str, Any]:
    upload = api.request("POST", "uploads/", {"filename": path.name})
    base = f"uploads/{upload['pk']}/{upload['s3_upload_id']}/"
    urls = api.request("PATCH", base + "generate-presigned-urls/", {"part_numbers": [1]})
    # An explicit type: urllib's default (a form) makes the endpoint parse the body as one.
    request = urllib.request.Request(
        urls["presigned_urls"]["1"],
        data=path.read_bytes(),
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request) as response:
        etag = response.headers["ETag"]
    return api.request(
        "PATCH", base + "complete-multipart-upload/", {"parts": [{"ETag": etag, "PartNumber": 1}]}
    )


def download(url: str, target: Path) -> Path:
    with urllib.request.urlopen(url) as response:
        target.write_bytes(response.read())
    return target


def wait_for(
    api: InProcessApi, job_pk: str, on_status: Callable[[str], object], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        job = api.request("GET", f"algorithms/jobs/{job_pk}/")
        if job["status"] != last:
            on_status(job["status"])
            last = job["status"]
        if job["status"] in ("Succeeded", "Failed", "Cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_pk} did not finish in {timeout} s")


def wait_for_import(api: InProcessApi, path: str, timeout: float = 300) -> dict[str, Any]:
    """Poll an image or model at ``path`` until its import has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = api.request("GET", path)
        if item["import_status"] in ("Completed", "Failed", "Cancelled"):
            return item
        time.sleep(0.2)
    raise TimeoutError(f"{path}: the import did not end in {timeout} s")


def fetch_outputs(api: InProcessApi, job: dict[str, Any], out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for output in job["outputs"]:
        slug = output["interface"]["slug"]
        if output["image"]:
            image = api.request("GET", output["image"].split("/api/v1/", 1)[1])
            for file in image["files"]:
                location = api.request("GET", file["file"].split("/api/v1/", 1)[1])
                written.append(download(location, out_dir / f"{slug}.mha"))
        elif output["file"]:
            location = api.request("GET", output["file"].split("/api/v1/", 1)[1])
            written.append(download(location, out_dir / Path(output["file"]).name))
        else:
            target = out_dir / f"{slug}.json"
            target.write_text(json.dumps(output["value"], indent=2))
            written.append(target)
    return written
