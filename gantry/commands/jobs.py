"""``gantry jobs …``: run an algorithm on local files and values, follow and inspect jobs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote

import typer
from rich import box
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from gantry.commands.client import (
    ApiOptions,
    CliError,
    GantryClient,
    Timeout,
    api_command,
    fail,
    note,
    render,
    reported,
    say,
    spinner,
    transfer_progress,
)

jobs_app = typer.Typer(help="Jobs: run algorithms and follow them.", no_args_is_help=True)

TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
POLL_SECONDS = 0.5
TAIL_LINES = 20
DEFAULT_OUTPUT_ROOT = Path("gantry-output")


@jobs_app.command("run")
@api_command
def run(
    api: ApiOptions,
    algorithm: Annotated[str, typer.Argument(help="The algorithm's slug.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="slug=PATH uploads a file (an image or file input, or a JSON file); "
            "slug=JSON gives a value, e.g. threshold=2.5 or name='\"text\"'. Repeat per input.",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the outputs go (default: gantry-output/<job>).", show_default=False
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the end and fetch the outputs.")
    ] = True,
    timeout: Timeout = None,
) -> None:
    """Start a job of ALGORITHM on the given inputs, wait for it and download its outputs."""
    with reported(), api.connect() as client:
        target = client.algorithm_by_slug(algorithm)
        sockets = {
            socket["slug"]: socket
            for socket_set in target["interfaces"]
            for socket in socket_set["inputs"]
        }
        given = _parse_inputs(inputs or [], sockets, algorithm)
        with transfer_progress() as progress:
            body = [_job_input(client, sockets[slug], text, progress) for slug, text in given]
        job = client.post("algorithms/jobs/", {"algorithm": target["api_url"], "inputs": body})
        pk = job["pk"]
        say(f"Job [bold]{pk}[/] started ({escape(job['status'])})")
        if not wait:
            return
        try:
            job = _wait(client, pk, timeout)
        except KeyboardInterrupt:
            fail(f"Stopped waiting; job {pk} goes on (see `gantry jobs show {pk}`)")
        if job["status"] != "Succeeded":
            fail(f"Job {pk} {job['status']}: {job['error_message'] or 'no message'}")
        say(f"[green]Job {pk} Succeeded[/] in {_seconds(job['exec_duration']) or '?'}")
        out = output_dir if output_dir is not None else DEFAULT_OUTPUT_ROOT / pk
        with transfer_progress() as progress:
            written = fetch_outputs(client, job, out, progress)
        say(f"Outputs in [bold]{escape(str(out))}[/]:")
        for path in written:
            say(f"  {escape(str(path))}")


def _parse_inputs(
    items: list[str], sockets: dict[str, dict[str, Any]], algorithm: str
) -> list[tuple[str, str]]:
    given: list[tuple[str, str]] = []
    for item in items:
        slug, sep, text = item.partition("=")
        slug = slug.strip()
        if not sep or not slug:
            raise CliError(f"--input {item!r}: give slug=PATH or slug=JSON")
        if slug not in sockets:
            known = ", ".join(sorted(sockets)) or "none"
            raise CliError(f"'{slug}' is not an input of {algorithm} (inputs: {known})")
        if any(slug == seen for seen, _ in given):
            raise CliError(f"--input {slug} is given twice")
        given.append((slug, text))
    return given


def _job_input(
    client: GantryClient, socket: dict[str, Any], text: str, progress: Progress
) -> dict[str, Any]:
    """A path to a file is uploaded; anything else is a JSON value."""
    slug, held_as = socket["slug"], socket["super_kind"]
    path = Path(text).expanduser()
    if path.is_file():
        upload = client.upload(path, progress)
        # Images may span several files (grand-challenge's user_uploads); the rest is one file.
        if held_as == "Image":
            return {"interface": slug, "user_uploads": [upload["api_url"]]}
        return {"interface": slug, "user_upload": upload["api_url"]}
    if path.is_dir():
        raise CliError(f"Input '{slug}': {text} is a folder; give a file")
    if held_as != "Value":
        raise CliError(f"Input '{slug}' ({socket['kind']}): no such file {text}")
    try:
        value = json.loads(text)
    except ValueError:
        raise CliError(
            f"Input '{slug}': {text!r} is neither a file nor JSON (quote text as '\"{text}\"')"
        ) from None
    return {"interface": slug, "value": value}


def _wait(client: GantryClient, pk: str, timeout: float | None) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    with spinner(f"Job {pk}") as status:
        while True:
            job = client.get(f"algorithms/jobs/{quote(pk, safe='')}/")
            if job["status"] != last:
                last = job["status"]
                status.update(f"Job {pk}: {escape(last)}")
                note(f"  {escape(last)}")
            if last in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise CliError(
                    f"Job {pk} is still {last} after {timeout:g} s (see `gantry jobs show {pk}`)"
                )
            time.sleep(POLL_SECONDS)


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing paths that would leave ``root``."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise CliError(f"Refusing to write an output outside {root}: {relative}")
    return target


def fetch_outputs(
    client: GantryClient, job: dict[str, Any], out_dir: Path, progress: Progress
) -> list[Path]:
    """Write each output at its relative path under ``out_dir``, as the algorithm wrote it
    under /output: image files in their folder, files and JSON values as files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for output in job["outputs"]:
        socket = output.get("interface") or {}
        relative = socket.get("relative_path") or socket.get("slug") or f"output-{output['pk']}"
        if output["image"]:
            image = client.get(output["image"])
            for image_file in image["files"]:
                name = Path(unquote(image_file["file"].rsplit("/", 1)[-1])).name
                target = _inside(out_dir, f"{relative}/{name}")
                written.append(client.download(image_file["file"], target, progress))
        elif output["file"]:
            written.append(client.download(output["file"], _inside(out_dir, relative), progress))
        else:
            target = _inside(out_dir, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(output["value"], indent=2) + "\n")
            written.append(target)
    return written


