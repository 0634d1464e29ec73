"""The one-machine OCI image layout store: the same push and pull code as a registry, a layout
that skopeo reads, a manifest removed with the blobs no other manifest uses."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gantry.local.images import runner_layer
from gantry.oci import ImageStore, read_archive
from gantry.oci.layout import OciLayout
from gantry.oci.push import pull, push_with_runner
from gantry.oci.registry import RegistryError
from tests.image_builder import ImageSpec, directory, file, write_archive

BASE = [directory("etc"), file("etc/passwd", "user:x:1000:1000::/:/bin/sh\n")]


def build(path: Path, version: str) -> Path:
    code = [directory("app"), file("app/version", version)]
    spec = ImageSpec(layers=[BASE, code], entrypoint=["/app/run"], user="user")
    return write_archive(path, spec, layout="oci")


def test_an_image_pushed_to_the_layout_is_pulled_back_and_removed(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    runner = runner_layer(tmp_path / "runner")
    one = push_with_runner(
        read_archive(build(tmp_path / "1.tar", "1")), runner, layout, "algorithms/a", "one"
    )
    two = push_with_runner(
        read_archive(build(tmp_path / "2.tar", "2")), runner, layout, "algorithms/a", "two"
    )
    assert one.reference.startswith("oci-layout/algorithms/a@sha256:")

    store = ImageStore(tmp_path / "store")
    prepared = pull(layout, "algorithms/a", one.manifest_digest, store)
    assert (prepared.rootfs / "app" / "version").read_text() == "1"
    assert (prepared.rootfs / "input").is_dir()  # the appended layer's mount point
    assert prepared.config.entrypoint == ["/app/run"]  # the algorithm's own, read back
    assert prepared.config.user == "user"

    if shutil.which("skopeo"):  # another implementation reads the layout
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{layout.root / 'algorithms/a'}:two"],
            check=True,
            capture_output=True,
        ).stdout
        assert json.loads(raw)["config"]["digest"] == two.config_digest

    blobs = layout.root / "algorithms/a/blobs/sha256"
    before = {p.name for p in blobs.iterdir()}
    layout.delete_manifest("algorithms/a", one.manifest_digest)
    after = {p.name for p in blobs.iterdir()}
    with pytest.raises(RegistryError, match="no image"):
        layout.get_manifest("algorithms/a", one.manifest_digest)
    with pytest.raises(RegistryError, match="no image"):
        layout.get_manifest("algorithms/a", "one")  # its tag went with it
    # Its own config, layer and manifest went; the shared base and runner layers stayed.
    assert len(before - after) == 3
    assert pull(layout, "algorithms/a", "two", ImageStore(tmp_path / "fresh")).rootfs.is_dir()


def test_a_blob_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    with pytest.raises(RegistryError, match="damaged"):
        layout.push_blob("r", "sha256:" + "0" * 64, io.BytesIO(b"not that"))
    assert layout.blob_size("r", "sha256:" + "0" * 64) is None
    with pytest.raises(RegistryError, match="not a repository name"):
        layout.push_bytes("../escape", b"x")
