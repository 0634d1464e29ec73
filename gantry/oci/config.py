"""An image's configuration as a runner needs it: the typed view of an OCI/Docker config.

Read from the config blob the manifest names (its digest checked by the caller). Keys follow
the OCI image spec (``config.Entrypoint``, ``config.Cmd``, ``config.User``, ``config.Env``,
``config.WorkingDir``, ``config.Labels``, ``rootfs.diff_ids``); Docker writes the same ones.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gantry import jsonlimits
from gantry.oci.errors import ImageError
from gantry.resources import API_METHOD_EXEC, API_METHOD_INVOKE, LABEL_API_METHOD

# A Dockerfile's shell form (``CMD python main.py``) is stored as this prefix plus one string.
SHELL_FORM_PREFIX = ("/bin/sh", "-c")
ROOT_USERS = frozenset({"", "0", "root"})

MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class Layer(BaseModel):
    """One layer: ``digest`` of the blob as stored, ``diff_id`` of its uncompressed tar."""

    model_config = ConfigDict(frozen=True)

    digest: str
    diff_id: str
    media_type: str
    compression: str  # "none", "gzip", "zstd" (from the media type, checked on read)
    size: int | None = None


class ImageConfig(BaseModel):
    """What the image asks of its runtime; ``digest`` is the image id (its config's sha256)."""

    model_config = ConfigDict(frozen=True)

    digest: str
    architecture: str
    os: str
    variant: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str = ""
    env: list[str] = Field(default_factory=list)
    working_dir: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    layers: list[Layer] = Field(default_factory=list)
    repo_tags: list[str] = Field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        """What runs: ENTRYPOINT followed by CMD, as a container runtime joins them."""
        return [*(self.entrypoint or []), *(self.cmd or [])]

    @property
    def cmd_is_shell_form(self) -> bool:
        return is_shell_form(self.cmd)

    @property
    def entrypoint_is_shell_form(self) -> bool:
        return is_shell_form(self.entrypoint)

    @property
    def env_map(self) -> dict[str, str]:
        """ENV as a mapping; a later entry of one name wins, as in Docker."""
        pairs = (item.partition("=") for item in self.env)
        return {name: value for name, _, value in pairs if name}

    @property
    def api_method(self) -> str:
        return self.labels.get(LABEL_API_METHOD, API_METHOD_EXEC)

    @property
    def short_id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    def problems(self) -> list[str]:
        """Why this image cannot run as an algorithm, one user-actionable sentence each."""
        found: list[str] = []
        platform = f"{self.os}/{self.architecture}"
        if platform != "linux/amd64":
            found.append(
                f"The image is built for {platform}; Gantry runs linux/amd64 images: "
                "build it with --platform linux/amd64"
            )
        if not self.argv:
            found.append("The image has neither ENTRYPOINT nor CMD: set one in the Dockerfile")
        user = self.user.strip()
        if user.split(":", 1)[0] in ROOT_USERS:
            found.append(
                f"The image runs as root (USER {user or 'unset'}): add a non-root user and "
                "'USER <name>' to the Dockerfile"
            )
        method = self.api_method
        if method not in (API_METHOD_EXEC, API_METHOD_INVOKE):
            found.append(
                f"The label {LABEL_API_METHOD}={method} is not known: use "
                f"'{API_METHOD_EXEC}' or '{API_METHOD_INVOKE}'"
            )
        return found

    def check_runnable(self) -> None:
        found = self.problems()
        if found:
            raise ImageError("; ".join(found))


def is_shell_form(argv: list[str] | None) -> bool:
    return argv is not None and len(argv) == 3 and tuple(argv[:2]) == SHELL_FORM_PREFIX


def compression_of(media_type: str) -> str:
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return "zstd"
    if media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return "gzip"
    if media_type.endswith(".tar") or media_type.endswith("tar.diff") or media_type == "":
        return "none"
    raise ImageError(f"The layer media type '{media_type}' is not a filesystem layer")


def _string_list(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"The image config's {field} must be a list of strings")
    return list(value)


def parse_config(
    raw: bytes, digest: str, layers: list[tuple[str, str, int | None]], repo_tags: list[str]
) -> ImageConfig:
    """The typed config; ``layers`` are (digest, media type, size) from the manifest in order."""
    try:
        document = jsonlimits.loads(raw)
    except ValueError as error:
        raise ImageError(f"The image config {digest} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ImageError(f"The image config {digest} is not a JSON object")
    settings = document.get("config") or {}
    if not isinstance(settings, dict):
        raise ImageError("The image config's 'config' must be an object")
    rootfs = document.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ImageError("The image config has no rootfs.diff_ids: it is not an image config")
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"The manifest lists {len(layers)} layers but the config {len(diff_ids)} diff_ids"
        )
    labels = settings.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ImageError("The image config's Labels must be an object")
    try:
        return ImageConfig(
            digest=digest,
            architecture=str(document.get("architecture") or ""),
            os=str(document.get("os") or ""),
            variant=document.get("variant"),
            entrypoint=_string_list(settings.get("Entrypoint"), "Entrypoint"),
            cmd=_string_list(settings.get("Cmd"), "Cmd"),
            user=str(settings.get("User") or ""),
            env=_string_list(settings.get("Env"), "Env") or [],
            working_dir=str(settings.get("WorkingDir") or ""),
            labels={str(k): str(v) for k, v in labels.items()},
            layers=[
                Layer(
                    digest=layer_digest,
                    diff_id=diff_id,
                    media_type=media_type,
                    compression=compression_of(media_type),
                    size=size,
                )
                for (layer_digest, media_type, size), diff_id in zip(layers, diff_ids, strict=True)
            ],
            repo_tags=repo_tags,
        )
    except ValidationError as error:
        raise ImageError(f"The image config is not valid: {error}") from None
