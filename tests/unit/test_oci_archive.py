"""Reading image archives: every layout and compression, the one runnable image, the errors."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gantry.oci import ImageError, read_archive
from tests.image_builder import ImageSpec, directory, file, write_archive


def _spec(**overrides) -> ImageSpec:
    values: dict[str, Any] = {
        "layers": [
            [directory("app"), file("app/main.py", "print('hi')\n")],
            [file("app/weights.bin", b"\0" * 10)],
        ],
        "cmd": ["python3", "/app/main.py"],
        "user": "algorithm",
        "env": ["PATH=/usr/bin:/bin", "MODE=fast", "MODE=slow"],
        "working_dir": "/app",
        "labels": {"org.grand-challenge.api-method": "invoke"},
    }
    values.update(overrides)
    return ImageSpec(**values)


@pytest.mark.parametrize(
    ("layout", "compression", "layer_compression"),
    [
        ("docker", "none", "none"),
        ("docker", "gzip", "none"),
        ("docker25", "none", "none"),
        ("docker25", "xz", "none"),
        ("oci", "none", "gzip"),
        ("oci", "gzip", "gzip"),
        ("oci", "xz", "none"),
    ],
)
def test_every_layout_gives_the_same_config(tmp_path, layout, compression, layer_compression):
    archive = write_archive(
        tmp_path / "image.tar",
        _spec(),
        layout=layout,
        compression=compression,
        layer_compression=layer_compression,
    )

    image = read_archive(archive)

    config = image.config
    assert config.architecture == "amd64" and config.os == "linux"
    assert config.cmd == ["python3", "/app/main.py"] and not config.cmd_is_shell_form
    assert config.entrypoint is None
    assert config.user == "algorithm" and config.working_dir == "/app"
    assert config.env_map == {"PATH": "/usr/bin:/bin", "MODE": "slow"}
    assert config.api_method == "invoke"
    assert len(config.layers) == 2 == len(image.layer_members)
    expected = "gzip" if layer_compression == "gzip" else "none"
    assert {layer.compression for layer in config.layers} == {expected}
    assert config.problems() == []
    assert config.repo_tags == ["example/algorithm:latest"]


def test_the_config_digest_is_the_sha256_of_the_config_blob(tmp_path):
    archive = write_archive(tmp_path / "image.tar", _spec(), layout="docker")

    config = read_archive(archive).config

    with tarfile.open(archive) as tar:
        name = json.load(tar.extractfile("manifest.json"))[0]["Config"]
        raw = tar.extractfile(name).read()
    assert config.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert read_archive(archive).config_blob == raw


def test_an_oci_image_keeps_its_manifest_and_streams_every_layer_blob(tmp_path):
    archive = write_archive(tmp_path / "image.tar", _spec(), layout="oci", layer_compression="gzip")

    image = read_archive(archive)

    manifest = json.loads(image.manifest_blob)
    assert manifest["config"]["digest"] == image.config.digest
    digests = {layer.digest for layer in image.config.layers}
    streamed = {
        layer.digest: "sha256:" + hashlib.sha256(stream.read()).hexdigest()
        for layer, stream in image.layer_streams(digests)
    }
    assert streamed == {digest: digest for digest in digests}


def test_shell_form_stays_distinguishable(tmp_path):
    spec = _spec(cmd=["/bin/sh", "-c", "python3 /app/main.py > /output/log"])

    config = read_archive(write_archive(tmp_path / "image.tar", spec)).config

    assert config.cmd_is_shell_form
    assert config.argv == ["/bin/sh", "-c", "python3 /app/main.py > /output/log"]


def test_buildkit_attestation_manifests_are_ignored(tmp_path):
    archive = write_archive(tmp_path / "image.tar", _spec(), layout="docker25", attestation=True)

    image = read_archive(archive)

    assert image.config.cmd == ["python3", "/app/main.py"]
    assert len(image.config.layers) == 2


@pytest.mark.parametrize("layout", ["docker", "oci"])
def test_several_images_are_refused(tmp_path, layout):
    archive = write_archive(
        tmp_path / "image.tar", [_spec(), _spec(cmd=["other"], tag="b:1")], layout=layout
    )

    with pytest.raises(ImageError, match=r"holds 2 images.*save exactly one image"):
        read_archive(archive)


def test_an_archive_without_manifest_or_index_is_refused(tmp_path):
    archive = tmp_path / "files.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(__file__, "notes.txt")

    with pytest.raises(ImageError, match=r"neither manifest.json .* nor index.json"):
        read_archive(archive)


def test_a_file_that_is_not_a_tar_is_refused(tmp_path):
    path = tmp_path / "image.tar"
    path.write_bytes(b"this is not an archive" * 100)

    with pytest.raises(ImageError, match="not a tar archive"):
        read_archive(path)


def test_a_manifest_without_config_is_refused(tmp_path):
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "manifest.json", json.dumps([{"RepoTags": ["a:b"], "Layers": []}]).encode())

    with pytest.raises(ImageError, match="names no Config"):
        read_archive(archive)


def test_a_config_missing_from_the_archive_is_named(tmp_path):
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "manifest.json", json.dumps([{"Config": "abc.json", "Layers": []}]).encode())

    with pytest.raises(ImageError, match=r"lacks 'abc.json'"):
        read_archive(archive)


def test_an_image_for_another_platform_says_which(tmp_path):
    spec = _spec(architecture="arm64")

    config = read_archive(write_archive(tmp_path / "image.tar", spec)).config

    assert config.problems() == [
        "The image is built for linux/arm64; Gantry runs linux/amd64 images: build it with "
        "--platform linux/amd64"
    ]


@pytest.mark.parametrize("user", ["", "root", "0", "0:0", "root:staff"])
def test_root_users_are_refused(tmp_path, user):
    config = read_archive(write_archive(tmp_path / "image.tar", _spec(user=user))).config

    with pytest.raises(ImageError, match=r"runs as root .*non-root user"):
        config.check_runnable()


def test_an_image_without_a_command_is_refused(tmp_path):
    config = read_archive(write_archive(tmp_path / "image.tar", _spec(cmd=None))).config

    with pytest.raises(ImageError, match="neither ENTRYPOINT nor CMD"):
        config.check_runnable()


def test_a_tampered_config_is_refused(tmp_path):
    archive = write_archive(tmp_path / "image.tar", _spec(), layout="oci")
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(archive) as source, tarfile.open(tampered, "w") as target:
        index = json.load(source.extractfile("index.json"))
        manifest_name = "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(source.extractfile(manifest_name))
        config_name = "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name == config_name:
                data = data.replace(b'"User":"algorithm"', b'"User":"other"')
                member.size = len(data)
            target.addfile(member, None if data is None else __import__("io").BytesIO(data))

    with pytest.raises(ImageError, match="does not match its digest"):
        read_archive(tampered)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_big_layers_are_not_held_in_memory(tmp_path, monkeypatch):
    """Only JSON members are kept from the first pass; layers are streamed later."""
    from gantry.oci import archive as archive_module

    spec = _spec(layers=[[file("big.bin", b"x" * 3_000_000)]])
    path: Path = write_archive(tmp_path / "image.tar", spec, layout="docker25")
    kept: list[dict] = []
    real_scan = archive_module._scan
    monkeypatch.setattr(
        archive_module, "_scan", lambda p: kept.append(real_scan(p).kept) or real_scan(p)
    )

    read_archive(path)

    assert sum(len(v) for v in kept[0].values()) < 10_000


class _OneWayStream:
    """An S3-like body: read() only, no seek, no tell."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("rb")

    def read(self, size: int = -1) -> bytes:
        return self._handle.read(size)

    def __enter__(self) -> _OneWayStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_an_archive_streams_from_an_opener_in_two_reads(tmp_path, compression):
    from gantry.oci import ImageStore

    path = write_archive(
        tmp_path / "image.tar", _spec(), layout="docker25", compression=compression
    )
    opened: list[int] = []

    def opener() -> _OneWayStream:
        opened.append(1)
        return _OneWayStream(path)

    image = read_archive(opener)
    prepared = ImageStore(tmp_path / "store").add(image)

    assert (prepared.rootfs / "app/main.py").read_text() == "print('hi')\n"
    assert len(opened) == 2  # the metadata pass and the layer pass


