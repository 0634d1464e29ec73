"""The one-machine stack's image registry: where imports push and the local backend pulls.

``open_registry(choice, root, exits)``: the CNCF distribution registry (Debian's
``docker-registry``) on loopback when it is installed, else an OCI image layout store
(``gantry.oci.layout``); ``choice`` forces one. Either way an import pushes with the same code
as on AWS (``gantry.oci.push.push_with_runner``) and jobs run what they pull back, so an image
keeps running after its uploaded archive is gone.

The appended runner layer is the static runner's (``make runner``) when it is built. The local
backend runs the runner on the host, not from the image, so without it the layer holds only the
``/input``, ``/output`` and ``/tmp`` mount points.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.oci.errors import ImageError
from gantry.oci.mutate import LayerFile

REGISTRY_CHOICES = ("auto", "distribution", "layout")
BUILT_RUNNER_LAYER = Path(__file__).resolve().parents[2] / "dist/runner/gantry-runner-layer.tar"


@dataclass(frozen=True)
class LocalRegistry:
    registry: Any  # gantry.oci.registry.Registry or gantry.oci.layout.OciLayout
    kind: str  # "distribution" or "layout"
    where: str  # its URL, or the layout's folder

    def describe(self) -> str:
        if self.kind == "distribution":
            return f"{self.where} (docker-registry)"
        return f"{self.where} (OCI image layout)"


def open_registry(choice: str, root: Path, exits: contextlib.ExitStack) -> LocalRegistry:
    """Start (or open) the registry under ``root``; ``exits`` stops it with the stack."""
    from gantry.oci.local_registry import INSTALL_HINT, local_registry, registry_binary

    if choice not in REGISTRY_CHOICES:
        raise ImageError(f"registry: '{choice}' is not one of {', '.join(REGISTRY_CHOICES)}")
    if choice == "distribution" and registry_binary() is None:
        raise ImageError(f"The registry 'distribution' needs docker-registry: {INSTALL_HINT}")
    if choice == "distribution" or (choice == "auto" and registry_binary() is not None):
        from gantry.oci.registry import Registry

        url = exits.enter_context(local_registry(root / "distribution"))
        return LocalRegistry(Registry(url), "distribution", url)
    from gantry.oci.layout import OciLayout

    layout = OciLayout(root / "layout")
    return LocalRegistry(layout, "layout", str(layout.root))


def runner_layer(folder: Path) -> LayerFile:
    """The layer an import appends (see the module's docstring)."""
    if BUILT_RUNNER_LAYER.exists():
        return LayerFile.read(BUILT_RUNNER_LAYER)
    path = folder / "mount-points-layer.tar"
    if not path.exists():
        buffer = io.BytesIO()
        # Fixed owners, modes and times: the same bytes (and digest) on every machine.
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, mode in (("input", 0o755), ("output", 0o755), ("tmp", 0o1777)):
                entry = tarfile.TarInfo(name)
                entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, mode, 0
                tar.addfile(entry)
        folder.mkdir(parents=True, exist_ok=True)
        work = path.with_suffix(".tmp")
        work.write_bytes(buffer.getvalue())
        work.replace(path)
    return LayerFile.read(path)
