"""A bioimage.io model package as an algorithm, through the whole local platform with the real
gcapi client (0.16.1): the package zip is uploaded with gcapi's multipart upload, registered
with ``POST algorithms/`` and imported by the import function; gcapi uploads an .mha, starts a
job, and the job's output keeps the input's geometry and equals the runtime's own prediction
within the package's tolerance. One 0.4 and one 0.5 package, built by the tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnx")

import numpy as np

from tests.bioimageio_support import build_package
from tests.conftest import serve_local_stack
from tests.e2e.conftest import JOB_TIMEOUT, TERMINAL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IMPORT_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def gcapi_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import gcapi

    state_dir = tmp_path_factory.mktemp("state")
    stack = serve_local_stack("gantry-bioimageio", state_dir)
    try:
        token = stack.ctx.store.users.create_token("alice")
        ca_file = str(state_dir / "tls" / "ca.pem")
        yield gcapi.Client(base_url=str(stack.api_url), token=token, verify=ca_file)
    finally:
        stack.stop()


def wait_for(read: Any, done: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not done after {timeout} s: {value}"
        time.sleep(0.3)


def input_image(path: Path) -> Path:
    """A 2D image whose size divides into no tile, with a rotated direction of its own."""
    import SimpleITK

    rng = np.random.default_rng(11)
    image = SimpleITK.GetImageFromArray(rng.gamma(2.0, 20.0, (150, 137)).astype(np.float32))
    image.SetSpacing((0.4, 0.65))
    image.SetOrigin((-12.5, 40.0))
    image.SetDirection((0.6, -0.8, 0.8, 0.6))
    SimpleITK.WriteImage(image, str(path), True)
    return path


@pytest.mark.parametrize("format_version", ["0.4", "0.5"])
def test_a_bioimageio_package_runs_as_an_algorithm(
    gcapi_client: Any, tmp_path: Path, format_version: str
) -> None:
    import SimpleITK
    from gcapi import SocketValueSpec

    from batch_runner.bioimageio.package import load_plan
    from batch_runner.bioimageio.runtime import predict_files

    client = gcapi_client
    package = build_package(tmp_path / f"cells-{format_version}", format_version=format_version)

    # Register: upload the zip (multipart, presigned parts), then create the algorithm.
    with package.zip_path.open("rb") as stream:
        upload = client.uploads.upload_fileobj(fileobj=stream, filename="cells.zip")
    created = client(
        method="POST",
        path="algorithms/",
        json={"title": f"Cells {format_version}", "bioimageio_package": upload.api_url},
    )
    assert created["bioimageio"]["import_status"] == "Queued"
    algorithm = wait_for(
        lambda: client(path=f"algorithms/{created['pk']}/"),
        lambda a: a["bioimageio"]["import_status"] in ("Completed", "Failed"),
        IMPORT_TIMEOUT,
        "the package's import",
    )
    assert algorithm["bioimageio"]["import_status"] == "Completed", algorithm["bioimageio"]
    detail = client.algorithms.detail(slug=algorithm["slug"])
    (socket_set,) = detail.interfaces
    assert [s.slug for s in socket_set.inputs] == ["raw"]
    assert [s.slug for s in socket_set.outputs] == ["prob"]

    # Run: gcapi uploads the .mha and starts the job.
    source = input_image(tmp_path / "cells.mha")
    job = client.start_algorithm_job(
        algorithm_slug=algorithm["slug"],
        inputs=[SocketValueSpec(socket_slug="raw", file=source)],
    )
    job = wait_for(
        lambda: client.algorithm_jobs.detail(job.pk),
        lambda j: j.status in TERMINAL,
        JOB_TIMEOUT,
        f"job {job.pk}",
    )
    assert job.status == "Succeeded", (job.status, job.error_message)
    (output,) = job.outputs
    assert output.interface.slug == "prob"
    (downloaded,) = client.images.download(url=output.image, output_directory=tmp_path / "out")

    # The output keeps the input's geometry and is the runtime's own prediction.
    expected_path = tmp_path / "expected.mha"
    predict_files(load_plan(package.directory), {"raw": source}, {"prob": expected_path})
    got, expected, given = (
        SimpleITK.ReadImage(str(p)) for p in (downloaded, expected_path, source)
    )
    assert got.GetSize() == given.GetSize()
    assert got.GetNumberOfComponentsPerPixel() == 2
    assert got.GetSpacing() == pytest.approx(given.GetSpacing())
    assert got.GetOrigin() == pytest.approx(given.GetOrigin())
    assert got.GetDirection() == pytest.approx(given.GetDirection())
    plan = load_plan(package.directory)
    (tolerance,) = [(o.abs_tolerance, o.rel_tolerance) for o in plan.outputs]
    got_voxels = SimpleITK.GetArrayFromImage(got)
    expected_voxels = SimpleITK.GetArrayFromImage(expected)
    np.testing.assert_allclose(got_voxels, expected_voxels, atol=tolerance[0], rtol=tolerance[1])
