"""``gantry doctor``: check a deployed stack after ``cdk deploy`` (``gantry.doctor``)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import boto3
import typer
from rich.console import Console
from rich.markup import escape

from gantry import doctor, timeutil
from gantry.commands.client import GantryClient, _ssl_context, fail
from gantry.errors import PermissionDenied
from gantry.local.connection import Connection

DOCTOR_USER = "gantry-doctor"


def run_doctor(
    stack: Annotated[str, typer.Option(help="The CloudFormation stack.")] = "Gantry",
    region: Annotated[
        str | None,
        typer.Option(help="The stack's region (default: $AWS_REGION).", show_default=False),
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(help="An AWS-compatible endpoint instead of AWS.", show_default=False),
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option(help="The API's base URL (default: output ApiBaseUrl).", show_default=False),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA certificate to trust for the API.", show_default=False)
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="A runner image (in the RunnerRepositoryUri repository) with /bin/sh, for the "
            "end-to-end CPU job.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help=f"API token for the job (default: a new admin token of '{DOCTOR_USER}', "
            "valid 2 h).",
            show_default=False,
        ),
    ] = None,
    skip_job: Annotated[bool, typer.Option(help="Do not run the end-to-end job.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the job.")] = 900.0,
) -> None:
    """Check a deployment: stack outputs, API, GPU quota, alarms, one CPU job end to end.
    Each failure is one line saying what to fix; the exit status is 1 if any check failed."""
    # One line per finding, however narrow the terminal: scripts grep them.
    console = Console(highlight=False, soft_wrap=True)
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    session = boto3.session.Session(region_name=region)
    region = session.region_name or "us-east-1"

    def client(service: str) -> object:
        return session.client(service, region_name=region, endpoint_url=endpoint_url)

    findings: list[doctor.Finding] = []

    def report(new: list[doctor.Finding]) -> None:
        for finding in new:
            mark = "[green]✓[/]" if finding.ok and not finding.warning else "[red]✗[/]"
            if finding.warning:
                mark = "[yellow]![/]"
            console.print(f"{mark} {finding.check}: {escape(finding.message)}")
        findings.extend(new)

    found, outputs = doctor.stack_outputs(client("cloudformation"), stack)
    report([found])
    base = api_url or outputs.get("ApiBaseUrl")
    verify = _ssl_context(str(ca_file)) if ca_file else True
    if base:
        report([doctor.api_reachable(base, verify=verify)])
    if outputs.get("GpuJobQueue"):
        report(
            doctor.gpu_quota(
                client("batch"),
                client("ec2"),
                client("service-quotas"),
                outputs["GpuJobQueue"],
                region,
            )
        )
    if outputs.get("AlarmTopicArn"):
        report(
            doctor.alarms_reach_topic(
                client("cloudwatch"),
                client("sns"),
                stack,
                outputs["AlarmTopicArn"],
            )
        )
    if skip_job:
        report([doctor.Finding("cpu job", False, "skipped (--skip-job)", warning=True)])
    elif not image:
        report(
            [
                doctor.Finding(
                    "cpu job",
                    False,
                    "No image to run: push a runner image with /bin/sh to the "
                    "RunnerRepositoryUri repository (docs/deploy.md, Importing an algorithm "
                    "image) and pass --image <uri>:<tag>, or --skip-job",
                )
            ]
        )
    elif base and outputs.get("TableName"):
        job_token = token or _doctor_token(outputs["TableName"], region, endpoint_url)
        connection = Connection(
            api_url=base, token=job_token, ca_file=str(ca_file) if ca_file else None
        )
        with GantryClient(connection) as api, console.status("Running the CPU job…"):
            report([doctor.cpu_job(api, image, timeout=timeout)])
    failed = [f for f in findings if f.failed]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed[/]")
        raise typer.Exit(1)
    console.print("[green]All checks passed[/]")


def _doctor_token(table: str, region: str, endpoint_url: str | None) -> str:
    from gantry.context import Context
    from gantry.settings import Settings

    settings = Settings(table_name=table, region=region, endpoint_url=endpoint_url)
    # Expires soon: every run makes a new one and nothing else uses it.
    expires = timeutil.now() + timedelta(hours=2)
    users = Context.create(settings).store.users
    try:
        return users.issue_token(DOCTOR_USER, is_admin=True, expires=expires)[0]
    except PermissionDenied as error:
        fail(f"{error}; give an admin's token with --token")
