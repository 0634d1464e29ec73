"""Build the static runner and its image layer (``make runner``).

Run by the build environment's Python (``make runner`` makes it from Debian's
``/usr/bin/python3`` and packaging/runner/requirements.txt). Writes, git-ignored:

- ``dist/runner/layer/``: the layer's tree, ready to copy or to run from —
  ``gantry/bin/gantry-runner`` (a static launcher), ``gantry/bin/bwrap`` (static bubblewrap),
  ``gantry/lib/gantry-runner/`` (the runner as a one-folder PyInstaller bundle carrying its own
  dynamic loader and C library) and the empty mount points ``input/``, ``output/``, ``tmp/``;
- ``dist/runner/gantry-runner-layer.tar``: the same tree as one uncompressed OCI layer;
- ``dist/runner/SHA256SUMS``.

Same inputs, same bytes: pinned Python packages, a pinned Debian source of bubblewrap,
``PYTHONHASHSEED=0``, ``SOURCE_DATE_EPOCH`` (default: the time of the last commit) for every
time stamp, and a tarball with sorted entries, root owners and normalised modes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "packaging" / "runner"
sys.path.insert(0, str(REPO))

from gantry.resources import RUNNER_BINARY_PATH, RUNNER_BWRAP_PATH  # noqa: E402

# bubblewrap from Debian 12's sources (the version Debian ships, its patches applied).
BWRAP_PACKAGE = "bubblewrap=0.8.0-2+deb12u1"
BWRAP_VERSION = "0.8.0"
BWRAP_SOURCES = {
    "bubblewrap_0.8.0.orig.tar.xz": (
        "957ad1149db9033db88e988b12bcebe349a445e1efc8a9b59ad2939a113d333a"
    ),
    "bubblewrap_0.8.0-2+deb12u1.debian.tar.xz": (
        "37917e8abdd6df1d1118f089e9cf1f9374e1b5bb21c8a70d7de4e9b5dfb10f6d"
    ),
}
BWRAP_C_FILES = ("bubblewrap.c", "bind-mount.c", "network.c", "utils.c")

# The C library and loader PyInstaller leaves to the host; the bundle carries its own.
LIBRARY_DIR = Path("/lib/x86_64-linux-gnu")
LOADER = "ld-linux-x86-64.so.2"
SYSTEM_LIBRARIES = (LOADER, "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1")
# The loader would preload whatever the image lists in /etc/ld.so.preload; the bundle's loader
# reads a path that cannot exist instead (procfs has no "-"), of the same length.
PRELOAD_LIST = (b"/etc/ld.so.preload", b"/proc/-/ld.preload")

BUNDLE_NAME = "gantry-runner"
LAYER_BIN = RUNNER_BINARY_PATH.rsplit("/", 1)[0].lstrip("/")  # gantry/bin
LAYER_BUNDLE = f"{LAYER_BIN.rsplit('/', 1)[0]}/lib/{BUNDLE_NAME}"  # gantry/lib/gantry-runner
MOUNT_POINTS = {"input": 0o755, "output": 0o755, "tmp": 0o1777}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, **kwargs)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_date_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else 0


def _source_lists(apt_dir: Path) -> None:
    """deb-src entries for the machine's own Debian archives, in a private apt directory."""
    parts = apt_dir / "sources.list.d"
    parts.mkdir(parents=True, exist_ok=True)
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = source.read_text()
        if "Types: deb" in text:
            (parts / source.name).write_text(re.sub(r"(?m)^Types:.*$", "Types: deb-src", text))
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        lines = [
            re.sub(r"^deb\s", "deb-src ", line)
            for line in listing.read_text().splitlines()
            if line.startswith("deb ")
        ]
        (parts / "main.list").write_text("\n".join(lines) + "\n")
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)


def fetch_bwrap_sources(work: Path) -> Path:
    """Debian's source package of bubblewrap, checked against the pinned digests."""
    downloads = work / "bwrap-src"
    if all(
        (downloads / name).exists() and sha256(downloads / name) == digest
        for name, digest in BWRAP_SOURCES.items()
    ):
        return downloads
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir(parents=True)
    apt_dir = work / "apt"
    _source_lists(apt_dir)
    options = [
        "-o",
        "Dir::Etc::SourceList=/dev/null",
        "-o",
        f"Dir::Etc::SourceParts={apt_dir / 'sources.list.d'}",
        "-o",
        f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o",
        "APT::Sandbox::User=root",
    ]
    run(["apt-get", "-q", *options, "update"], stdout=subprocess.DEVNULL)
    run(["apt-get", "-q", *options, "source", "--download-only", BWRAP_PACKAGE], cwd=downloads)
    for name, digest in BWRAP_SOURCES.items():
        if sha256(downloads / name) != digest:
            raise SystemExit(f"{name}: unexpected digest; expected {digest}")
    return downloads


