"""``gantry bioimageio``: the bioimage.io runtime image (``gantry.bioimageio_image``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from gantry.local.connection import DEFAULT_STATE_DIR

app = typer.Typer(help="The bioimage.io runtime image.", no_args_is_help=True)
console = Console()
PUSH_TARGETS = ("local", "ecr")
LOCAL_REPOSITORY = "bioimageio/runtime"


@app.command("build-image")
def build_image(
    out: Annotated[
        Path | None,
        typer.Argument(help="The OCI archive to write (build/bioimageio/bioimageio-runtime.tar)."),
    ] = None,
    gpu: Annotated[
        bool, typer.Option(help="onnxruntime-gpu with its CUDA libraries (for the T4 queue).")
    ] = False,
    cache: Annotated[
        Path | None,
        typer.Option(help="Downloads and layers kept between builds (build/bioimageio/cache)."),
    ] = None,
    push: Annotated[
        str | None,
        typer.Option(help="Then push it: 'local' (the local stack's registry) or 'ecr'."),
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="The local stack's state folder (with --push local).")
    ] = DEFAULT_STATE_DIR,
    registry: Annotated[
        str, typer.Option(help="The local stack's registry kind (as `gantry local up`).")
    ] = "auto",
    repository: Annotated[
        str | None,
        typer.Option(help="ECR repository (default: GANTRY_IMAGE_REPOSITORY, the stack's)."),
    ] = None,
    runner_layer: Annotated[
        Path | None,
        typer.Option(help="The runner layer appended for ECR ('make runner' builds it)."),
    ] = None,
) -> None:
    """Build the bioimage.io runtime image from Debian and PyPI packages (no Docker), and
    optionally push it the image import's way; prints what to set GANTRY_BIOIMAGEIO_IMAGE to."""
    from gantry import bioimageio_image
    from gantry.oci.errors import ImageError

    if push is not None and push not in PUSH_TARGETS:
        raise typer.BadParameter(
            f"'{push}' is not one of {', '.join(PUSH_TARGETS)}", param_hint="--push"
        )
    variant = bioimageio_image.GPU if gpu else bioimageio_image.CPU
    if out is None:
        out = bioimageio_image.DEFAULT_ARCHIVE
        if gpu:
            out = out.with_name("bioimageio-runtime-gpu.tar")
    try:
        built = bioimageio_image.build(out, variant, cache, log=lambda text: console.print(text))
    except ImageError as error:
        console.print(f"[red]Build failed:[/] {error}")
        raise typer.Exit(1) from error
    console.print(
        f"Built {built.path} ({variant.name}): {built.size / 1024**2:.0f} MiB in "
        f"{built.seconds:.0f} s, manifest {built.manifest_digest}",
        soft_wrap=True,
    )
    if push is not None:
        _push(built.path, push, state_dir, registry, repository, runner_layer)


@app.command("push-image")
def push_image(
    archive: Annotated[Path, typer.Argument(help="An archive `build-image` wrote.")],
    to: Annotated[str, typer.Option(help="'local' (the local stack's registry) or 'ecr'.")],
    state_dir: Annotated[Path, typer.Option(help="The local stack's state folder.")] = (
        DEFAULT_STATE_DIR
    ),
    registry: Annotated[str, typer.Option(help="The local stack's registry kind.")] = "auto",
    repository: Annotated[str | None, typer.Option(help="ECR repository.")] = None,
    runner_layer: Annotated[Path | None, typer.Option(help="Runner layer for ECR.")] = None,
) -> None:
    """Push a built runtime image (checked, runner layer appended, as an image import does)."""
    if to not in PUSH_TARGETS:
        raise typer.BadParameter(
            f"'{to}' is not one of {', '.join(PUSH_TARGETS)}", param_hint="--to"
        )
    _push(archive, to, state_dir, registry, repository, runner_layer)


@app.command("lock")
def lock(
    gpu: Annotated[bool, typer.Option(help="The GPU variant (onnxruntime-gpu).")] = False,
) -> None:
    """Print the pinned packages of the runtime image: the `bioimageio` extra resolved for
    the image's Python (packaging/bioimageio/requirements*.txt)."""
    from gantry import bioimageio_image
    from gantry.oci.errors import ImageError

    variant = bioimageio_image.GPU if gpu else bioimageio_image.CPU
    try:
        pins = bioimageio_image.lock(variant)
    except ImageError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from error
    print(variant.header, end="")
    print("\n".join(pins))


def _push(
    archive: Path,
    target: str,
    state_dir: Path,
    registry_kind: str,
    repository: str | None,
    runner_path: Path | None,
) -> None:
    from gantry.bioimageio_image import push_runtime
    from gantry.oci import read_archive
    from gantry.oci.errors import ImageError
    from gantry.oci.mutate import LayerFile
    from gantry.oci.registry import RegistryError

    try:
        config = read_archive(archive).config
        variant = config.labels.get("org.gantry.bioimageio.variant", "cpu")
        tag = f"bioimageio-runtime-{variant}-{config.short_id}"
        with contextlib.ExitStack() as exits:
            if target == "local":
                from gantry.local.images import open_registry, runner_layer

                root = state_dir / "registry"
                local = open_registry(registry_kind, root, exits)
                runner = runner_layer(root) if runner_path is None else LayerFile.read(runner_path)
                where, name = local.registry, LOCAL_REPOSITORY
            else:
                where, name, runner = _ecr(repository, runner_path)
            reference = push_runtime(archive, where, name, runner, tag)
    except (ImageError, RegistryError, OSError) as error:
        console.print(f"[red]Push failed:[/] {error}")
        raise typer.Exit(1) from error
    console.print(f"Pushed {archive} as {name}:{tag}", soft_wrap=True)
    console.print(f"GANTRY_BIOIMAGEIO_IMAGE={reference}", soft_wrap=True)


def _ecr(repository: str | None, runner_path: Path | None) -> tuple[Any, str, Any]:
    import boto3

    from gantry.local.images import BUILT_RUNNER_LAYER
    from gantry.oci.errors import ImageError
    from gantry.oci.mutate import LayerFile
    from gantry.oci.registry import Registry
    from gantry.settings import Settings

    # The stack's output RunnerRepositoryUri (<account>.dkr.ecr.<region>.amazonaws.com/<name>)
    # or the name alone.
    name = (repository or Settings().image_repository).split(".amazonaws.com/")[-1]
    if not name:
        raise ImageError(
            "No ECR repository: pass --repository <RunnerRepositoryUri> (a stack output) or "
            "set GANTRY_IMAGE_REPOSITORY"
        )
    path = runner_path or BUILT_RUNNER_LAYER
    if not path.exists():
        raise ImageError(f"No runner layer at {path}: build it with 'make runner'")
    return Registry.ecr(boto3.client("ecr")), name, LayerFile.read(path)
