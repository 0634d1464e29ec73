"""The runner layer appended without a container engine, pushed to a real registry (the CNCF
distribution registry, Debian's ``docker-registry``, on loopback) and pulled back into the image
store: the manifest carries the runner layer, the config the runner's entry and the original
command, every digest is what the OCI spec says it is, and the pulled root filesystem holds the
runner and the image's own files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from batch_runner.config import RunnerConfig
from batch_runner.sandbox import bwrap_binary
from gantry.oci import ImageError, ImageStore, read_archive
from gantry.oci.local_registry import local_registry, registry_binary
from gantry.oci.mutate import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_MANIFEST,
    LayerFile,
    with_runner_layer,
)
from gantry.oci.push import pull, push_with_runner
from gantry.oci.registry import Registry, RegistryError
from gantry.resources import ENV_ALGORITHM_ENV, RUNNER_BINARY_PATH
from tests.example_images import static_threshold_image
from tests.image_builder import ImageSpec, directory, file, layer_tar, whiteout, write_archive
from tests.integration.test_example_images import _roots, _run

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILT_RUNNER_LAYER = REPO_ROOT / "dist" / "runner" / "gantry-runner-layer.tar"


def _ensure_registry() -> None:
    if registry_binary():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("docker-registry is not installed and cannot be installed (not root/Debian)")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-registry"]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        if subprocess.run(install, check=False).returncode != 0:
            pytest.skip("docker-registry could not be installed with apt-get")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _ensure_registry()
    with local_registry(tmp_path_factory.mktemp("registry")) as url:
        # Small chunks: the runner layer and the 2.5 MB one go up in several PATCH requests.
        yield Registry(url, chunk_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def runner_layer(tmp_path_factory: pytest.TempPathFactory) -> LayerFile:
    """``make runner``'s layer when it is built; else a layer of the same shape."""
    if BUILT_RUNNER_LAYER.exists():
        return LayerFile.read(BUILT_RUNNER_LAYER)
    path = tmp_path_factory.mktemp("runner") / "layer.tar"
    with path.open("wb") as out:
        layer_tar(
            [
                directory("gantry"),
                directory("gantry/bin"),
                file("gantry/bin/gantry-runner", os.urandom(300_000), mode=0o755),
                file("gantry/bin/bwrap", b"\x7fELF bwrap", mode=0o755),
                directory("input"),
                directory("output"),
                directory("tmp", mode=0o1777),
            ],
            out,
        )
    return LayerFile.read(path)


BIG = os.urandom(2_500_000)  # incompressible: several upload chunks even gzipped


def _spec() -> ImageSpec:
    return ImageSpec(
        layers=[
            [directory("app"), file("app/run", "#!/bin/sh\n", mode=0o755), file("app/old", "x")],
            [directory("app"), whiteout("app/old"), file("app/big", BIG)],
            [directory("etc"), file("etc/passwd", "user:x:1000:1000::/:/none\n")],
        ],
        entrypoint=["/app/run"],
        cmd=["--threshold", "0.5"],
        user="user",
        env=["PATH=/usr/bin:/bin", "MODEL=small"],
        working_dir="/app",
        labels={"org.grand-challenge.api-method": "invoke"},
    )


def _blob(registry: Registry, repository: str, digest: str) -> bytes:
    with registry.open_blob(repository, digest) as stream:
        data = stream.read()
    # Checked here, independently of the client's own checks.
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def _decode(env: dict[str, str], name: str):
    return json.loads(base64.b64decode(env[name]))


