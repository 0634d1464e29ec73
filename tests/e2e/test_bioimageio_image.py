"""The bioimage.io runtime image (``make bioimageio-image``): a valid OCI image, and the local
stack configured with it (``GANTRY_BIOIMAGEIO_IMAGE``): a package built by the tests is
registered, and its job runs the image from its own root filesystem, in the sandbox, with the
package at /opt/ml/model, driven by the real gcapi client.

The image is built by ``make bioimageio-image`` (CI runs it before the tests: it downloads
about 200 MB); without it these tests skip."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gantry import bioimageio_image
from gantry.cli import app
from gantry.local.connection import image_store_dir
from tests.bioimageio_support import build_package
from tests.e2e.conftest import Platform, api_client, checked
from tests.e2e.test_gcapi import voxels, wait_until_done

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not bioimageio_image.DEFAULT_ARCHIVE.exists(),
        reason=f"no {bioimageio_image.DEFAULT_ARCHIVE}: build it with 'make bioimageio-image'",
    ),
]
ARCHIVE = bioimageio_image.DEFAULT_ARCHIVE


def test_the_image_is_a_runnable_oci_image_with_its_own_python(tmp_path: Path) -> None:
    from gantry.oci import ImageStore, read_archive
    from gantry.oci.config import MEDIA_TYPE_LAYER_GZIP

    archive = read_archive(ARCHIVE)  # index, manifest, config: digests checked
    config = archive.config

    assert config.problems() == []  # what the image import asks: amd64, a command, not root
    assert (config.os, config.architecture) == ("linux", "amd64")
    assert config.entrypoint == ["python3", "-m", "batch_runner.bioimageio"]
    assert config.cmd == bioimageio_image.CMD
    assert config.user == "1000:1000"
    assert [layer.media_type for layer in config.layers] == [MEDIA_TYPE_LAYER_GZIP] * 3
    # Every layer's blob digest and uncompressed diff_id are checked while it unpacks.
    rootfs = ImageStore(tmp_path / "store").add(archive).rootfs
    site = rootfs / bioimageio_image.SITE_PACKAGES
    assert (rootfs / "usr" / "bin" / "python3").is_symlink()
    for module in ("numpy", "SimpleITK", "onnxruntime", "bioimageio/spec", "yaml"):
        assert (site / module / "__init__.py").exists(), module
    assert (site / "batch_runner" / "bioimageio" / "__main__.py").exists()
    # Compiled ahead: the root is read-only when jobs run, which could not write them.
    for module in ("numpy/__init__", "batch_runner/bioimageio/runtime"):
        folder, name = (site / module).parent, (site / module).name
        assert (folder / "__pycache__" / f"{name}.cpython-311.pyc").exists(), module
    assert not (site / "batch_runner" / "runner.py").exists()  # only the model runtime
    assert "runtime:x:1000:1000:" in (rootfs / "etc" / "passwd").read_text()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, str]]:
    """The local stack with the runtime image as its ``bioimageio_image``: pushed first into
    the registry of the stack's state folder, as docs/deploy.md tells an operator to."""
    from gantry.local.stack import LocalStack
    from gantry.settings import Settings

    # The runner drops to the image's USER, who must reach the image store.
    state_dir = Path(tempfile.mkdtemp(prefix="gantry-bioimageio-e2e-"))
    state_dir.chmod(0o755)
    pushed = CliRunner().invoke(
        app,
        ["bioimageio", "push-image", str(ARCHIVE), "--to", "local", "--state-dir", str(state_dir)],
    )
    assert pushed.exit_code == 0, pushed.output
    reference = pushed.output.split("GANTRY_BIOIMAGEIO_IMAGE=")[1].split()[0]
    name = f"gantry-bioimageio-image-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        table_name=name, bucket_name=name, local_workers=2, bioimageio_image=reference
    )
    stack = LocalStack.start(settings, state_dir=state_dir, serve_api=True, api_port=0)
    try:
        token = stack.ctx.store.users.create_token("alice")
        ca_file = str(state_dir / "tls" / "ca.pem")
        with api_client(stack.api_url, token, ca_file) as http:
            work = tmp_path_factory.mktemp("work")
            yield Platform(stack, token, ca_file, http, work), reference
    finally:
        stack.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def wait_for(read: Any, done: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not done after {timeout} s: {value}"
        time.sleep(0.3)


def test_a_registered_package_runs_in_the_image_and_matches_the_runtime(
    platform: tuple[Platform, str],
) -> None:
    import SimpleITK
    from gcapi import SocketValueSpec

    from batch_runner.bioimageio.runtime import run_job

    platform_, reference = platform
    stack, work = platform_.stack, platform_.workdir
    assert "/bioimageio/runtime@sha256:" in reference
    client = platform_.gcapi()
    package = build_package(work / "package")
    # Registered as a user registers a package: the import adds the runtime image.
    with package.zip_path.open("rb") as stream:
        upload = client.uploads.upload_fileobj(fileobj=stream, filename="unet.zip")
    created = client(
        method="POST",
        path="algorithms/",
        json={"title": "UNet", "bioimageio_package": upload.api_url},
    )
    algorithm = wait_for(
        lambda: client(path=f"algorithms/{created['pk']}/"),
        lambda a: a["bioimageio"]["import_status"] in ("Completed", "Failed"),
        180,
        "the package's import",
    )
    assert algorithm["bioimageio"]["import_status"] == "Completed", algorithm["bioimageio"]
    image = stack.ctx.store.algorithms.desired_image(created["pk"])
    assert image is not None and image.image == reference
    # Not a multiple of the model's tile grid, with a geometry of its own.
    rng = np.random.default_rng(7)
    source = SimpleITK.GetImageFromArray(rng.gamma(2.0, 20.0, (150, 203)).astype(np.float32))
    source.SetSpacing((0.5, 0.75))
    source.SetOrigin((3.0, -2.0))
    case = work / "case.mha"
    SimpleITK.WriteImage(source, str(case))

    started = client.start_algorithm_job(
        algorithm_slug=algorithm["slug"], inputs=[SocketValueSpec(socket_slug="raw", file=case)]
    )
    job = wait_until_done(client, started.pk, timeout=600)

    detail = checked(platform_.http.get(f"algorithms/jobs/{started.pk}/"))
    assert job.status == "Succeeded", (detail["error_message"], detail["stderr"])
    (output,) = [o for o in job.outputs if o.interface.slug == "prob"]
    (downloaded,) = client.images.download(url=output.image, output_directory=work / "job")
    # The runtime's own prediction, with this machine's interpreter.
    (work / "in" / "images" / "raw").mkdir(parents=True)
    shutil.copy(case, work / "in" / "images" / "raw" / "case.mha")
    run_job(package.directory, work / "in", work / "out")
    expected = work / "out" / "images" / "prob" / "output.mha"
    assert np.allclose(voxels(downloaded), voxels(expected), atol=1e-5)
    got = SimpleITK.ReadImage(str(downloaded))
    assert got.GetSpacing() == pytest.approx((0.5, 0.75))
    assert got.GetOrigin() == pytest.approx((3.0, -2.0))
    # It ran from the image's root filesystem, pulled from the stack's registry and unpacked
    # into its image store: the image's own Python, not this machine's.
    site = bioimageio_image.SITE_PACKAGES
    store = image_store_dir(stack.state_dir)
    assert list(store.glob(f"images/sha256/*/rootfs/{site}/onnxruntime"))