def _oci_with_manifest(path: Path, manifest: bytes, *, nested_index: bytes | None = None) -> Path:
    """An OCI layout whose index names ``manifest`` (through ``nested_index`` if given),
    each blob under its true digest: hostile content, not a damaged archive."""

    def blob(tar: tarfile.TarFile, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _add(tar, "blobs/sha256/" + digest[7:], data)
        return digest

    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        target = blob(tar, manifest)
        media_type = "application/vnd.oci.image.manifest.v1+json"
        if nested_index is not None:
            target = blob(tar, nested_index)
            media_type = "application/vnd.oci.image.index.v1+json"
        index = {"schemaVersion": 2, "manifests": [{"mediaType": media_type, "digest": target}]}
        _add(tar, "index.json", json.dumps(index).encode())
    return path


@pytest.mark.parametrize(
    ("manifest", "nested_index", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, None, "nested more than"),
        (b"{not json", None, "is not valid JSON"),
        (b"{}", b"[1, 2]", "is not a JSON object"),
        (b"{}", b"{" * 3 + b"oops", "is not valid JSON"),
    ],
)
def test_hostile_manifests_are_refused_with_a_reason(tmp_path, manifest, nested_index, message):
    archive = _oci_with_manifest(tmp_path / "image.tar", manifest, nested_index=nested_index)
    with pytest.raises(ImageError, match=message):
        read_archive(archive)


def test_an_index_nested_too_deeply_is_refused(tmp_path):
    path = tmp_path / "image.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ImageError, match="nested more than"):
        read_archive(path)


@pytest.mark.parametrize("extra", ["many", "long"])
def test_an_archive_of_very_many_or_long_names_is_refused(tmp_path, extra):
    # The first pass keeps every member's name: millions of them (or names of megabytes, as
    # pax headers allow) would exhaust the memory of the import function reading it.
    image = write_archive(tmp_path / "image.tar", _spec())
    padded = tmp_path / "padded.tar"
    with tarfile.open(image) as source, tarfile.open(padded, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in source:
            tar.addfile(info, source.extractfile(info) if info.isfile() else None)
        names = [f"junk/{n}" for n in range(10_001)] if extra == "many" else ["x" * 70_000]
        for name in names:
            tar.addfile(tarfile.TarInfo(name))

    with pytest.raises(ImageError, match=r"more than 10000 members|a member name longer than"):
        read_archive(padded)
