"""``gantry archives …``: archives of cases, their items, and algorithms run over them."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from gantry.commands.client import (
    ApiOptions,
    CliError,
    Timeout,
    api_command,
    render,
    reported,
    say,
    spinner,
    transfer_progress,
)
from gantry.commands.jobs import _job_input

archives_app = typer.Typer(
    help="Archives: collections of cases, and algorithms run over them.", no_args_is_help=True
)
POLL_SECONDS = 1.0
Members = Annotated[list[str] | None, typer.Option(show_default=False)]


@archives_app.command("create")
@api_command
def create(
    api: ApiOptions,
    title: Annotated[str, typer.Option(help="The archive's title (its slug follows from it).")],
    editor: Members = None,
    uploader: Members = None,
    user: Members = None,
) -> None:
    """Create an archive; you are its editor. --editor/--uploader/--user name members."""
    body = {
        "title": title,
        "editors": editor or [],
        "uploaders": uploader or [],
        "users": user or [],
    }
    with reported(), api.connect() as client:
        archive = client.post("archives/", body)
        say(f"Archive [bold]{escape(archive['slug'])}[/] created ({archive['pk']})")


@archives_app.command("list")
@api_command
def list_archives(api: ApiOptions) -> None:
    """List the archives you are a member of."""
    with reported(), api.connect() as client:
        table = Table(title="Archives", box=box.SIMPLE_HEAD)
        for column in ("slug", "title", "items", "pk"):
            table.add_column(column, overflow="fold")
        for archive in client.iterate("archives/"):
            items = client.get("archives/items/", archive=archive["pk"], limit=1)["count"]
            table.add_row(
                escape(archive["slug"]), escape(archive["title"]), str(items), archive["pk"]
            )
        render(table)


@archives_app.command("add")
@api_command
def add(
    api: ApiOptions,
    archive: Annotated[str, typer.Argument(help="The archive's slug or pk.")],
    values: Annotated[
        list[str],
        typer.Option(
            "--value",
            help="slug=PATH uploads a file (an image or a file); slug=JSON gives a value. "
            "Repeat per socket.",
        ),
    ],
    title: Annotated[str, typer.Option(help="The item's title.")] = "",
) -> None:
    """Add one case (an item of socket values) to ARCHIVE."""
    with reported(), api.connect() as client:
        sockets = {s["slug"]: s for s in client.iterate("components/interfaces/")}
        body = []
        with transfer_progress() as progress:
            for text in values:
                slug, sep, value = text.partition("=")
                if not sep or slug.strip() not in sockets:
                    raise CliError(f"--value {text!r}: give slug=PATH or slug=JSON of a socket")
                body.append(_job_input(client, sockets[slug.strip()], value, progress))
        item = client.post("archives/items/", {"archive": archive, "title": title, "values": body})
        say(f"Item [bold]{item['pk']}[/] added to {escape(archive)}")


@archives_app.command("items")
@api_command
def items(
    api: ApiOptions, archive: Annotated[str, typer.Argument(help="The archive's slug or pk.")]
) -> None:
    """List the items of ARCHIVE and their values."""
    with reported(), api.connect() as client:
        table = Table(title=f"Items of {escape(archive)}", box=box.SIMPLE_HEAD)
        for column in ("item", "title", "values", "pending or failed"):
            table.add_column(column, overflow="fold")
        for item in client.iterate("archives/items/", archive=archive):
            values = ", ".join(
                f"{v['interface']['slug']}="
                + ("image" if v["image"] else "file" if v["file"] else repr(v["value"]))
                for v in item["values"]
            )
            trouble = [*item["pending"], *(f"{k}: {v}" for k, v in item["errors"].items())]
            table.add_row(
                item["pk"], escape(item["title"]), escape(values), escape("; ".join(trouble))
            )
        render(table)


@archives_app.command("run")
@api_command
def run(
    api: ApiOptions,
    algorithm: Annotated[str, typer.Argument(help="The algorithm's slug.")],
    archive: Annotated[str, typer.Argument(help="The archive's slug or pk.")],
    item: Annotated[
        list[str] | None, typer.Option(help="Only this item (repeat).", show_default=False)
    ] = None,
    rerun: Annotated[
        bool, typer.Option(help="Run items again that already have a successful job.")
    ] = False,
    write_back: Annotated[bool, typer.Option(help="Add each job's outputs to its item.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow it to the end.")] = True,
    timeout: Timeout = None,
) -> None:
    """Run ALGORITHM on every item of ARCHIVE (or some), one job per item."""
    with reported(), api.connect() as client:
        target = client.algorithm_by_slug(algorithm)
        body: dict[str, Any] = {"archive": archive, "rerun": rerun, "write_back": write_back}
        if item:
            body["items"] = item
        path = f"algorithms/{target['pk']}/archive-runs/"
        started = client.post(path, body)
        say(f"Run [bold]{started['pk']}[/] over {started['total']} items started")
        if not wait:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with spinner("Run") as status:
            while True:
                seen = client.get(f"{path}{started['pk']}/")
                status.update(f"{seen['state']}: {_summary(seen)}")
                if seen["done"]:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise CliError(f"Run {started['pk']} still going after {timeout:g} s")
                time.sleep(POLL_SECONDS)
        say(f"Run {started['pk']} done: {_summary(seen)}")
        if seen["stopped_reason"]:
            raise CliError(f"The run stopped: {seen['stopped_reason']}")


def _summary(run: dict[str, Any]) -> str:
    parts = [f"{count} {status}" for status, count in run["jobs"].items()]
    for key in ("skipped", "not_run", "not_started"):
        if run[key]:
            parts.append(f"{run[key]} {key.replace('_', ' ')}")
    return ", ".join(parts) or "nothing yet"
