"""``gantry bioimageio``: the pinned packages follow the extra, and an image is pushed the image
import's way (checked, runner layer appended) with the reference to configure printed. The
image itself is built by ``make bioimageio-image`` (tests/e2e/test_bioimageio_image.py)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from gantry import bioimageio_image
from gantry.cli import app
from gantry.oci.build import image_config, write_archive, write_layer
from gantry.resources import ENV_ALGORITHM_ENTRYPOINT, RUNNER_BINARY_PATH


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("variant", [bioimageio_image.CPU, bioimageio_image.GPU])
def test_the_pinned_packages_satisfy_the_bioimageio_extra(variant) -> None:
    pins = _pins(variant.requirements)
    wanted = [Requirement(text) for text in bioimageio_image.extra_requirements(variant)]

    assert {canonicalize_name(r.name) for r in wanted} >= {"numpy", "simpleitk", "pyyaml"}
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not pinned in {variant.requirements.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), requirement
    assert ("onnxruntime-gpu" in pins) == (variant is bioimageio_image.GPU)


def test_cuda_libraries_of_the_wheels_go_on_the_library_path(tmp_path: Path) -> None:
    for folder in ("nvidia/cu13/lib", "nvidia/cudnn/lib"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "nvidia/cu13/lib/libcublas.so.13").write_bytes(b"")
    (tmp_path / "nvidia/cudnn/lib/libcudnn.so.9").write_bytes(b"")
    (tmp_path / "nvidia/__init__.py").write_text("")

    assert bioimageio_image.library_folders(tmp_path) == [
        f"/{bioimageio_image.SITE_PACKAGES}/nvidia/cu13/lib",
        f"/{bioimageio_image.SITE_PACKAGES}/nvidia/cudnn/lib",
    ]
    assert bioimageio_image.library_folders(tmp_path / "none") == []


def _small_image(tmp_path: Path, user: str) -> Path:
    """An image shaped like the runtime's, without the downloads."""
    folder = tmp_path / "app"
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text("print('hi')\n")
    layer = write_layer(tmp_path / "app.tar.gz", directories=[(folder, "app", 0, 0)])
    settings: dict[str, Any] = {
        "User": user,
        "Entrypoint": bioimageio_image.ENTRYPOINT,
        "Cmd": ["run"],
    }
    settings["Labels"] = {bioimageio_image.VARIANT_LABEL: "cpu"}
    config = image_config([layer], settings, ["app"], "2023-11-14T22:13:20Z")
    archive = tmp_path / f"image-{user}.tar"
    write_archive(archive, config, [layer], "test")
    return archive


def test_push_to_the_local_stack_appends_the_runner_and_prints_the_reference(
    tmp_path: Path,
) -> None:
    from gantry.oci.layout import OciLayout
    from gantry.oci.push import read_image

    archive = _small_image(tmp_path, "1000:1000")
    state = tmp_path / "state"
    args = ["bioimageio", "push-image", str(archive), "--to", "local", "--registry", "layout"]

    result = CliRunner().invoke(app, [*args, "--state-dir", str(state)])

    assert result.exit_code == 0, result.output
    found = re.search(r"^GANTRY_BIOIMAGEIO_IMAGE=(\S+)$", result.output, re.MULTILINE)
    assert found, result.output
    named = re.fullmatch(r"(.+?)/(.+)@(sha256:\w+)", found.group(1))
    assert named, found.group(1)
    host, repository, digest = named.groups()
    assert (host, repository) == ("oci-layout", "bioimageio/runtime")
    pushed = read_image(OciLayout(state / "registry" / "layout"), repository, digest)
    # The runner layer on top; what the runtime runs is kept for the runner to restore.
    assert len(pushed.layers) == 2
    assert pushed.cmd == [RUNNER_BINARY_PATH]
    entrypoint = pushed.env_map[ENV_ALGORITHM_ENTRYPOINT]
    assert json.loads(base64.b64decode(entrypoint)) == bioimageio_image.ENTRYPOINT
    # The same image again: the same reference (nothing new is stored).
    again = CliRunner().invoke(app, [*args, "--state-dir", str(state)])
    assert found.group(0) in again.output


def test_an_image_the_import_would_refuse_is_not_pushed(tmp_path: Path) -> None:
    archive = _small_image(tmp_path, "root")
    args = ["bioimageio", "push-image", str(archive), "--to", "local", "--registry", "layout"]

    result = CliRunner().invoke(app, [*args, "--state-dir", str(tmp_path / "state")])

    assert result.exit_code == 1
    assert "runs as root" in result.output
    assert "GANTRY_BIOIMAGEIO_IMAGE" not in result.output


def test_ecr_without_a_repository_says_what_to_pass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GANTRY_IMAGE_REPOSITORY", raising=False)
    archive = _small_image(tmp_path, "1000:1000")

    result = CliRunner().invoke(
        app, ["bioimageio", "push-image", str(archive), "--to", "ecr"], env={"COLUMNS": "200"}
    )

    assert result.exit_code == 1
    assert "--repository <RunnerRepositoryUri>" in result.output
