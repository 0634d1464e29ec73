"""A real root filesystem for the runner's image tests: Debian's static busybox, offline.

``busybox-static`` is unpacked from its Debian package (``tests/image_builder.debian_root``,
which caches the download) into a world-traversable folder, with one link per applet, an
``/etc/passwd`` and ``/etc/group`` that hold a non-root user, and a WORKDIR. Nothing of the
host (no interpreter, no library) is in it: a test that passes ran the image's own binaries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.image_builder import debian_root

PASSWD = """root:x:0:0:root:/root:/bin/sh
algorithm:x:1000:1000:Algorithm:/home/algorithm:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
staff:x:50:algorithm
algorithm:x:1000:
nogroup:x:65534:
"""
WORKDIR = "/srv/app"
USER_UID = 1000


def build_busybox_root(parent: Path | None = None) -> Path:
    """A fresh image root filesystem; the caller removes it (``shutil.rmtree``)."""
    root = Path(tempfile.mkdtemp(prefix="gantry-rootfs-", dir=parent))
    root.chmod(0o755)
    debian_root(["busybox-static"], root)
    busybox = root / "bin" / "busybox"
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    # As in Debian's own images: /usr/bin reaches the same tools.
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (root / "usr" / "bin" / "env").symlink_to("/bin/busybox")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    for folder in ("home/algorithm", WORKDIR.lstrip("/"), "root"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "root").chmod(0o700)
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            if not path.is_symlink() and path != root / "root":
                path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return root


def add_file(root: Path, path: str, text: str, mode: int = 0o755) -> Path:
    """A file of the image (a script, a model loader); parents are made readable."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
    return target


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def busybox_archive(path: Path, files: dict[str, str] | None = None, **config: object) -> Path:
    """An image archive of the busybox root (two layers: the userland, then the app, which
    holds ``files``: executable scripts by path under the WORKDIR)."""
    from tests.image_builder import ImageSpec, from_dir, write_archive

    root = build_busybox_root()
    try:
        for name, text in (files or {}).items():
            add_file(root, f"{WORKDIR}/{name}", text)
        app = root / WORKDIR.lstrip("/")
        base = [e for e in from_dir(root) if not e.name.startswith(WORKDIR.lstrip("/") + "/")]
        spec = ImageSpec(
            layers=[base, from_dir(app, prefix=WORKDIR)],
            **{"user": "algorithm", "working_dir": WORKDIR, **config},  # type: ignore[arg-type]
        )
        return write_archive(path, spec)
    finally:
        remove(root)
