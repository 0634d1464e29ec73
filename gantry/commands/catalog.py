"""``gantry interfaces …`` and ``gantry algorithms …``: the catalogue, through the API."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from gantry.commands.client import ApiOptions, CliError, api_command, render, reported, say
from gantry.local.connection import Connection, image_store_dir
from gantry.oci import ImageError, ImageStore, PreparedImage

interfaces_app = typer.Typer(help="Interfaces: the typed inputs and outputs.", no_args_is_help=True)
algorithms_app = typer.Typer(help="Algorithms and their container images.", no_args_is_help=True)


@interfaces_app.command("create")
@api_command
def interfaces_create(
    api: ApiOptions,
    title: Annotated[str, typer.Option(help="Its title; the slug is made from it.")],
    kind: Annotated[str, typer.Option(help="A kind's label or code: Image, Float, PDF, …")],
    relative_path: Annotated[
        str,
        typer.Option(help="Where the algorithm finds it: images/<name> for images, else a file."),
    ],
    description: Annotated[str, typer.Option(help="What it holds.")] = "",
    schema: Annotated[
        Path | None,
        typer.Option(help="A JSON file with an extra JSON Schema the value must pass."),
    ] = None,
    overlay_segments: Annotated[
        Path | None,
        typer.Option(
            help="A JSON file listing the segments ({name, voxel_value, visible}); "
            "Segmentation interfaces need it.",
            show_default=False,
        ),
    ] = None,
    store_in_database: Annotated[
        bool | None,
        typer.Option(
            "--store-in-database/--no-store-in-database",
            help="Keep JSON values in the database (default: the kind's own choice).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an interface."""
    with reported():
        body: dict[str, Any] = {
            "title": title,
            "kind": kind,
            "relative_path": relative_path,
            "description": description,
        }
        if schema is not None:
            body["schema"] = _read_json(schema)
        if overlay_segments is not None:
            body["overlay_segments"] = _read_json(overlay_segments)
        if store_in_database is not None:
            body["store_in_database"] = store_in_database
        with api.connect() as client:
            created = client.post("components/interfaces/", body)
        say(
            f"Created interface [bold]{escape(created['slug'])}[/] "
            f"({escape(created['kind'])}, {escape(created['relative_path'])})"
        )


@interfaces_app.command("list")
@api_command
def interfaces_list(
    api: ApiOptions,
) -> None:
    """List every interface."""
    with reported(), api.connect() as client:
        table = Table(title="Interfaces")
        table.add_column("slug", no_wrap=True)
        for column in ("kind", "held as", "relative path", "title"):
            table.add_column(column, overflow="fold")
        for socket in client.iterate("components/interfaces/"):
            table.add_row(
                *(
                    escape(str(socket[key]))
                    for key in ("slug", "kind", "super_kind", "relative_path", "title")
                )
            )
        render(table)


