"""The example algorithms of examples/algorithms/ as real multi-layer image archives.

Built without Docker from files available offline, as their Dockerfiles describe:

- ``gc_template_image("exec" | "invoke")``: Debian's python3 unpacked from its packages
  (``apt-get download`` + ``dpkg-deb -x``), a layer adding the non-root ``user`` (uid 1000)
  and one with the code that also deletes ``/usr/share/doc`` (a whiteout);
- ``static_threshold_image()``: ``threshold.c`` compiled with ``gcc -static``, alone in the
  image (no shell, no libc), in two layers;
- ``gc_template_model()``: the model tarball (``model/`` of the example).

Archives are cached by the hash of everything that goes into them (``cache_dir()/images``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.image_builder import (
    ImageSpec,
    Layout,
    cache_dir,
    cache_lock,
    debian_root,
    directory,
    file,
    from_dir,
    whiteout,
    write_archive,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "algorithms"
GC_TEMPLATE = EXAMPLES / "gc-template"
STATIC_THRESHOLD = EXAMPLES / "static-threshold"
# Debian bookworm's python3 without numpy or SimpleITK, and dash as /bin/sh.
PYTHON_PACKAGES = (
    "libc6",
    "zlib1g",
    "libexpat1",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
    "python3-minimal",
    "dash",
)
USER_UID = 1000
PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
GROUP = "root:x:0:\nuser:x:1000:\n"


def _key(*parts: object) -> str:
    digest = hashlib.sha256()
    for source in (Path(__file__), Path(__file__).with_name("image_builder.py")):
        digest.update(source.read_bytes())
    for part in parts:
        if isinstance(part, Path):
            for path in sorted(p for p in part.rglob("*") if p.is_file()):
                digest.update(path.name.encode() + path.read_bytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


def _cached(name: str, key: str, build: Callable[[Path], None], suffix: str = ".tar") -> Path:
    folder = cache_dir() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{key}{suffix}"
    if not target.exists():
        with cache_lock(name):
            if not target.exists():
                build(target)  # renamed into place when complete: readers never see half
    return target


def gc_template_image(mode: str = "exec") -> Path:
    """The grand-challenge-style example, ``exec`` (exec-form ENTRYPOINT) or ``invoke``."""
    if mode not in ("exec", "invoke"):
        raise ValueError(mode)

    def build(target: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            userland = debian_root(PYTHON_PACKAGES, Path(scratch) / "root")
            code = ["mha.py", "inference.py"] + (["server.py"] if mode == "invoke" else [])
            layers = [
                from_dir(userland),
                [
                    directory("etc"),
                    file("etc/passwd", PASSWD),
                    file("etc/group", GROUP),
                    directory("home"),
                    directory("home/user", mode=0o700, uid=USER_UID, gid=USER_UID),
                ],
                [
                    whiteout("usr/share/doc"),
                    directory("opt"),
                    directory("opt/app", uid=USER_UID, gid=USER_UID),
                    *(
                        file(
                            f"opt/app/{name}",
                            (GC_TEMPLATE / name).read_bytes(),
                            uid=USER_UID,
                            gid=USER_UID,
                        )
                        for name in code
                    ),
                ],
            ]
            spec = ImageSpec(
                layers=layers,
                user="user",
                working_dir="/opt/app",
                env=["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED=1"],
                tag=f"examples/gc-template-{mode}:latest",
            )
            if mode == "exec":
                spec.entrypoint = ["python3", "inference.py"]
            else:
                spec.cmd = ["/bin/sh", "-c", "python3 server.py"]
                spec.labels = {"org.grand-challenge.api-method": "invoke"}
            layout: Layout = "docker25" if mode == "exec" else "oci"
            write_archive(target, spec, layout=layout, layer_compression="gzip")

    return _cached(f"gc-template-{mode}", _key(mode, PYTHON_PACKAGES, GC_TEMPLATE), build)


def static_threshold_image() -> Path:
    """The static example: one executable, no shell, no libc; a docker save before 25."""

    def build(target: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            binary = Path(scratch) / "threshold"
            _ensure_compiler()
            subprocess.run(
                ["gcc", "-static", "-O2", "-o", str(binary), str(STATIC_THRESHOLD / "threshold.c")],
                check=True,
            )
            spec = ImageSpec(
                layers=[
                    [file("threshold", binary.read_bytes(), mode=0o755)],
                    [directory("etc"), file("etc/passwd", "algorithm:x:1000:1000::/:/none\n")],
                ],
                entrypoint=["/threshold"],
                user=f"{USER_UID}:{USER_UID}",
                env=[],
                tag="examples/static-threshold:latest",
            )
            write_archive(target, spec, layout="docker")

    return _cached("static-threshold", _key(STATIC_THRESHOLD), build)


def _ensure_compiler() -> None:
    """gcc with a static libc; installed from Debian's archive when missing and root (CI)."""
    if shutil.which("gcc") and Path("/usr/lib/x86_64-linux-gnu/libc.a").exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError("building the static example needs gcc and libc6-dev")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "gcc", "libc6-dev"]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(install, check=True)


def gc_template_model() -> Path:
    """The example's model tarball: ``weights.json`` at its root, as /opt/ml/model gets it."""

    def build(target: Path) -> None:
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(GC_TEMPLATE / "model" / "weights.json", "weights.json")
        partial.rename(target)

    return _cached("gc-template-model", _key(GC_TEMPLATE / "model"), build, ".tar.gz")
