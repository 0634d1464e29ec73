"""``gantry algorithms create --bioimageio package.zip``: register a bioimage.io model package
as an algorithm (upload with progress, follow the import, print its interfaces)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from gantry.commands.client import CliError, GantryClient, render, say, spinner, transfer_progress

IMPORT_POLL_SECONDS = 0.5
IMPORT_ENDED = ("Completed", "Failed", "Cancelled")


def register_package(client: GantryClient, body: dict[str, Any], package: Path) -> dict[str, Any]:
    """Upload ``package``, create the algorithm with it, follow the import to its end; the
    algorithm (CliError with the import's message if it failed)."""
    if not package.is_file():
        raise CliError(f"{package} is not a file: give the model package zip")
    with transfer_progress() as progress:
        upload = client.upload(package, progress)
    algorithm = client.post("algorithms/", {**body, "bioimageio_package": upload["api_url"]})
    say(f"Created algorithm [bold]{escape(algorithm['slug'])}[/]; importing {package.name}")
    path = f"algorithms/{algorithm['pk']}/"
    with spinner("Importing the model package") as status:
        while algorithm["bioimageio"]["import_status"] not in IMPORT_ENDED:
            state = algorithm["bioimageio"]["import_status"]
            status.update(f"Importing the model package: {state}")
            time.sleep(IMPORT_POLL_SECONDS)
            algorithm = client.get(path)
    record = algorithm["bioimageio"]
    if record["import_status"] != "Completed":
        raise CliError(
            f"Model package import {record['import_status']}: {record['status_message']}"
        )
    say(
        f"Imported [bold]{escape(record['name'])}[/] (format {escape(record['format_version'])}, "
        f"{escape(record['weights_format'])} weights)"
    )
    table = Table(title=f"Interfaces of {algorithm['slug']}")
    for column in ("role", "slug", "kind", "relative path", "description"):
        table.add_column(column, overflow="fold")
    for socket_set in algorithm["interfaces"]:
        for role in ("inputs", "outputs"):
            for socket in socket_set[role]:
                table.add_row(
                    role[:-1],
                    escape(socket["slug"]),
                    escape(socket["kind"]),
                    escape(socket["relative_path"]),
                    escape(socket.get("description") or ""),
                )
    render(table)
    return algorithm
