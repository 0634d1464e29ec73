"""gantry algorithms models: upload model tarballs, list them, pick the one jobs use."""

from __future__ import annotations

import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from gantry.commands.client import (
    ApiOptions,
    CliError,
    GantryClient,
    api_command,
    render,
    reported,
    say,
    spinner,
    transfer_progress,
)

models_app = typer.Typer(
    help="Model tarballs, extracted to /opt/ml/model for an algorithm's jobs.",
    no_args_is_help=True,
)

IMPORT_POLL_SECONDS = 0.5
IMPORT_ENDED = ("Completed", "Failed", "Cancelled")


@contextmanager
def model_tarball(path: Path) -> Iterator[Path]:
    """``path`` if it is a file; a folder packed as ``<name>.tar.gz`` (its content becomes
    /opt/ml/model/<its files>)."""
    if not path.exists():
        raise CliError(f"{path} does not exist")
    if not path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory() as scratch:
        tarball = Path(scratch) / f"{path.resolve().name or 'model'}.tar.gz"
        with tarfile.open(tarball, "w:gz") as archive:
            for child in sorted(path.iterdir()):
                archive.add(child, arcname=child.name)
        yield tarball


def upload_model(
    client: GantryClient, algorithm: dict[str, Any], path: Path, comment: str = ""
) -> dict[str, Any]:
    """Upload a model tarball (or folder) and follow its import to its end; the model."""
    with model_tarball(path) as tarball:
        with transfer_progress() as progress:
            upload = client.upload(tarball, progress)
        model = client.post(
            "algorithms/models/",
            {
                "algorithm": algorithm["api_url"],
                "user_upload": upload["api_url"],
                "comment": comment,
            },
        )
    with spinner(f"Importing model {model['pk']}") as status:
        while model["import_status"] not in IMPORT_ENDED:
            status.update(f"Importing model {model['pk']}: {model['import_status']}")
            time.sleep(IMPORT_POLL_SECONDS)
            model = client.get(f"algorithms/models/{model['pk']}/")
    if model["import_status"] != "Completed":
        raise CliError(f"Model import {model['import_status']}: {model['status']}")
    return model


@models_app.command("upload")
@api_command
def models_upload(
    api: ApiOptions,
    algorithm: Annotated[str, typer.Argument(help="The algorithm's slug.")],
    path: Annotated[
        Path,
        typer.Argument(help="A model tarball (.tar.gz) or a folder to pack as one."),
    ],
    comment: Annotated[str, typer.Option(help="A note on this version (e.g. its name).")] = "",
) -> None:
    """Upload a model and follow its import; once completed, the algorithm's next jobs find
    it at /opt/ml/model."""
    with reported(), api.connect() as client:
        found = client.algorithm_by_slug(algorithm)
        model = upload_model(client, found, path, comment)
        active = (
            f"[bold]{escape(algorithm)}[/]'s next jobs use it"
            if model["is_desired_version"]
            else "a newer model stays active"
        )
        say(
            f"Imported model {model['pk']} ({model['size_in_storage']} bytes, "
            f"{str(model['sha256'])[:19]}); {active}"
        )


# The earlier name of `upload`.
models_app.command("add", hidden=True)(models_upload)


@models_app.command("list")
@api_command
def models_list(
    api: ApiOptions,
    algorithm: Annotated[str, typer.Argument(help="The algorithm's slug.")],
) -> None:
    """The algorithm's models, oldest first; the active one is marked."""
    with reported(), api.connect() as client:
        found = client.algorithm_by_slug(algorithm)
        table = Table("pk", "created", "import", "active", "sha256", "bytes", "comment")
        for model in client.iterate("algorithms/models/", algorithm=found["pk"]):
            table.add_row(
                model["pk"],
                model["created"],
                model["import_status"] + (f": {model['status']}" if model["status"] else ""),
                "yes" if model["is_desired_version"] else "",
                str(model["sha256"] or "")[:19],
                str(model["size_in_storage"]),
                escape(model["comment"]),
            )
        render(table)


def _set_desired(api: ApiOptions, model_pk: str, desired: bool) -> dict[str, Any]:
    with api.connect() as client:
        return client.patch(f"algorithms/models/{model_pk}/", {"is_desired_version": desired})


@models_app.command("activate")
@api_command
def models_activate(
    api: ApiOptions,
    model: Annotated[str, typer.Argument(help="The model's pk (gantry algorithms models list).")],
) -> None:
    """Make an imported model the active one: the algorithm's next jobs use it."""
    with reported():
        changed = _set_desired(api, model, True)
        say(f"Model {changed['pk']} ({str(changed['sha256'])[:19]}) is active")


@models_app.command("deactivate")
@api_command
def models_deactivate(
    api: ApiOptions,
    model: Annotated[str, typer.Argument(help="The model's pk.")],
) -> None:
    """Run the algorithm's next jobs without a model (if this one is the active one)."""
    with reported():
        changed = _set_desired(api, model, False)
        say(f"Model {changed['pk']} is not active; the algorithm's next jobs run without one")