@algorithms_app.command("create")
@api_command
def algorithms_create(
    api: ApiOptions,
    title: Annotated[str, typer.Option(help="Its title; the slug is made from it.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", help="An input interface slug (repeat for more)."),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option("--output", help="An output interface slug (repeat for more)."),
    ] = None,
    description: Annotated[str, typer.Option(help="What it does.")] = "",
    time_limit: Annotated[
        int | None, typer.Option(help="Seconds a job may run (300-86400).", show_default=False)
    ] = None,
    memory_gb: Annotated[
        int | None,
        typer.Option(
            help="Memory a job may use, in GB (requires_memory_gb); the local backend enforces "
            "it on the algorithm's processes.",
            show_default=False,
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            help="The GPU type a job needs (requires_gpu_type, e.g. T4).", show_default=False
        ),
    ] = None,
    user: Annotated[
        list[str] | None,
        typer.Option(
            "--user",
            help="A user who may run it (repeat for more); 'dropbox' lets the drop folder "
            "start jobs.",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="Its container image ('local' runs --command in --workdir on this machine).",
            show_default=False,
        ),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(help="The image's command, as a shell would split it.", show_default=False),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="For image 'local': the algorithm's code directory.", show_default=False),
    ] = None,
    image_archive: Annotated[
        Path | None,
        typer.Option(
            help="A docker-save or OCI image archive (.tar, .tar.gz, .tar.xz) to run, unpacked "
            "into the local stack's image store (local stack only).",
            show_default=False,
        ),
    ] = None,
    bioimageio: Annotated[
        Path | None,
        typer.Option(
            help="A bioimage.io model package zip: its tensors become the inputs and outputs, "
            "and the bioimage.io runtime its image.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an algorithm with one set of inputs and outputs, and optionally its image; or
    one from a bioimage.io model package (--bioimageio)."""
    with reported():
        if bioimageio is not None and (inputs or outputs or image or image_archive):
            raise CliError(
                "--bioimageio brings its inputs, outputs and image: leave out --input, "
                "--output, --image and --image-archive"
            )
        if bioimageio is None and not (inputs and outputs):
            raise CliError("give --input and --output (or a --bioimageio package)")
        if image_archive is not None and (image, command, workdir) != (None, None, None):
            raise CliError("--image-archive brings its own command: leave out --image, --command")
        if image is None and (command is not None or workdir is not None):
            raise CliError("--command and --workdir describe an image: give --image too")
        if image is not None and not command:
            raise CliError("--image needs --command: what to run in it")
        argv = _split(command) if command else None
        body: dict[str, Any] = {
            "title": title,
            "description": description,
            "users": user or [],
        }
        if bioimageio is None:
            body["interfaces"] = [{"inputs": inputs, "outputs": outputs}]
        if time_limit is not None:
            body["time_limit"] = time_limit
        if memory_gb is not None:
            body["requires_memory_gb"] = memory_gb
        if gpu is not None:
            body["requires_gpu_type"] = gpu
        if bioimageio is not None:
            from gantry.commands.bioimageio import register_package

            with api.connect() as client:
                register_package(client, body, bioimageio)
            return
        with api.connect() as client:
            prepared = _prepare_archive(api, client, image_archive) if image_archive else None
            algorithm = client.post("algorithms/", body)
            say(f"Created algorithm [bold]{escape(algorithm['slug'])}[/]")
            if prepared is not None:
                config = prepared.config
                created = client.post(
                    "algorithms/images/",
                    {
                        "algorithm": algorithm["api_url"],
                        "image": prepared.ref,
                        "entrypoint": config.entrypoint,
                        "command": config.cmd,
                        "sha256": config.digest,
                    },
                )
                say(f"Added image {escape(created['image'])} ({created['pk']})")
            if image is not None:
                created = client.post(
                    "algorithms/images/",
                    {
                        "algorithm": algorithm["api_url"],
                        "image": image,
                        "command": argv,
                        "workdir": str(workdir.resolve()) if workdir else None,
                    },
                )
                say(f"Added image {escape(created['image'])} ({created['pk']})")


@algorithms_app.command("list")
@api_command
def algorithms_list(
    api: ApiOptions,
) -> None:
    """List the algorithms you can run."""
    with reported(), api.connect() as client:
        table = Table(title="Algorithms")
        table.add_column("slug", no_wrap=True)
        for column in ("inputs → outputs", "time limit", "title"):
            table.add_column(column, overflow="fold")
        for algorithm in client.iterate("algorithms/"):
            sets = "\n".join(
                f"{', '.join(s['slug'] for s in socket_set['inputs'])} → "
                f"{', '.join(s['slug'] for s in socket_set['outputs'])}"
                for socket_set in algorithm["interfaces"]
            )
            table.add_row(
                escape(algorithm["slug"]),
                escape(sets),
                f"{algorithm['time_limit']} s",
                escape(algorithm["title"]),
            )
        render(table)


def _prepare_archive(api: ApiOptions, client: Any, archive: Path) -> PreparedImage:
    """Unpack the archive into the local stack's image store (until images are uploaded)."""
    saved = Connection.read(api.state_dir)
    if saved is None or saved.api_url.rstrip("/") != client.base_url.rstrip("/"):
        raise CliError(
            "--image-archive registers an image with the local stack only (gantry local up, "
            f"state in {api.state_dir}); this API is not that stack"
        )
    store = image_store_dir(api.state_dir)
    prepared = unpack_archive(store, archive)
    config = prepared.config
    say(f"Unpacked image {config.short_id} ({len(config.layers)} layers) into {store}")
    return prepared


def unpack_archive(store: Path, archive: Path) -> PreparedImage:
    """The archive's image unpacked into the store, runnable by its USER; errors for the CLI."""
    try:
        prepared = ImageStore(store).prepare(archive)
        prepared.check_reachable()
    except ImageError as error:
        raise CliError(f"{archive}: {error}") from None
    except OSError as error:
        raise CliError(f"Cannot read {archive}: {error.strerror or error}") from None
    return prepared


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise CliError(f"Cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise CliError(f"{path} is not valid JSON: {error}") from None


def _split(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise CliError(f"--command: {error}") from None
    if not argv:
        raise CliError("--command is empty")
    return argv


from gantry.commands.models import models_app  # noqa: E402

algorithms_app.add_typer(models_app, name="models")


images_app = typer.Typer(
    help="Container images: upload a docker-save archive, imported and checked by Gantry.",
    no_args_is_help=True,
)
algorithms_app.add_typer(images_app, name="images")

IMPORT_POLL_SECONDS = 0.5
IMPORT_ENDED = ("Completed", "Failed", "Cancelled")


@images_app.command("upload")
@api_command
def images_upload(
    api: ApiOptions,
    algorithm: Annotated[str, typer.Argument(help="The algorithm's slug.")],
    path: Annotated[
        Path,
        typer.Argument(help="An image archive: docker save IMAGE | gzip > image.tar.gz"),
    ],
) -> None:
    """Upload a container image and follow its import; once completed, it is the version
    the algorithm's next jobs run."""
    import time

    from gantry.commands.client import spinner, transfer_progress

    with reported():
        if not path.is_file():
            raise CliError(f"{path} is not a file")
        with api.connect() as client:
            found = client.algorithm_by_slug(algorithm)
            with transfer_progress() as progress:
                upload = client.upload(path, progress)
            image = client.post(
                "algorithms/images/",
                {"algorithm": found["api_url"], "user_upload": upload["api_url"]},
            )
            with spinner(f"Importing image {image['pk']}") as status:
                while image["import_status"] not in IMPORT_ENDED:
                    status.update(f"Importing image {image['pk']}: {image['import_status']}")
                    time.sleep(IMPORT_POLL_SECONDS)
                    image = client.get(f"algorithms/images/{image['pk']}/")
        if image["import_status"] != "Completed":
            raise CliError(f"Image import {image['import_status']}: {image['status']}")
        say(
            f"Imported image {image['pk']} (sha256 {str(image['image_sha256'])[:19]}); "
            f"[bold]{escape(algorithm)}[/]'s jobs now run it"
        )


@images_app.command("list")
@api_command
def images_list(
    api: ApiOptions,
    algorithm: Annotated[str, typer.Argument(help="The algorithm's slug.")],
) -> None:
    """List the algorithm's images, oldest first; the desired one runs its jobs."""
    with reported(), api.connect() as client:
        found = client.algorithm_by_slug(algorithm)
        table = Table(title=f"Images of {escape(algorithm)}")
        for column in ("pk", "created", "import", "desired", "sha256", "status"):
            table.add_column(column, overflow="fold")
        for image in client.iterate("algorithms/images/", algorithm=found["pk"]):
            table.add_row(
                escape(image["pk"]),
                escape(str(image["created"])[:19]),
                escape(image["import_status"]),
                "yes" if image["is_desired_version"] else "",
                escape(str(image["image_sha256"] or "")[:19]),
                escape(image["status"] or ""),
            )
        render(table)


@images_app.command("activate")
@api_command
def images_activate(
    api: ApiOptions,
    image: Annotated[str, typer.Argument(help="The image's pk (gantry algorithms images list).")],
) -> None:
    """Make a completed image the desired version: the algorithm's next jobs run it."""
    with reported(), api.connect() as client:
        done = client.patch(f"algorithms/images/{image}/", {"is_desired_version": True})
        say(f"Image {escape(done['pk'])} is now the desired version")


@images_app.command("cancel")
@api_command
def images_cancel(
    api: ApiOptions,
    image: Annotated[str, typer.Argument(help="The image's pk.")],
) -> None:
    """Cancel an image import that has not ended."""
    with reported(), api.connect() as client:
        done = client.post(f"algorithms/images/{image}/cancel/", None)
        say(f"Image import {escape(done['pk'])}: {escape(done['import_status'])}")


@images_app.command("remove")
@api_command
def images_remove(
    api: ApiOptions,
    image: Annotated[str, typer.Argument(help="The image's pk.")],
) -> None:
    """Remove an image that is not the desired version; it is deleted from the registry."""
    with reported(), api.connect() as client:
        client.request("DELETE", f"algorithms/images/{image}/")
        say(f"Removed image {escape(image)}")
