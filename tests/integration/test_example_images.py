"""The example images run from their own root filesystems: nothing of the host inside.

Each archive is built from Debian packages or a static binary (tests/example_images.py),
prepared by the image store, and run under bubblewrap with its root filesystem as ``/``,
its USER, ENV and WORKDIR, and grand-challenge's /input, /output and /opt/ml/model.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from batch_runner.sandbox import bwrap_binary
from gantry.oci import ImageStore, PreparedImage
from tests.example_images import (
    gc_template_image,
    gc_template_model,
    static_threshold_image,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bwrap_binary() is None, reason="bubblewrap is not installed"),
]

CLIENT = """
import json, time, urllib.request
# The server's start (its imports, the model) may take long on a busy machine.
deadline = time.monotonic() + 100
while True:
    try:
        urllib.request.urlopen("http://127.0.0.1:4743/health", timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
statuses = []
for _ in range(3):
    request = urllib.request.Request("http://127.0.0.1:4743/invoke", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        statuses.append(response.status)
    statuses.append(json.load(open("/output/results.json")))
print("CLIENT " + json.dumps(statuses))
"""


def _run(image: PreparedImage, roots: dict[str, Path], argv: list[str] | None = None):
    """Run the image's command (or ``argv``) as its USER, as a container runtime would."""
    config = image.config
    uid, _, gid = config.user.partition(":")
    if not uid.isdigit():
        uid = "1000"  # the examples' user; the runner resolves names in the image's passwd
    bwrap = bwrap_binary()
    assert bwrap is not None, "no bwrap"
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent"]
    args += ["--uid", uid, "--gid", gid or uid]
    args += ["--ro-bind", str(image.rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    args += ["--tmpfs", "/tmp", "--ro-bind", str(roots["input"]), "/input"]
    args += ["--bind", str(roots["output"]), "/output"]
    if "model" in roots:
        args += ["--ro-bind", str(roots["model"]), "/opt/ml/model"]
    if "extra" in roots:
        args += ["--ro-bind", str(roots["extra"]), "/tmp/extra"]
    args += ["--chdir", config.working_dir or "/", "--clearenv"]
    for name, value in config.env_map.items():
        args += ["--setenv", name, value]
    args += ["--", *(argv or config.argv)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _ct_image(path: Path, compressed: bool):
    import numpy
    import SimpleITK

    values = numpy.arange(-30, 30, dtype=numpy.int16).reshape(3, 4, 5)
    image = SimpleITK.GetImageFromArray(values)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -4.0, 3.5))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    path.parent.mkdir(parents=True, exist_ok=True)
    SimpleITK.WriteImage(image, str(path), compressed)
    return image


def _roots(tmp_path: Path, compressed: bool = True) -> dict[str, Path]:
    roots = {name: tmp_path / name for name in ("input", "output")}
    roots["output"].mkdir()
    _ct_image(roots["input"] / "images/ct-image/case.mha", compressed)
    # grand-challenge's inputs.json: the job's socket values, as its API shows them.
    socket = {"slug": "ct-image", "kind": "Image", "relative_path": "images/ct-image"}
    inputs = [
        {
            "pk": 1,
            "socket": socket,
            "interface": socket,
            "value": None,
            "file": None,
            "image": "https://example.test/api/v1/cases/images/1/",
        }
    ]
    (roots["input"] / "inputs.json").write_text(json.dumps(inputs))
    return roots


def _model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    with tarfile.open(gc_template_model()) as tar:
        # Our own tarball; the "data" filter only where this Python has it (3.11.4+).
        safe: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(target, **safe)
    return target


def _segmentation(output: Path):
    import SimpleITK

    (path,) = (output / "images/segmentation").glob("*.mha")
    return SimpleITK.ReadImage(str(path))


def _same_geometry(a, b) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == pytest.approx(b.GetSpacing())
    assert a.GetOrigin() == pytest.approx(b.GetOrigin())
    assert a.GetDirection() == pytest.approx(b.GetDirection())


def test_the_gc_template_image_runs_as_its_user_with_its_model(tmp_path):
    prepared = ImageStore(tmp_path / "store").prepare(gc_template_image("exec"))
    roots = _roots(tmp_path)
    roots["model"] = _model(tmp_path)

    done = _run(prepared, roots)

    assert done.returncode == 0, done.stderr
    assert "segmented 29 voxels" in done.stdout
    results = json.loads((roots["output"] / "results.json").read_text())
    assert results == {
        "foreground_voxels": 29,
        "threshold": 0,
        "model_version": "weights-v1",
        "input_slugs": ["ct-image"],
        "user": "user",
        "uid": 1000,
    }
    import SimpleITK

    source = SimpleITK.ReadImage(str(roots["input"] / "images/ct-image/case.mha"))
    _same_geometry(_segmentation(roots["output"]), source)


def test_the_gc_template_image_has_no_host_interpreter(tmp_path):
    prepared = ImageStore(tmp_path / "store").prepare(gc_template_image("exec"))
    config = prepared.config

    assert config.entrypoint == ["python3", "inference.py"] and not config.entrypoint_is_shell_form
    assert config.user == "user" and config.working_dir == "/opt/app"
    assert len(config.layers) == 3
    assert os.readlink(prepared.rootfs / "usr/bin/python3") == "python3.11"
    assert not (prepared.rootfs / "usr/share/doc").exists()  # the whiteout of the last layer
    assert (prepared.rootfs / "home/user").stat().st_uid in (1000, os.getuid())


def test_the_invoke_image_serves_three_tasks_with_one_model_load(tmp_path):
    prepared = ImageStore(tmp_path / "store").prepare(gc_template_image("invoke"))
    roots = _roots(tmp_path)
    roots["model"] = _model(tmp_path)
    roots["extra"] = tmp_path / "extra"
    roots["extra"].mkdir()
    (roots["extra"] / "client.py").write_text(CLIENT)
    assert prepared.config.api_method == "invoke" and prepared.config.cmd_is_shell_form

    # The server as the image's (shell-form) command, and a client inside the same sandbox.
    script = f"{prepared.config.argv[2]} & python3 /tmp/extra/client.py; kill $!"
    done = _run(prepared, roots, ["/bin/sh", "-c", script])

    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("CLIENT "))
    first, one, second, two, third, three = json.loads(line.removeprefix("CLIENT "))
    assert (first, second, third) == (201, 201, 201)
    assert [r["invocations"] for r in (one, two, three)] == [1, 2, 3]
    assert {r["model_loads"] for r in (one, two, three)} == {1}
    assert len({r["server_pid"] for r in (one, two, three)}) == 1
    assert three["model_version"] == "weights-v1" and three["user"] == "user"


def test_the_static_image_runs_without_shell_or_libc(tmp_path):
    prepared = ImageStore(tmp_path / "store").prepare(static_threshold_image())
    roots = _roots(tmp_path, compressed=False)
    mount_points = {"input", "output", "tmp", "proc", "dev", "sys", "opt"}

    assert set(os.listdir(prepared.rootfs)) - mount_points == {"threshold", "etc"}
    done = _run(prepared, roots)

    assert done.returncode == 0, done.stderr
    assert json.loads((roots["output"] / "results.json").read_text()) == {
        "foreground_voxels": 29,
        "static": True,
    }
    import SimpleITK

    source = SimpleITK.ReadImage(str(roots["input"] / "images/ct-image/case.mha"))
    _same_geometry(_segmentation(roots["output"]), source)


def test_the_static_image_fails_with_its_message_on_a_compressed_input(tmp_path):
    prepared = ImageStore(tmp_path / "store").prepare(static_threshold_image())

    done = _run(prepared, _roots(tmp_path, compressed=True))

    assert done.returncode == 1
    assert "compressed .mha images are not supported" in done.stderr