def test_push_appends_the_runner_and_keeps_the_command(
    registry: Registry, runner_layer: LayerFile, tmp_path: Path
) -> None:
    archive = write_archive(
        tmp_path / "image.tar.gz", _spec(), compression="gzip", layer_compression="gzip"
    )
    image = read_archive(archive)
    pushed = push_with_runner(image, runner_layer, registry, "algorithms/example", "v1")

    raw, media_type = registry.get_manifest("algorithms/example", "v1")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == pushed.manifest_digest
    assert registry.get_manifest("algorithms/example", pushed.manifest_digest)[0] == raw
    manifest = json.loads(raw)
    assert media_type == manifest["mediaType"] == MEDIA_TYPE_OCI_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_TYPE_OCI_CONFIG
    layers = manifest["layers"]
    assert [entry["digest"] for entry in layers] == [
        *(layer.digest for layer in image.config.layers),
        runner_layer.digest,
    ]
    assert layers[-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert {entry["mediaType"] for entry in layers[:-1]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    for entry in layers:
        assert len(_blob(registry, "algorithms/example", entry["digest"])) == entry["size"]

    config_blob = _blob(registry, "algorithms/example", manifest["config"]["digest"])
    assert len(config_blob) == manifest["config"]["size"]
    config = json.loads(config_blob)
    original = json.loads(image.config_blob)
    assert config["rootfs"]["diff_ids"] == [*original["rootfs"]["diff_ids"], runner_layer.digest]
    assert len(config["history"]) == len(original["history"]) + 1
    settings = config["config"]
    assert "Entrypoint" not in settings
    assert settings["Cmd"] == [RUNNER_BINARY_PATH]
    assert settings["User"] == "0"
    assert settings["Labels"] == {"org.grand-challenge.api-method": "invoke"}

    # The runner reads the pushed image's environment as an image's settings.
    env = dict(item.split("=", 1) for item in settings["Env"])
    runner = RunnerConfig.from_env({**env, "GANTRY_SIGNING_KEY_HEX": "00"})
    assert runner.is_image
    assert runner.command == ["/app/run", "--threshold", "0.5"]
    assert runner.algorithm_user == "user"
    assert runner.image_env == ("PATH=/usr/bin:/bin", "MODEL=small")
    assert runner.workdir == Path("/app")
    assert runner.api_method == "invoke"

    if shutil.which("skopeo"):
        # A second implementation of the distribution API checks every digest as it copies.
        target = tmp_path / "copy"
        subprocess.run(
            [
                "skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                f"docker://{registry.host}/algorithms/example:v1", f"oci:{target}:v1",
            ],
            check=True,
        )  # fmt: skip
        index = json.loads((target / "index.json").read_text())
        assert index["manifests"][0]["digest"] == pushed.manifest_digest


def test_pull_into_the_store_runs_as_the_algorithm(
    registry: Registry, runner_layer: LayerFile, tmp_path: Path
) -> None:
    archive = write_archive(tmp_path / "image.tar", _spec(), layout="docker25")
    pushed = push_with_runner(read_archive(archive), runner_layer, registry, "pulled", "v1")
    archive.unlink()  # the registry is all that is left

    prepared = pull(registry, "pulled", "v1", ImageStore(tmp_path / "store"))
    assert prepared.config.digest == pushed.config_digest
    # The image record's oci:sha256:… reference finds it, as the local backend looks it up.
    assert ImageStore(tmp_path / "store").prepare(prepared.ref) == prepared
    root = prepared.rootfs
    assert (root / RUNNER_BINARY_PATH.lstrip("/")).is_file()
    assert (root / "gantry/bin/bwrap").is_file()
    assert (root / "app/run").read_text() == "#!/bin/sh\n"
    assert (root / "app/big").stat().st_size == 2_500_000
    assert not (root / "app/old").exists()  # the whiteout applied
    assert (root / "tmp").stat().st_mode & 0o1777 == 0o1777
    # The algorithm's own settings, not the runner's entry.
    assert prepared.config.argv == ["/app/run", "--threshold", "0.5"]
    assert prepared.config.user == "user"
    assert prepared.config.working_dir == "/app"
    assert prepared.config.env == ["PATH=/usr/bin:/bin", "MODEL=small"]
    environment = prepared.runner_environment()
    assert environment["GANTRY_API_METHOD"] == "invoke"
    assert json.loads(base64.b64decode(environment[ENV_ALGORITHM_ENV])) == prepared.config.env

    # The same image again under another tag: nothing of the archive is read for its layers.
    archive = write_archive(tmp_path / "again.tar", _spec(), layout="docker25")
    opens = []

    def opener() -> io.BufferedReader:
        opens.append(1)
        return archive.open("rb")

    image = read_archive(opener)
    before = len(opens)
    again = push_with_runner(image, runner_layer, registry, "pulled", "v2")
    assert len(opens) == before
    assert again.manifest_digest == pushed.manifest_digest  # same bytes, same digest


def test_static_example_through_the_registry(
    registry: Registry, runner_layer: LayerFile, tmp_path: Path
) -> None:
    """``docker save`` before 25: no manifest and no layer sizes in the archive."""
    image = read_archive(static_threshold_image())
    pushed = push_with_runner(image, runner_layer, registry, "examples/static-threshold", "1")
    manifest = json.loads(registry.get_manifest("examples/static-threshold", "1")[0])
    assert manifest["layers"][-1]["digest"] == runner_layer.digest
    prepared = pull(
        registry, "examples/static-threshold", pushed.manifest_digest, ImageStore(tmp_path)
    )
    assert prepared.config.argv == ["/threshold"]
    assert prepared.config.user == image.config.user
    assert (prepared.rootfs / "threshold").stat().st_mode & 0o111
    assert (prepared.rootfs / RUNNER_BINARY_PATH.lstrip("/")).is_file()
    if bwrap_binary() is None:
        return
    # What the registry holds runs: the algorithm's own command as its own user.
    (tmp_path / "job").mkdir()
    roots = _roots(tmp_path / "job", compressed=False)
    done = _run(prepared, roots)
    assert done.returncode == 0, done.stderr
    assert json.loads((roots["output"] / "results.json").read_text()) == {
        "foreground_voxels": 29,
        "static": True,
    }


def test_damaged_blob_is_not_committed(registry: Registry) -> None:
    data = os.urandom(100_000)
    claimed = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(RegistryError, match="damaged"):
        registry.push_blob("damaged", claimed, io.BytesIO(data))
    assert registry.blob_size("damaged", claimed) is None


def test_missing_image_is_named(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no image nothing:v9"):
        pull(registry, "nothing", "v9", ImageStore(tmp_path))


def test_runner_layer_is_added_once(runner_layer: LayerFile, tmp_path: Path) -> None:
    image = read_archive(write_archive(tmp_path / "image.tar", _spec()))
    once = with_runner_layer(image.config_blob, runner_layer.digest)
    with pytest.raises(ImageError, match="already carries Gantry's runner"):
        with_runner_layer(once, runner_layer.digest)


def test_a_registry_that_asks_for_credentials(tmp_path: Path) -> None:
    _ensure_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # glibc's bcrypt, as the registry's htpasswd file wants it (crypt leaves Python 3.13).
        crypt = pytest.importorskip("crypt")
        hashed = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH))
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"pusher:{hashed}\n")
    data = os.urandom(50_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with local_registry(tmp_path / "registry", htpasswd=htpasswd) as url:
        with pytest.raises(RegistryError, match="needs a user name and password"):
            Registry(url).blob_size("private", digest)
        wrong = Registry(url, username="pusher", password="wrong")
        with pytest.raises(RegistryError, match="401"):
            wrong.blob_size("private", digest)
        registry = Registry(url, username="pusher", password="s3cret", chunk_bytes=16_384)
        assert registry.push_blob("private", digest, io.BytesIO(data)) == len(data)
        assert registry.blob_size("private", digest) == len(data)
        assert _blob(registry, "private", digest) == data


def test_ecr_registry_from_the_authorization_token(aws) -> None:
    ecr = boto3.client("ecr", region_name="us-east-1")
    registry = Registry.ecr(ecr)
    assert registry.url.startswith("https://")
    assert registry.username == "AWS"
    assert registry.password


def test_a_registry_that_exits_is_reported_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry process that dies while starting fails the start with its exit status, not
    after the wait a slow but live one gets."""
    monkeypatch.setattr("gantry.oci.local_registry.registry_binary", lambda: shutil.which("false"))
    with (
        pytest.raises(ImageError, match=r"registry exited with status 1 \(see .*registry.log\)"),
        local_registry(tmp_path / "registry", start_timeout=600),
    ):
        pass
