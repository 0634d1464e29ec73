"""The one-machine registry: the CNCF distribution registry (Debian's ``docker-registry``) on
loopback, its storage in a folder, so the local stack pushes and pulls with the same code as
ECR (``gantry.oci.registry``). It answers within a second of starting."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from gantry.oci.errors import ImageError

REGISTRY_BINARY = "docker-registry"
INSTALL_HINT = "install it with 'apt-get install docker-registry' (Debian and Ubuntu)"


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(storage: Path, port: int, htpasswd: Path | None) -> str:
    text = (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if htpasswd is not None:
        text += f"auth:\n  htpasswd:\n    realm: gantry\n    path: {htpasswd}\n"
    return text


@contextlib.contextmanager
def local_registry(
    root: str | Path, start_timeout: float = 30.0, htpasswd: Path | None = None
) -> Iterator[str]:
    """Run a registry storing under ``root``; yields its URL (``http://127.0.0.1:PORT``).

    ``htpasswd``: a file of ``user:<bcrypt hash>`` lines; the registry then asks for them
    (HTTP Basic)."""
    binary = registry_binary()
    if binary is None:
        raise ImageError(f"The local registry needs '{REGISTRY_BINARY}': {INSTALL_HINT}")
    root = Path(root)
    (root / "storage").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = root / "config.yml"
    config.write_text(_config(root / "storage", port, htpasswd))
    log = (root / "registry.log").open("ab")
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log, stderr=log, preexec_fn=_die_with_parent
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
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
                    raise ImageError(
                        f"The local registry did not start (see {root / 'registry.log'})"
                    ) from None
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
