"""``gantry local up``: the whole platform on this machine, in the foreground."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from gantry.local.connection import DEFAULT_STATE_DIR, Connection

if TYPE_CHECKING:
    from gantry.local.stack import LocalStack

app = typer.Typer(
    help="The platform on this machine (no AWS account needed).", no_args_is_help=True
)
console = Console()
LOCAL_USER = "local"
DEFAULT_API_PORT = 8443


def _job_table(jobs: list, slugs: dict[str, str] | None = None) -> Table:
    """The newest jobs; ``slugs`` names algorithms by pk (pks shown where unknown)."""
    slugs = slugs or {}
    table = Table(title="Jobs (newest first)", expand=False)
    for column in ("job", "algorithm", "status", "created", "duration", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        style = {"Succeeded": "green", "Failed": "red", "Cancelled": "yellow"}.get(
            job.status.label, ""
        )
        table.add_row(
            job.pk,  # whole: it is what `gantry jobs show` takes
            slugs.get(job.algorithm, job.algorithm[:8]),
            f"[{style}]{job.status.label}[/]" if style else job.status.label,
            job.created[:19].replace("T", " "),
            f"{job.exec_duration:.1f} s" if job.exec_duration is not None else "",
            (job.error_message or "")[:60],
        )
    return table


def _ensure_token(stack: LocalStack, state_dir: Path) -> str:
    """Reuse the saved token while the restored table still knows it."""
    saved = Connection.read(state_dir)
    users = stack.ctx.store.users
    if saved and users.user_for_token(saved.token) is not None:
        return saved.token
    return users.create_token(LOCAL_USER, is_admin=True)


def connection_for(stack: LocalStack, token: str, state_dir: Path) -> Connection:
    """What local.json holds: the API for every command, the endpoint and bucket for those
    that write to S3 directly (``gantry drop``)."""
    return Connection(
        api_url=stack.api_url,
        token=token,
        ca_file=str((state_dir / "tls" / "ca.pem").resolve()),
        aws_endpoint_url=stack.settings.endpoint_url,
        bucket=stack.settings.bucket_name,
    )


@app.command()
def up(
    state_dir: Annotated[
        Path, typer.Option(help="Where state, certificates and local.json are kept.")
    ] = DEFAULT_STATE_DIR,
    port: Annotated[int, typer.Option(help="Port of the HTTPS API on 127.0.0.1.")] = (
        DEFAULT_API_PORT
    ),
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            help="Use this AWS-compatible endpoint (or 'aws' for the account in the "
            "environment) instead of the embedded one; it keeps its own state."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Jobs that run at the same time.")] = 2,
    live: Annotated[bool, typer.Option(help="Show a live table of jobs.")] = True,
    registry: Annotated[
        str,
        typer.Option(
            help="Where imported images go: 'distribution' (Debian's docker-registry), "
            "'layout' (an OCI image layout store) or 'auto' (the first if installed)."
        ),
    ] = "auto",
) -> None:
    """Start the embedded AWS endpoint, the HTTPS API, the event dispatcher, the local
    compute backend and the sweeper; Ctrl-C stops them and saves the state."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from gantry.local.stack import LocalStack
    from gantry.oci.errors import ImageError
    from gantry.settings import Settings

    try:
        with console.status("Starting the local stack…"):
            stack = LocalStack.start(
                Settings(local_workers=workers),
                endpoint_url=None if endpoint_url in (None, "aws") else endpoint_url,
                embedded=endpoint_url is None,
                state_dir=state_dir,
                serve_api=True,
                api_port=port,
                registry=registry,
            )
    except OSError as error:
        console.print(f"[red]Could not start:[/] {error} (is another `gantry local up` running?)")
        raise typer.Exit(1) from error
    except ImageError as error:  # the image registry asked for cannot be had
        console.print(f"[red]Could not start:[/] {error}")
        raise typer.Exit(1) from error
    # From here a Ctrl-C (or SIGTERM) asks for an orderly stop, however early it comes.
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        token = _ensure_token(stack, state_dir)
        connection = connection_for(stack, token, state_dir)
        ca_file = connection.ca_file
        saved = connection.write(state_dir)
        console.print(f"API      [bold]{stack.api_url}[/]")
        console.print(f"CA file  {ca_file}")
        console.print(f"Token    {token}  (user '{LOCAL_USER}', admin; also in {saved})")
        console.print(f"AWS      {stack.settings.endpoint_url or 'the account in the environment'}")
        if stack.registry is not None:
            console.print(f"Registry {stack.registry.describe()}")
        if stack.recovered:
            console.print(f"Resumed {len(stack.recovered)} unfinished job(s)")
        if stack.reconciled is not None and stack.reconciled.started:
            console.print(f"Made {len(stack.reconciled.started)} job(s) for unhandled drops")
        console.print(
            "gcapi:   gcapi.Client(base_url=API, token=TOKEN, verify=CA_FILE)   "
            "Ctrl-C stops (state is kept)."
        )
        _wait(stack, live, stopped)
    finally:
        with console.status("Stopping and saving the state…"):
            stack.stop(drain=False)


def _wait(stack: LocalStack, live: bool, stopped: threading.Event) -> None:
    if not (live and console.is_terminal):
        # Wake up now and then: the kernel may deliver the signal to another thread, and
        # Python runs its handler only once the main thread gets to run again.
        while not stopped.wait(0.5):
            pass
        return
    from rich.live import Live

    slugs: dict[str, str] = {}

    def table() -> Table:
        jobs = stack.recent_jobs()
        for pk in {job.algorithm for job in jobs} - slugs.keys():
            slugs[pk] = stack.ctx.store.algorithms.get(pk).slug
        return _job_table(jobs, slugs)

    with Live(table(), console=console, refresh_per_second=2) as view:
        while not stopped.wait(1.0):
            try:
                view.update(table())
            except Exception:  # a refresh must never take the stack down
                logging.getLogger(__name__).exception("could not list jobs")