@jobs_app.command("list")
@api_command
def list_jobs(
    api: ApiOptions,
    algorithm: Annotated[
        str | None, typer.Option(help="Only this algorithm's jobs (its slug).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest jobs.")] = 20,
) -> None:
    """List your newest jobs."""
    with reported(), api.connect() as client:
        limit = max(1, min(limit, 1000))
        params: dict[str, Any] = {}
        if algorithm is not None:
            params["algorithm_image__algorithm"] = client.algorithm_by_slug(algorithm)["pk"]
        # Lists run oldest first: read the count, then the last page.
        count = client.get("algorithms/jobs/", limit=1, **params)["count"]
        page = client.get("algorithms/jobs/", limit=limit, offset=max(0, count - limit), **params)
        slugs = {a["api_url"]: a["slug"] for a in client.iterate("algorithms/")}
        jobs = list(reversed(page["results"]))
        table = Table(title=f"Jobs ({len(jobs)} of {count}, newest first)", box=box.SIMPLE_HEAD)
        # Ids stay whole: they are what `jobs show` takes.
        table.add_column("job", no_wrap=True, min_width=36)
        table.add_column("status", no_wrap=True, min_width=9)
        table.add_column("algorithm", overflow="fold", min_width=12)
        table.add_column("duration", no_wrap=True)
        errors = any(job.get("error_message") for job in jobs)
        if errors:
            table.add_column("error", overflow="fold")
        for job in jobs:
            row = [
                job["pk"],
                _styled(job["status"]),
                escape(slugs.get(job["algorithm"], job["algorithm"])),
                _seconds(job["exec_duration"]),
            ]
            if errors:
                row.append(escape(job.get("error_message") or ""))
            table.add_row(*row)
        render(table)


