"""The bioimage.io runtime image (``make bioimageio-image``): a valid OCI image, and a job on
the local stack that runs it from its own root filesystem, in the sandbox, on a package built
by the tests at /opt/ml/model, driven by the real gcapi client.

The image is built by ``make bioimageio-image`` (CI runs it before the tests: it downloads
about 200 MB); without it these tests skip."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gantry import bioimageio_image
from gantry.cli import app
from gantry.commands.local import connection_for
from gantry.local.connection import image_store_dir
from tests.bioimageio_support import build_package
from tests.conftest import serve_local_stack
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
    assert not (site / "batch_runner" / "runner.py").exists()  # only the model runtime
    assert "runtime:x:1000:1000:" in (rootfs / "etc" / "passwd").read_text()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # The runner drops to the image's USER, who must reach the image store.
    state_dir = Path(tempfile.mkdtemp(prefix="gantry-bioimageio-e2e-"))
    state_dir.chmod(0o755)
    stack = serve_local_stack("gantry-bioimageio-e2e", state_dir)
    try:
        token = stack.ctx.store.users.create_token("alice")
        connection_for(stack, token, state_dir).write(state_dir)
        ca_file = str(state_dir / "tls" / "ca.pem")
        with api_client(stack.api_url, token, ca_file) as http:
            yield Platform(stack, token, ca_file, http, tmp_path_factory.mktemp("work"))
    finally:
        stack.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def _model_tarball(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, path.name)
    return out


def test_a_job_runs_a_package_in_the_image_and_matches_the_runtime(platform: Platform) -> None:
    import SimpleITK

    from batch_runner.bioimageio.runtime import run_job

    work = platform.workdir
    state_dir = str(platform.stack.state_dir)
    # The operator's step: the image pushed into the stack's registry, runner layer appended.
    pushed = CliRunner().invoke(
        app,
        ["bioimageio", "push-image", str(ARCHIVE), "--to", "local", "--state-dir", state_dir],
        env={"COLUMNS": "300"},
    )
    assert pushed.exit_code == 0, pushed.output
    reference = pushed.output.split("GANTRY_BIOIMAGEIO_IMAGE=")[1].split()[0]
    assert "/bioimageio/runtime@sha256:" in reference

    http = platform.http
    for title in ("Raw", "Prob"):
        body = {"title": title, "kind": "Image", "relative_path": f"images/{title.lower()}"}
        checked(http.post("components/interfaces/", json=body))
    algorithm = checked(
        http.post(
            "algorithms/",
            json={"title": "UNet", "interfaces": [{"inputs": ["raw"], "outputs": ["prob"]}]},
        )
    )
    checked(
        http.post(
            "algorithms/images/",
            json={
                "algorithm": algorithm["api_url"],
                "image": reference,
                "entrypoint": bioimageio_image.ENTRYPOINT,
                "command": bioimageio_image.CMD,
            },
        )
    )
    package = build_package(work / "package")
    model = _model_tarball(package.directory, work / "model.tar.gz")
    added = CliRunner().invoke(
        app,
        ["algorithms", "models", "upload", algorithm["slug"], str(model), "--state-dir", state_dir],
    )
    assert added.exit_code == 0, added.output
    # Not a multiple of the model's tile grid, with a geometry of its own.
    rng = np.random.default_rng(7)
    image = SimpleITK.GetImageFromArray(rng.gamma(2.0, 20.0, (150, 203)).astype(np.float32))
    image.SetSpacing((0.5, 0.75))
    image.SetOrigin((3.0, -2.0))
    case = work / "case.mha"
    SimpleITK.WriteImage(image, str(case))

    from gcapi import SocketValueSpec

    client = platform.gcapi()
    started = client.start_algorithm_job(
        algorithm_slug=algorithm["slug"], inputs=[SocketValueSpec(socket_slug="raw", file=case)]
    )
    job = wait_until_done(client, started.pk, timeout=600)

    detail = checked(http.get(f"algorithms/jobs/{started.pk}/"))
    assert job.status == "Succeeded", (detail["error_message"], detail["stderr"])
    (output,) = [o for o in job.outputs if o.interface.slug == "prob"]
    (downloaded,) = client.images.download(url=output.image, output_directory=work / "job")
    # The runtime's own prediction, on this machine's interpreter.
    (work / "in" / "images" / "raw").mkdir(parents=True)
    shutil.copy(case, work / "in" / "images" / "raw" / "case.mha")
    run_job(package.directory, work / "in", work / "out")
    expected = work / "out" / "images" / "prob" / "output.mha"
    assert np.allclose(voxels(downloaded), voxels(expected), atol=1e-5)
    got = SimpleITK.ReadImage(str(downloaded))
    assert got.GetSpacing() == pytest.approx((0.5, 0.75))
    assert got.GetOrigin() == pytest.approx((3.0, -2.0))
    # It ran in the sandbox from the image's root, which the stack pulled from its registry.
    store = image_store_dir(platform.stack.state_dir)
    pulled = list(
        store.glob(f"images/sha256/*/rootfs/{bioimageio_image.SITE_PACKAGES}/onnxruntime")
    )
    assert pulled, "the image's root filesystem is not in the stack's image store"
