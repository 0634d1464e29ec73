"""The ``gantry`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Gantry: run medical-imaging algorithms on typed inputs.", no_args_is_help=True
)
console = Console()


@app.callback()
def main() -> None:
    """Keeps ``gantry`` a group of commands even while it has few."""


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Where the results are written.")] = Path(
        "gantry-demo-output"
    ),
) -> None:
    """Run the example segmentation job end to end on the embedded local stack."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from gantry.local import demo as steps
    from gantry.local.client import ApiError, InProcessApi
    from gantry.local.stack import LocalStack

    output.mkdir(parents=True, exist_ok=True)
    with console.status("Starting the local stack (embedded AWS endpoint, compute backend)…"):
        stack = LocalStack.start()
    try:
        token = stack.ctx.store.users.create_token("demo")
        api = InProcessApi(stack.ctx, token)
        console.print(f"Local AWS endpoint: [bold]{stack.settings.endpoint_url}[/]")
        algorithm = steps.register_threshold_algorithm(api)
        console.print(f"Algorithm [bold]{algorithm['slug']}[/] registered")
        image_path = steps.make_ct_like_image(output / "ct-image.mha")
        upload = steps.upload_file(api, image_path)
        console.print(f"Uploaded {image_path} ({upload['status']})")
        job = api.request(
            "POST",
            "algorithms/jobs/",
            {
                "algorithm": algorithm["api_url"],
                "inputs": [{"interface": "ct-image", "user_uploads": [upload["api_url"]]}],
            },
        )
        console.print(f"Job [bold]{job['pk']}[/] created")
        with console.status("Running…") as status:
            finished = steps.wait_for(
                api, job["pk"], lambda label: status.update(f"Job status: {label}")
            )
        if finished["status"] != "Succeeded":
            console.print(f"[red]Job {finished['status']}:[/] {finished['error_message']}")
            raise typer.Exit(1)
        console.print(f"[green]Job Succeeded[/] in {finished['exec_duration']}")
        for path in steps.fetch_outputs(api, finished, output):
            console.print(f"  {path}")
        if finished["stdout"]:
            console.print(f"Algorithm output: {finished['stdout'].strip()}")
    except ApiError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from error
    finally:
        stack.stop()


from gantry.commands import local as local_commands  # noqa: E402

app.add_typer(local_commands.app, name="local")

from gantry.commands import catalog, drop, jobs  # noqa: E402

app.add_typer(catalog.interfaces_app, name="interfaces")
app.add_typer(catalog.algorithms_app, name="algorithms")
app.add_typer(jobs.jobs_app, name="jobs")
# One command rather than a group: `gantry drop PATH --algorithm SLUG`.
app.command("drop")(drop.drop)

from gantry.commands import archives  # noqa: E402

app.add_typer(archives.archives_app, name="archives")

from gantry.commands import trial  # noqa: E402

app.command("try")(trial.try_image)

from gantry.commands import doctor  # noqa: E402

app.command("doctor")(doctor.run_doctor)

token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


from gantry.commands import tokens  # noqa: E402

token_app.command("create")(tokens.create_token)
token_app.command("list")(tokens.list_tokens)
token_app.command("revoke")(tokens.revoke_token)

from gantry.commands import backfill  # noqa: E402

app.command("backfill")(backfill.run_backfill)

from gantry.commands import runtime_image  # noqa: E402

app.add_typer(runtime_image.app, name="bioimageio")


if __name__ == "__main__":
    app()
