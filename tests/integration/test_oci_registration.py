"""Registering an image archive with the local stack (the interim path until image uploads):
``gantry algorithms create --image-archive PATH`` unpacks it into the stack's image store and
records ``oci:sha256:<config>``; the local backend hands the runner that image's root
filesystem and configuration."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gantry.cli import app
from gantry.commands.local import connection_for
from gantry.compute import SubmitError
from gantry.compute.local import LocalBackend
from gantry.local.connection import image_store_dir
from gantry.local.stack import LocalStack
from gantry.oci import ImageStore
from gantry.resources import (
    ENV_ALGORITHM_ENV,
    ENV_ALGORITHM_USER,
    ENV_ALGORITHM_WORKDIR,
    ENV_API_METHOD,
    ENV_ROOTFS,
)
from gantry.settings import Settings
from tests.conftest import serve_local_stack
from tests.example_images import gc_template_image, static_threshold_image
from tests.image_builder import Entry, ImageSpec, file, hardlink, write_archive
from tests.unit.test_compute_base import make_image, make_job

pytestmark = pytest.mark.slow


def _decode(value: str) -> object:
    return json.loads(base64.b64decode(value))


@pytest.fixture
def traversable() -> Iterator[Path]:
    """A folder everyone may pass through (pytest's are owner-only): a root runner reaches
    the image's root filesystem as the image's USER."""
    folder = Path(tempfile.mkdtemp(prefix="gantry-oci-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_backend_gives_the_runner_the_image_root_and_config(traversable):
    store = ImageStore(traversable / "images")
    prepared = store.prepare(gc_template_image("invoke"))
    backend = LocalBackend(Settings(), image_store=store.root)
    try:
        image = make_image(image=prepared.ref, entrypoint=None, command=prepared.config.cmd)

        env = backend.runner_environment_for(make_job(), image)

        assert env[ENV_ROOTFS] == str(prepared.rootfs)
        assert env[ENV_ALGORITHM_USER] == "user"
        assert env[ENV_ALGORITHM_WORKDIR] == "/opt/app"
        assert env[ENV_API_METHOD] == "invoke"
        assert "PYTHONUNBUFFERED=1" in _decode(env[ENV_ALGORITHM_ENV])
        missing = make_image(image="oci:sha256:" + "1" * 64)
        with pytest.raises(SubmitError, match="not in the image store"):
            backend.runner_environment_for(make_job(), missing)
    finally:
        backend.shutdown()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root runner changes user")
def test_a_store_the_images_user_cannot_reach_fails_the_job_with_why(tmp_path):
    store = ImageStore(tmp_path / "images")  # under pytest's owner-only folders
    prepared = store.prepare(static_threshold_image())
    backend = LocalBackend(Settings(), image_store=store.root)
    try:
        image = make_image(image=prepared.ref, entrypoint=["/threshold"], command=None)

        with pytest.raises(SubmitError, match=r"cannot reach its root filesystem: .* chmod o"):
            backend.runner_environment_for(make_job(), image)
    finally:
        backend.shutdown()


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[LocalStack, Path]]:
    state_dir = Path(tempfile.mkdtemp(prefix="gantry-oci-state-"))
    state_dir.chmod(0o755)
    stack = serve_local_stack("gantry-oci", state_dir)
    try:
        token = stack.ctx.store.users.create_token("alice")
        connection_for(stack, token, state_dir).write(state_dir)
        for title, kind, path in (
            ("CT Image", "Image", "images/ct-image"),
            ("Results", "Anything", "results.json"),
        ):
            ok(
                gantry(
                    state_dir,
                    "interfaces",
                    "create",
                    "--title",
                    title,
                    "--kind",
                    kind,
                    "--relative-path",
                    path,
                )
            )
        yield stack, state_dir
    finally:
        stack.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def gantry(state_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--state-dir", str(state_dir)], env={"COLUMNS": "200"})


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _create(state_dir: Path, title: str, archive: Path) -> Result:
    return gantry(
        state_dir,
        "algorithms",
        "create",
        "--title",
        title,
        "--input",
        "ct-image",
        "--output",
        "results",
        "--image-archive",
        str(archive),
    )


def test_an_archive_registers_as_an_oci_image_of_the_algorithm(stack):
    local_stack, state_dir = stack
    archive = static_threshold_image()

    output = ok(_create(state_dir, "Static threshold", archive))

    prepared = ImageStore(image_store_dir(state_dir)).prepare(archive)
    assert f"Added image {prepared.ref}" in output
    assert "Unpacked image" in output
    algorithm = local_stack.ctx.store.algorithms.get_by_slug("static-threshold")
    record = local_stack.ctx.store.algorithms.desired_image(algorithm.pk)
    assert record is not None and record.image == prepared.ref
    assert record.entrypoint == ["/threshold"] and record.command is None
    assert record.sha256 == prepared.config.digest
    assert (prepared.rootfs / "threshold").is_file()


RUN = file("run", "x", mode=0o755)
REFUSED = {
    "root user": (ImageSpec(layers=[[RUN]], cmd=["/run"], user=""), "runs as root"),
    "arm64": (
        ImageSpec(layers=[[RUN]], cmd=["/run"], user="1000", architecture="arm64"),
        "built for linux/arm64",
    ),
    "dotdot layer": (
        ImageSpec(layers=[[RUN], [file("app/../../x", "x")]], cmd=["/run"], user="1000"),
        "contains '..'",
    ),
    "absolute hard link": (
        ImageSpec(layers=[[RUN, hardlink("passwd", "/etc/passwd")]], cmd=["/run"], user="1000"),
        "has an absolute path",
    ),
    "device node": (
        ImageSpec(layers=[[RUN, Entry("dev/sda", "chardev")]], cmd=["/run"], user="1000"),
        "device node",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_image_is_reported_with_its_reason(stack, tmp_path, case):
    _, state_dir = stack
    spec, reason = REFUSED[case]
    archive = write_archive(tmp_path / "image.tar", spec)

    result = _create(state_dir, f"Refused {case}", archive)

    assert result.exit_code == 1
    assert reason in result.output and "Traceback" not in result.output
    assert "Created algorithm" not in result.output  # refused before anything was created


def test_an_archive_for_another_api_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()

    result = gantry(
        other,
        "algorithms",
        "create",
        "--title",
        "Elsewhere",
        "--input",
        "ct-image",
        "--output",
        "results",
        "--image-archive",
        str(static_threshold_image()),
        "--api-url",
        "https://127.0.0.1:1/api/v1/",
        "--token",
        "x",
    )

    assert result.exit_code == 1
    assert "local stack only" in result.output