def build_bwrap(work: Path, epoch: int) -> Path:
    downloads = fetch_bwrap_sources(work)
    tree = work / "bwrap-tree"
    shutil.rmtree(tree, ignore_errors=True)
    (dsc,) = downloads.glob("*.dsc")
    run(["dpkg-source", "--no-check", "-x", str(dsc), str(tree)], stdout=subprocess.DEVNULL)
    (tree / "config.h").write_text(f'#define PACKAGE_STRING "bubblewrap {BWRAP_VERSION}"\n')
    output = work / "bwrap"
    run(
        [
            "gcc",
            "-static",
            "-O2",
            "-s",
            "-D_GNU_SOURCE",
            "-include",
            "config.h",
            "-I.",
            f"-ffile-prefix-map={tree}=.",
            "-Wl,--build-id=none",
            "-o",
            str(output),
            *BWRAP_C_FILES,
            "-lcap",
        ],
        cwd=tree,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
    )
    return output


def build_launcher(work: Path) -> Path:
    output = work / "launcher"
    run(
        [
            "gcc",
            "-static",
            "-Os",
            "-s",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-ffile-prefix-map={HERE}=.",
            "-Wl,--build-id=none",
            "-o",
            str(output),
            str(HERE / "launcher.c"),
        ]
    )
    return output


def patch_exactly_once(path: Path, old: bytes, new: bytes) -> None:
    assert len(old) == len(new), (old, new)
    data = path.read_bytes()
    if data.count(old) != 1:
        raise SystemExit(f"{path.name}: expected {old!r} exactly once, found {data.count(old)}")
    path.write_bytes(data.replace(old, new))


def add_system_libraries(internal: Path) -> None:
    for name in SYSTEM_LIBRARIES:
        target = internal / name
        shutil.copyfile((LIBRARY_DIR / name).resolve(), target)
        target.chmod(0o755)
    patch_exactly_once(internal / LOADER, *PRELOAD_LIST)


def _needed(path: Path) -> list[str] | None:
    """The libraries an ELF file names as NEEDED, or None when it is not an ELF file."""
    with path.open("rb") as handle:
        if handle.read(4) != b"\x7fELF":
            return None
    done = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", done.stdout)


def check_closure(bundle: Path) -> None:
    """Every library any file of the bundle needs is in the bundle: none comes from the image."""
    internal = bundle / "_internal"
    present = {entry.name for entry in internal.iterdir()}
    missing: dict[str, list[str]] = {}
    for path in sorted(bundle.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        for library in _needed(path) or []:
            if library not in present:
                missing.setdefault(library, []).append(str(path.relative_to(bundle)))
    if missing:
        raise SystemExit(f"libraries the bundle needs but does not carry: {missing}")


def build_bundle(work: Path, epoch: int) -> Path:
    distpath = work / "pyinstaller-dist"
    env = {**os.environ, "PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": str(epoch)}
    run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            str(distpath),
            "--workpath",
            str(work / "pyinstaller-work"),
            str(HERE / "gantry-runner.spec"),
        ],
        cwd=REPO,
        env=env,
    )
    bundle = distpath / BUNDLE_NAME
    add_system_libraries(bundle / "_internal")
    check_closure(bundle)
    return bundle


def assemble(layer: Path, launcher: Path, bwrap: Path, bundle: Path) -> None:
    shutil.rmtree(layer, ignore_errors=True)
    (layer / LAYER_BIN).mkdir(parents=True)
    shutil.copyfile(launcher, layer / RUNNER_BINARY_PATH.lstrip("/"))
    shutil.copyfile(bwrap, layer / RUNNER_BWRAP_PATH.lstrip("/"))
    for name in (RUNNER_BINARY_PATH, RUNNER_BWRAP_PATH):
        (layer / name.lstrip("/")).chmod(0o755)
    shutil.copytree(bundle, layer / LAYER_BUNDLE, symlinks=True)
    for name, mode in MOUNT_POINTS.items():
        (layer / name).mkdir()
        (layer / name).chmod(mode)


def _normalised(info: tarfile.TarInfo, epoch: int, mode: int) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = epoch
    info.mode = mode
    return info


def write_layer(layer: Path, tarball: Path, epoch: int) -> None:
    """One layer: sorted entries, root-owned, every time stamp SOURCE_DATE_EPOCH."""
    entries = sorted(layer.rglob("*"), key=lambda path: path.relative_to(layer).as_posix())
    with tarfile.open(tarball, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries:
            name = path.relative_to(layer).as_posix()
            info = tar.gettarinfo(str(path), arcname=name)
            if info.isdir():
                mode = MOUNT_POINTS.get(name, 0o755)
            elif info.issym():
                mode = 0o777
            else:
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info = _normalised(info, epoch, mode)
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "runner")
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "runner")
    args = parser.parse_args(argv)
    epoch = source_date_epoch()
    args.work.mkdir(parents=True, exist_ok=True)
    bwrap = build_bwrap(args.work, epoch)
    launcher = build_launcher(args.work)
    bundle = build_bundle(args.work, epoch)
    args.out.mkdir(parents=True, exist_ok=True)
    layer = args.out / "layer"
    assemble(layer, launcher, bwrap, bundle)
    tarball = args.out / "gantry-runner-layer.tar"
    write_layer(layer, tarball, epoch)
    sums = [f"{sha256(path)}  {path.name}" for path in (tarball,)]
    (args.out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    size = sum(p.stat().st_size for p in layer.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"{layer / RUNNER_BINARY_PATH.lstrip('/')}")
    print(f"{tarball}: {tarball.stat().st_size / 1e6:.1f} MB ({size / 1e6:.1f} MB of files)")
    print(sums[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
