"""Append Gantry's runner layer to an image: a new config and manifest, no container engine.

The new image starts the runner, not the algorithm: Batch's command and SageMaker's entry point
are the runner's whole command line (``gantry.compute.base.runner_command``), so ENTRYPOINT is
cleared and CMD names the runner. It runs as root so that it can prepare ``/input`` and
``/output`` and then drop to the image's own USER. What the algorithm asked for travels in the
environment the runner reads (``gantry.resources``): ENTRYPOINT, CMD, USER, ENV, WORKDIR and
the api-method label. ``algorithm_config`` reads them back, so an image pulled from the
registry runs as the algorithm's author built it.

Digests follow the OCI image spec: the appended layer is an uncompressed tar, so its blob
digest is also its diff_id; the config and manifest are pushed as the exact bytes hashed here.
The manifest is always an OCI image manifest: Docker's layer media types name the same bytes
(``rootfs.diff.tar`` = ``layer.v1.tar``, ``…tar.gzip`` = ``…tar+gzip``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.oci.config import (
    MEDIA_TYPE_DOCKER_LAYER,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_ZSTD,
    ImageConfig,
)
from gantry.oci.errors import ImageError
from gantry.resources import (
    API_METHOD_EXEC,
    ENV_ALGORITHM_CMD,
    ENV_ALGORITHM_ENTRYPOINT,
    ENV_ALGORITHM_ENV,
    ENV_ALGORITHM_USER,
    ENV_ALGORITHM_WORKDIR,
    ENV_API_METHOD,
    LABEL_API_METHOD,
    RUNNER_BINARY_PATH,
)

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
RUNNER_HISTORY = "gantry runner layer (/gantry/bin/gantry-runner, /gantry/bin/bwrap)"
# The variables this module writes; an image already carrying them went through it before.
RUNNER_VARIABLES = (
    ENV_ALGORITHM_ENTRYPOINT,
    ENV_ALGORITHM_CMD,
    ENV_ALGORITHM_USER,
    ENV_ALGORITHM_ENV,
    ENV_ALGORITHM_WORKDIR,
    ENV_API_METHOD,
)
_OCI_LAYER_TYPES = {
    MEDIA_TYPE_DOCKER_LAYER: MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_DOCKER_LAYER_GZIP: MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR: MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_GZIP: MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD: MEDIA_TYPE_LAYER_ZSTD,
}


@dataclass(frozen=True)
class LayerFile:
    """An uncompressed layer tar on disk (``dist/runner/gantry-runner-layer.tar``)."""

    path: Path
    digest: str  # of the file; also its diff_id, the tar being uncompressed
    size: int

    @classmethod
    def read(cls, path: str | Path) -> LayerFile:
        path = Path(path)
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        if size < 1024 or size % 512:
            raise ImageError(f"{path} is not an uncompressed tar (size {size})")
        return cls(path, "sha256:" + digest.hexdigest(), size)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _b64j(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def with_runner_layer(config_blob: bytes, runner_diff_id: str) -> bytes:
    """The config of the image with the runner layer on top (bytes to push as they are)."""
    try:
        document = json.loads(config_blob)
    except ValueError as error:
        raise ImageError(f"The image config is not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("rootfs"), dict):
        raise ImageError("The image config has no rootfs: it is not an image config")
    settings = document.get("config") or {}
    env = [str(item) for item in settings.get("Env") or []]
    if any(item.partition("=")[0] in RUNNER_VARIABLES for item in env):
        raise ImageError(
            "The image already carries Gantry's runner (its ENV sets "
            f"{ENV_ALGORITHM_ENV}): upload the algorithm's own image"
        )
    labels = settings.get("Labels") or {}
    runner_env = {
        ENV_ALGORITHM_USER: str(settings.get("User") or ""),
        ENV_ALGORITHM_ENV: _b64j(env),
        ENV_ALGORITHM_WORKDIR: str(settings.get("WorkingDir") or "/"),
        ENV_API_METHOD: str(labels.get(LABEL_API_METHOD) or API_METHOD_EXEC),
    }
    if settings.get("Entrypoint"):
        runner_env[ENV_ALGORITHM_ENTRYPOINT] = _b64j(settings["Entrypoint"])
    if settings.get("Cmd"):
        runner_env[ENV_ALGORITHM_CMD] = _b64j(settings["Cmd"])
    settings = {
        **settings,
        "Env": [*env, *(f"{name}={value}" for name, value in runner_env.items())],
        "Cmd": [RUNNER_BINARY_PATH],
        "User": "0",
    }
    settings.pop("Entrypoint", None)
    document = {
        **document,
        "config": settings,
        "rootfs": {
            **document["rootfs"],
            "diff_ids": [*document["rootfs"].get("diff_ids", []), runner_diff_id],
        },
    }
    # History is optional, but when present its non-empty entries pair with the layers.
    if isinstance(document.get("history"), list):
        document["history"] = [*document["history"], {"created_by": RUNNER_HISTORY}]
    return json.dumps(document, separators=(",", ":")).encode()


def oci_layer_type(media_type: str) -> str:
    try:
        return _OCI_LAYER_TYPES[media_type]
    except KeyError:
        raise ImageError(f"The layer media type '{media_type}' cannot be pushed") from None


def oci_manifest(config_blob: bytes, layers: list[tuple[str, str, int]]) -> bytes:
    """An OCI image manifest for ``config_blob`` and ``layers`` (media type, digest, size)."""
    document = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_OCI_CONFIG,
            "digest": sha256_digest(config_blob),
            "size": len(config_blob),
        },
        "layers": [
            {"mediaType": oci_layer_type(media_type), "digest": digest, "size": size}
            for media_type, digest, size in layers
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _decoded(env: dict[str, str], name: str) -> Any:
    try:
        return json.loads(base64.b64decode(env[name], validate=True))
    except (ValueError, binascii.Error):
        raise ImageError(f"The image's {name} is not base64 of JSON") from None


def algorithm_config(config: ImageConfig) -> ImageConfig:
    """The algorithm's own settings of an image that carries the runner layer.

    The digest (the pushed config's) and the layers (the runner's included) stay, so the
    image store unpacks what the registry holds; an image without the runner is returned as
    it is.
    """
    env = config.env_map
    if ENV_ALGORITHM_ENV not in env:
        return config
    original_env = _decoded(env, ENV_ALGORITHM_ENV)
    return config.model_copy(
        update={
            "entrypoint": _decoded(env, ENV_ALGORITHM_ENTRYPOINT)
            if ENV_ALGORITHM_ENTRYPOINT in env
            else None,
            "cmd": _decoded(env, ENV_ALGORITHM_CMD) if ENV_ALGORITHM_CMD in env else None,
            "user": env.get(ENV_ALGORITHM_USER, ""),
            "env": original_env,
            "working_dir": env.get(ENV_ALGORITHM_WORKDIR, ""),
        }
    )
