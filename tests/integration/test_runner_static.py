"""The static runner (``make runner``): its layer, and jobs run in roots with nothing else.

Skipped with the reason when the runner is not built; CI builds it (``.ci/run``).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_runner.sandbox import bwrap_binary
from gantry.resources import RUNNER_BINARY_PATH, RUNNER_BWRAP_PATH
from tests.integration.runner_binary import (
    BUILT_LAYER_TAR,
    NOT_BUILT,
    built_binary,
    run_binary,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(built_binary() is None, reason=NOT_BUILT),
]

PT_INTERP = 3


def layer_root() -> Path:
    """The layer's tree: the folder that holds gantry/bin/gantry-runner."""
    binary = built_binary()
    assert binary is not None
    return binary.parents[len(Path(RUNNER_BINARY_PATH).parts) - 2]


def needs_a_loader(path: Path) -> bool:
    """Whether an ELF executable names a dynamic loader (PT_INTERP): static ones do not."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not a 64-bit ELF file"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    entry_size, count = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * entry_size)[0] for i in range(count)]
    return PT_INTERP in types


def test_the_layer_is_one_tarball_of_static_executables_and_mount_points():
    if not BUILT_LAYER_TAR.is_file():
        pytest.skip(NOT_BUILT)
    with tarfile.open(BUILT_LAYER_TAR) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert {name.split("/")[0] for name in members} == {"gantry", "input", "output", "tmp"}
    for mount in ("input", "output", "tmp"):
        assert members[mount].isdir()
        assert not [name for name in members if name.startswith(f"{mount}/")]
    assert members["tmp"].mode == 0o1777
    for path in (RUNNER_BINARY_PATH, RUNNER_BWRAP_PATH):
        assert members[path.lstrip("/")].isfile()
        assert members[path.lstrip("/")].mode == 0o755
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(0, 0, members["gantry"].mtime)}
    root = layer_root()
    for path in (RUNNER_BINARY_PATH, RUNNER_BWRAP_PATH):
        assert not needs_a_loader(root / path.lstrip("/")), f"{path} is not static"


@pytest.fixture
def job_roots() -> Iterator[Path]:
    # World-traversable: the algorithm runs as nobody.
    root = Path(tempfile.mkdtemp(prefix="gantry-static-runner-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def hostile_image(layer: Path, under: Path) -> Path:
    """The layer on an image whose C library and loader are garbage and that preloads a
    library that kills whatever loads it: a runner that loads anything of it dies."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the preloaded library")
    root = under / "rootfs"
    shutil.copytree(layer, root, symlinks=True)
    libs = root / "lib" / "x86_64-linux-gnu"
    libs.mkdir(parents=True)
    (root / "lib64").mkdir()
    for garbage in (libs / "libc.so.6", root / "lib64" / "ld-linux-x86-64.so.2"):
        garbage.write_bytes(b"not a library")
    source = under / "kill.c"
    source.write_text(
        "#include <unistd.h>\n__attribute__((constructor)) static void kill(void) { _exit(99); }\n"
    )
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-nostdlib", "-o", str(libs / "libkill.so"), str(source)],
        check=True,
    )
    (root / "etc").mkdir()
    (root / "etc" / "ld.so.preload").write_text("/lib/x86_64-linux-gnu/libkill.so\n")
    return root


@pytest.mark.parametrize("image", ["layer only", "hostile libraries"])
def test_a_job_runs_in_a_root_that_holds_only_the_layer(runner_s3, runner_job, job_roots, image):
    """The runner, its sandbox and an algorithm (the static runner's --version, the one
    program there is) in a root filesystem with no libc, no Python, no shell."""
    bwrap = bwrap_binary()
    if bwrap is None:
        pytest.skip("bwrap is needed to make the root filesystem /")
    root = layer_root() if image == "layer only" else hostile_image(layer_root(), job_roots)
    (job_roots / "input").mkdir()
    (job_roots / "output").mkdir()
    for folder in ("input", "output"):
        (job_roots / folder).chmod(0o777)
    env = {
        "PATH": "/gantry/bin",
        **runner_s3.env(),
        "GANTRY_SIGNING_KEY_HEX": runner_job.key,
        "GANTRY_SANDBOX": "required",
        "GANTRY_KILL_GRACE_SECONDS": "1",
    }
    if image != "layer only":
        env["LD_PRELOAD"] = "/lib/x86_64-linux-gnu/libkill.so"
        env["LD_LIBRARY_PATH"] = "/lib/x86_64-linux-gnu"
    # A root of its own: the root filesystem's entries and nothing of this machine.
    argv = [bwrap, "--tmpfs", "/"]
    for entry in sorted(root.iterdir()):
        argv += ["--ro-bind", str(entry), f"/{entry.name}"]
    # This machine's /proc as a container runtime gives it (bwrap's own --proc puts read-only
    # mounts on /proc/sys, which keep a nested user namespace from mounting its /proc).
    argv += ["--bind", "/proc", "/proc", "--dev", "/dev"]
    argv += ["--bind", str(job_roots / "input"), "/input"]
    argv += ["--bind", str(job_roots / "output"), "/output", "--tmpfs", "/tmp"]
    argv += ["--die-with-parent", "--"]
    argv += [RUNNER_BINARY_PATH, "invoke", "--task", json.dumps(runner_job.task())]
    argv += ["--", RUNNER_BINARY_PATH, "--version"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = runner_job.verified()
    assert result.return_code == 0, (result.user_safe_error_message, done.stdout)
    assert result.user_process_last_stdout_lines[-1].startswith("gantry-runner ")


def test_loader_variables_skip_the_runner_and_reach_the_algorithm(
    runner_s3, runner_job, monkeypatch
):
    """LD_PRELOAD belongs to the algorithm's environment; the runner never loads it."""
    binary = built_binary()
    assert binary is not None
    config = runner_job.config(["/usr/bin/env"], sandbox="off")
    preload = "/nonexistent/libgantry-test-preload.so"
    monkeypatch.setenv("LD_PRELOAD", preload)
    done, _ = run_binary(binary, runner_job.task(), config, runner_s3.env())
    assert done.returncode == 0, done.stderr
    assert "cannot be preloaded" not in done.stderr
    result = runner_job.verified()
    assert f"LD_PRELOAD={preload}" in result.user_process_last_stdout_lines
    assert not [line for line in result.user_process_last_stdout_lines if "SAVED" in line]