@jobs_app.command("show")
@api_command
def show_job(
    api: ApiOptions,
    pk: Annotated[str, typer.Argument(help="The job's id.")],
) -> None:
    """A job's status, error, logs and values."""
    with reported(), api.connect() as client:
        job = client.get(f"algorithms/jobs/{quote(pk, safe='')}/")
        try:
            algorithm = client.get(job["algorithm"])["slug"]
        except CliError:
            algorithm = job["algorithm"]  # the job outlived the caller's access to it
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column(overflow="fold")
        for name, value in (
            ("job", job["pk"]),
            ("algorithm", algorithm),
            ("status", job["status"]),
            ("created", job.get("created")),
            ("started", job.get("started_at")),
            ("completed", job.get("completed_at")),
            ("duration", _seconds(job.get("exec_duration"))),
            # What it ran with, whatever the algorithm's desired versions are now.
            ("image", job.get("algorithm_image_sha256")),
            ("model", job.get("algorithm_model_sha256")),
            ("error", job.get("error_message")),
            ("details", job.get("detailed_error_message")),
        ):
            if value:
                facts.add_row(name, _styled(value) if name == "status" else escape(str(value)))
        for role in ("inputs", "outputs"):
            for item in job[role]:
                slug = (item.get("interface") or {}).get("slug", "?")
                facts.add_row(f"{role[:-1]} {escape(slug)}", escape(_describe(item)))
        render(facts)
        for stream in ("stdout", "stderr"):
            lines = (job.get(stream) or "").rstrip("\n").splitlines()
            if lines:
                shown = lines[-TAIL_LINES:]
                say(f"[bold]{stream}[/] (last {len(shown)} of {len(lines)} lines)")
                for line in shown:
                    say(f"  {escape(line)}")


@jobs_app.command("cancel")
@api_command
def cancel_job(
    api: ApiOptions,
    pk: Annotated[str, typer.Argument(help="The job's id.")],
) -> None:
    """Cancel a job: a queued one never starts, a running one is stopped. Cancelling a job
    that has ended already changes nothing."""
    with reported(), api.connect() as client:
        job = client.post(f"algorithms/jobs/{quote(pk, safe='')}/cancel/", None)
        if job["status"] == "Cancelled":
            say(f"Job [bold]{escape(job['pk'])}[/] {_styled('Cancelled')}")
        else:
            say(f"Job {escape(job['pk'])} had ended already: {_styled(job['status'])}")


@jobs_app.command("share")
@api_command
def share_job(
    api: ApiOptions,
    pk: Annotated[str, typer.Argument(help="The job's id.")],
    viewer: Annotated[
        list[str] | None,
        typer.Option(help="A user who may see the job and its data (repeat: the whole list)."),
    ] = None,
    no_viewers: Annotated[bool, typer.Option(help="Take the data away from every viewer.")] = False,
    editors: Annotated[
        bool | None,
        typer.Option(
            "--editors/--no-editors",
            help="Whether the algorithm's editors see the job's inputs and outputs.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Share a job's inputs and outputs (its creator only): with named users, or with the
    algorithm's editors, who otherwise see its status, errors and logs alone."""
    if viewer and no_viewers:
        fail("Give --viewer or --no-viewers, not both")
    body: dict[str, Any] = {}
    if viewer or no_viewers:
        body["viewers"] = list(viewer or [])
    if editors is not None:
        body["share_with_editors"] = editors
    if not body:
        fail("Nothing to change: give --viewer, --no-viewers, --editors or --no-editors")
    with reported(), api.connect() as client:
        job = client.patch(f"algorithms/jobs/{quote(pk, safe='')}/", body)
    viewers = ", ".join(job["viewers"]) or "nobody"
    seen = "see" if job["share_with_editors"] else "do not see"
    say(f"Job [bold]{escape(job['pk'])}[/]: viewers {escape(viewers)}; editors {seen} its data")


def _describe(value: dict[str, Any]) -> str:
    if value.get("image"):
        return f"image {value['image']}"
    if value.get("file"):
        return f"file {value['file']}"
    text = json.dumps(value.get("value"))
    return text if len(text) <= 200 else text[:199] + "…"


def _seconds(duration: str | None) -> str:
    """'HH:MM:SS[.ffffff]' (with an optional 'D ' in front) as seconds, e.g. '0.9 s'."""
    if not duration:
        return ""
    days, _, clock = duration.rpartition(" ")
    try:
        hours, minutes, seconds = clock.split(":")
        total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return duration
    return f"{total:.1f} s"


def _styled(status: str) -> str:
    style = {"Succeeded": "green", "Failed": "red", "Cancelled": "yellow"}.get(status)
    return f"[{style}]{escape(status)}[/]" if style else escape(status)
