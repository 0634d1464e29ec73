"""The example images end to end on the local stack, driven by the real gcapi client: each
archive registered with ``gantry algorithms create --image-archive``, each job run by the
real runner from the image's own root filesystem."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gantry.cli import app
from gantry.commands.local import connection_for
from tests.conftest import serve_local_stack
from tests.e2e.conftest import Platform, api_client, make_image, register_sockets
from tests.e2e.test_gcapi import read_image, voxels, wait_until_done
from tests.example_images import gc_template_image, gc_template_model, static_threshold_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # The runner drops to the image's USER before it starts the sandbox, so that user must
    # reach the image store: not under pytest's owner-only temporary folders.
    state_dir = Path(tempfile.mkdtemp(prefix="gantry-oci-e2e-"))
    state_dir.chmod(0o755)
    stack = serve_local_stack("gantry-oci-e2e", state_dir)
    try:
        token = stack.ctx.store.users.create_token("alice")
        connection_for(stack, token, state_dir).write(state_dir)
        ca_file = str(state_dir / "tls" / "ca.pem")
        with api_client(stack.api_url, token, ca_file) as http:
            register_sockets(http)
            yield Platform(stack, token, ca_file, http, tmp_path_factory.mktemp("work"))
    finally:
        stack.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def register(platform: Platform, title: str, archive: Path, outputs: list[str]) -> str:
    state_dir = platform.stack.state_dir
    args = ["algorithms", "create", "--title", title, "--input", "ct-image"]
    args += [arg for slug in outputs for arg in ("--output", slug)]
    args += ["--image-archive", str(archive), "--state-dir", str(state_dir)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return title.lower().replace(" ", "-")


def run_job(platform: Platform, slug: str, image: Path) -> Any:
    from gcapi import SocketValueSpec

    client = platform.gcapi()
    job = client.start_algorithm_job(
        algorithm_slug=slug, inputs=[SocketValueSpec(socket_slug="ct-image", file=image)]
    )
    return client, wait_until_done(client, job.pk)


def why(platform: Platform, job: Any) -> str:
    """A job's error message, for an assertion's report (gcapi's job model has none)."""
    return platform.stack.ctx.store.jobs.get(str(job.pk)).error_message


def uncompressed(path: Path) -> Path:
    import SimpleITK

    SimpleITK.WriteImage(SimpleITK.ReadImage(str(path)), str(path), False)
    return path


def check_segmentation(platform: Platform, client: Any, job: Any, case: Path) -> None:
    """The segmentation output marks the voxels above 0 with the input's geometry."""
    outputs = {output.interface.slug: output for output in job.outputs}
    (downloaded,) = client.images.download(
        url=outputs["segmentation"].image, output_directory=platform.workdir / job.pk
    )
    segmentation, ct = read_image(downloaded), read_image(case)
    assert segmentation.GetSize() == ct.GetSize()
    assert segmentation.GetSpacing() == pytest.approx(ct.GetSpacing())
    assert segmentation.GetOrigin() == pytest.approx(ct.GetOrigin())
    assert segmentation.GetDirection() == pytest.approx(ct.GetDirection())
    assert (voxels(downloaded) == (voxels(case) > 0)).all()


def test_the_gc_template_image_reads_inputs_json_as_its_user_with_its_model(
    platform: Platform,
) -> None:
    slug = register(platform, "GC template", gc_template_image("exec"), ["segmentation", "results"])
    state_dir = str(platform.stack.state_dir)
    args = [
        "algorithms",
        "models",
        "upload",
        slug,
        str(gc_template_model()),
        "--state-dir",
        state_dir,
    ]
    added = CliRunner().invoke(app, args)
    assert added.exit_code == 0, added.output
    case = make_image(platform.workdir / "gc-template.mha")  # zlib-compressed .mha

    client, job = run_job(platform, slug, case)

    assert job.status == "Succeeded", why(platform, job)
    results = {output.interface.slug: output for output in job.outputs}["results"].value
    assert results == {
        "foreground_voxels": int((voxels(case) > 0).sum()),
        "threshold": 0,
        "model_version": "weights-v1",  # read from /opt/ml/model/weights.json
        "input_slugs": ["ct-image"],  # found in /input/inputs.json by socket slug
        "user": "user",  # the image's USER, from its own /etc/passwd
        "uid": 1000,
    }
    check_segmentation(platform, client, job, case)


def test_the_static_image_without_libc_succeeds(platform: Platform) -> None:
    slug = register(
        platform, "Static threshold", static_threshold_image(), ["segmentation", "results"]
    )
    case = uncompressed(make_image(platform.workdir / "static.mha"))

    client, job = run_job(platform, slug, case)

    assert job.status == "Succeeded", why(platform, job)
    outputs = {output.interface.slug: output for output in job.outputs}
    expected = int((voxels(case) > 0).sum())
    assert outputs["results"].value == {"foreground_voxels": expected, "static": True}
    check_segmentation(platform, client, job, case)


def test_the_static_image_uploaded_and_imported_runs_a_job(platform: Platform) -> None:
    """The import path: upload through the CLI, the stack's upload handler imports it, and
    the algorithm's next job runs it."""
    state_dir = str(platform.stack.state_dir)
    args = ["algorithms", "create", "--title", "Uploaded static", "--input", "ct-image"]
    args += ["--output", "segmentation", "--output", "results", "--state-dir", state_dir]
    created = CliRunner().invoke(app, args)
    assert created.exit_code == 0, created.output
    runner = CliRunner()
    archive = str(static_threshold_image())
    upload_args = ["algorithms", "images", "upload", "uploaded-static", archive]
    upload_args += ["--state-dir", state_dir]
    uploaded = runner.invoke(
        app,
        upload_args,
        env={"COLUMNS": "200"},
    )
    assert uploaded.exit_code == 0, uploaded.output
    assert "Imported image" in uploaded.output
    # The same image again: refused by the import, with the reason, exit status 1.
    again = runner.invoke(
        app,
        upload_args,
        env={"COLUMNS": "200"},
    )
    assert again.exit_code == 1, again.output
    assert "already been uploaded to this algorithm" in again.output
    case = uncompressed(make_image(platform.workdir / "uploaded.mha"))

    _, job = run_job(platform, "uploaded-static", case)

    assert job.status == "Succeeded", why(platform, job)
    outputs = {output.interface.slug: output for output in job.outputs}
    assert outputs["results"].value == {
        "foreground_voxels": int((voxels(case) > 0).sum()),
        "static": True,
    }


def test_an_imported_image_runs_from_the_registry_after_its_archive_is_gone(
    platform: Platform,
) -> None:
    """The import pushes to the stack's registry (docker-registry when installed, else its
    OCI layout store) and unpacks nothing; the job pulls the image from there, with the
    uploaded archive deleted."""
    from gantry.oci import ImageStore
    from gantry.oci.layers import remove_tree
    from gantry.oci.local_registry import registry_binary
    from gantry.oci.push import read_image as read_pushed
    from gantry.oci.registry import split_reference

    stack = platform.stack
    assert stack.registry.kind == ("distribution" if registry_binary() else "layout")
    state_dir = str(stack.state_dir)
    args = ["algorithms", "create", "--title", "From registry", "--input", "ct-image"]
    args += ["--output", "segmentation", "--output", "results", "--state-dir", state_dir]
    assert CliRunner().invoke(app, args).exit_code == 0
    upload_args = ["algorithms", "images", "upload", "from-registry"]
    upload_args += [str(static_threshold_image()), "--state-dir", state_dir]
    uploaded = CliRunner().invoke(app, upload_args, env={"COLUMNS": "200"})
    assert uploaded.exit_code == 0, uploaded.output
    algorithm = stack.ctx.store.algorithms.get_by_slug("from-registry")
    image = stack.ctx.store.algorithms.desired_image(algorithm.pk)
    assert image is not None and image.user_upload is not None
    pushed = split_reference(image.image)
    assert pushed is not None, image.image
    assert pushed[0] == stack.registry.registry.host
    assert pushed[1] == f"algorithms/{algorithm.pk}"
    upload = stack.ctx.store.uploads.get(image.user_upload)
    stack.ctx.clients.s3.delete_object(Bucket=stack.settings.bucket_name, Key=upload.key)
    # Earlier tests may have pulled the same image (another algorithm's): unpacked again here.
    config = read_pushed(stack.registry.registry, pushed[1], pushed[2])
    store = ImageStore(stack.state_dir / "images")
    if store.image_dir(config.digest).exists():
        remove_tree(store.image_dir(config.digest))
    case = uncompressed(make_image(platform.workdir / "from-registry.mha"))

    _, job = run_job(platform, "from-registry", case)

    assert job.status == "Succeeded", stack.ctx.store.jobs.get(job.pk).model_dump_json()
    results = {output.interface.slug: output for output in job.outputs}["results"].value
    assert results == {"foreground_voxels": int((voxels(case) > 0).sum()), "static": True}
    # Pulled from the registry: the pushed config (runner layer included) is in the store.
    assert store.get(config.digest).rootfs.is_dir()

    # The image commands: listed as the desired version, which cannot be removed.
    cli = ["--state-dir", state_dir]
    listed = CliRunner().invoke(
        app, ["algorithms", "images", "list", "from-registry", *cli], env={"COLUMNS": "300"}
    )
    assert listed.exit_code == 0, listed.output
    assert image.pk in listed.output and "Completed" in listed.output
    activated = CliRunner().invoke(app, ["algorithms", "images", "activate", image.pk, *cli])
    assert activated.exit_code == 0, activated.output
    assert "is now the desired version" in activated.output
    removed = CliRunner().invoke(
        app, ["algorithms", "images", "remove", image.pk, *cli], env={"COLUMNS": "300"}
    )
    assert removed.exit_code == 1
    assert "activate another image before removing it" in removed.output
