"""The one-machine registry: the CNCF distribution registry (Debian's ``docker-registry``) on
loopback, its storage in a folder, so the local stack pushes and pulls with the same code as
ECR (``gantry.oci.registry``). It answers within a second of starting."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from gantry.oci.errors import ImageError

REGISTRY_BINARY = "docker-registry"
INSTALL_HINT = "install it with 'apt-get install docker-registry' (Debian and Ubuntu)"
_TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp


def registry_binary() -> str | None:
    return shutil.which(REGISTRY_BINARY) or (
        f"/usr/bin/{REGISTRY_BINARY}" if Path(f"/usr/bin/{REGISTRY_BINARY}").exists() else None
    )


def _die_with_parent() -> None:
    """A parent killed outright (SIGKILL, out of memory) leaves no registry behind."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _listening_port(pid: int) -> int | None:
    """The loopback TCP port process ``pid`` listens on (one of its sockets in LISTEN state,
    found by inode in /proc), None while it listens on none yet."""
    sockets = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    sockets.add(target[len("socket:[") : -1])
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in table:
        # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        fields = row.split()
        if len(fields) > 9 and fields[3] == _TCP_LISTEN and fields[9] in sockets:
            return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def _config(storage: Path, htpasswd: Path | None) -> str:
    text = (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        # Port 0: the kernel picks a free one as the registry binds it (read back from
        # /proc), so no other process can take it between choosing and binding.
        "http:\n  addr: 127.0.0.1:0\n"
    )
    if htpasswd is not None:
        text += f"auth:\n  htpasswd:\n    realm: gantry\n    path: {htpasswd}\n"
    return text


def _not_started(root: Path, process: subprocess.Popen[bytes], waited: float) -> str:
    why = (
        f"exited with status {process.returncode}"
        if process.poll() is not None
        else f"did not answer within {waited:g} s"
    )
    return f"The local registry {why} (see {root / 'registry.log'})"


@contextlib.contextmanager
def local_registry(
    root: str | Path, start_timeout: float = 120.0, htpasswd: Path | None = None
) -> Iterator[str]:
    """Run a registry storing under ``root``; yields its URL (``http://127.0.0.1:PORT``).

    A registry that exits fails at once; one still running gets ``start_timeout`` seconds to
    answer, generous because a loaded machine (measured: load 13 on 2 cores) can keep a
    healthy one silent for over 30 s, and giving up stops the whole stack.

    ``htpasswd``: a file of ``user:<bcrypt hash>`` lines; the registry then asks for them
    (HTTP Basic)."""
    binary = registry_binary()
    if binary is None:
        raise ImageError(f"The local registry needs '{REGISTRY_BINARY}': {INSTALL_HINT}")
    root = Path(root)
    (root / "storage").mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(_config(root / "storage", htpasswd))
    log = (root / "registry.log").open("ab")
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log, stderr=log, preexec_fn=_die_with_parent
    )
    try:
        deadline = time.monotonic() + start_timeout
        while (port := _listening_port(process.pid)) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ImageError(_not_started(root, process, start_timeout))
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                with urllib.request.urlopen(url + "/v2/", timeout=2):
                    break
            except urllib.error.HTTPError as error:
                if error.code == 401:
                    break  # up, and asking for credentials
                raise
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ImageError(_not_started(root, process, start_timeout)) from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
