"""``gantry drop``: put a case into the S3 drop folder and, optionally, wait for its results.

The drop folder is the stack's ``dropbox/<algorithm-slug>/<case>/`` prefix; each case becomes
one job, whose outputs and ``job.json`` (or ``error.json``) appear under
``dropbox-results/<algorithm-slug>/<case>/`` (see gantry.pipeline.dropbox). This talks to S3,
not to the API: the endpoint and bucket come from the options, the environment, or the
local.json that ``gantry local up`` writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from gantry import resources
from gantry.commands.client import (
    CliError,
    StateDir,
    Timeout,
    fail,
    reported,
    say,
    spinner,
    transfer_progress,
)
from gantry.local.connection import DEFAULT_STATE_DIR, Connection
from gantry.pipeline.dropbox import ERROR_FILE, INPUTS_FILE, JOB_FILE, parse_drop_key

POLL_SECONDS = 1.0
# job.json first: a failed job writes it before its error.json.
_RESULT_FILES = (JOB_FILE, ERROR_FILE)


def drop(
    path: Annotated[Path, typer.Argument(help="A file, or a folder whose files form one case.")],
    algorithm: Annotated[str, typer.Option(help="The algorithm's slug.")],
    case: Annotated[
        str | None,
        typer.Option(
            help="The case's name (default: the file's stem or the folder's name).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the results and list them.")
    ] = False,
    timeout: Timeout = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            help="The S3 endpoint (default: $GANTRY_ENDPOINT_URL, then local.json, then AWS).",
            show_default=False,
        ),
    ] = None,
    bucket: Annotated[
        str | None,
        typer.Option(
            help="The stack's bucket (default: $GANTRY_BUCKET_NAME, then local.json).",
            show_default=False,
        ),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Drop a file (or a folder as one case) into an algorithm's drop folder.

    A case of several files needs an inputs.json mapping interface slugs to file names.
    The algorithm must list the user 'dropbox' among its users."""
    with reported():
        files = _case_files(path)
        _check_name("--algorithm", algorithm)
        name = case or _case_name(algorithm, path)
        _check_name("--case", name)
        s3, bucket_name = _s3(endpoint_url, bucket, state_dir)
        folder = resources.dropbox_folder(algorithm, name)
        results = resources.dropbox_results_prefix(f"{algorithm}/{name}")
        with _s3_errors():
            before = {key: _signature(s3, bucket_name, results + key) for key in _RESULT_FILES}
            with transfer_progress() as progress:
                for file in files:
                    task = progress.add_task(f"Dropping {file.name}", total=file.stat().st_size)
                    s3.upload_file(
                        str(file),
                        bucket_name,
                        folder + file.name,
                        Callback=lambda sent, task=task: progress.advance(task, sent),
                    )
        say(f"Dropped {len(files)} file(s) into s3://{escape(bucket_name)}/{escape(folder)}")
        if not wait:
            say(f"Results will appear in s3://{escape(bucket_name)}/{escape(results)}")
            return
        with _s3_errors():
            try:
                outcome = _wait(s3, bucket_name, results, before, timeout)
            except KeyboardInterrupt:
                fail(f"Stopped waiting; the case goes on (results in {results})")
            listing = _listing(s3, bucket_name, results)
        say(f"Results in s3://{escape(bucket_name)}/{escape(results)}:")
        for key, size in _this_drop(listing, outcome, results):
            say(f"  {escape(key)}  ({size} bytes)")
        if outcome.get("status") == "Succeeded":
            say(f"[green]Job {outcome['job']} Succeeded[/]")
            return
        if outcome.get("job"):
            message = outcome.get("error_message") or outcome.get("reason") or "no message"
            fail(f"Job {outcome['job']} {outcome.get('status') or 'Failed'}: {message}")
        fail(f"No job for this case: {outcome.get('reason') or 'no reason given'}")


def _case_files(path: Path) -> list[Path]:
    """The files to drop; inputs.json first, so no file starts a job without it."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CliError(f"No such file or folder: {path}")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CliError(f"{path} holds no files")
    manifest = path / INPUTS_FILE
    inputs = [f for f in files if f.name != INPUTS_FILE]
    if not manifest.is_file():
        if len(inputs) > 1:
            raise CliError(
                f"{path} holds {len(inputs)} files: add an {INPUTS_FILE} mapping interface "
                "slugs to file names"
            )
        return inputs
    try:
        mapping = json.loads(manifest.read_text())
    except ValueError as error:
        raise CliError(f"{manifest} is not valid JSON: {error}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise CliError(f"{manifest} must map interface slugs to file names")
    names = {f.name for f in inputs}
    missing = sorted(str(v) for v in mapping.values() if v not in names)
    if missing:
        raise CliError(f"{manifest} names files that are not in {path}: {', '.join(missing)}")
    return [manifest, *inputs]


def _case_name(algorithm: str, path: Path) -> str:
    if path.is_dir():
        return path.resolve().name
    # The name the drop folder itself gives a file dropped without a case folder.
    parsed = parse_drop_key(resources.dropbox_folder(algorithm) + path.name)
    return parsed.case if parsed is not None else path.name


def _check_name(option: str, value: str) -> None:
    # The drop folder ignores keys with empty, dot or hidden parts.
    if not value or "/" in value or value.startswith("."):
        raise CliError(f"{option} {value!r}: give a name without '/' that does not start with '.'")


def _s3(endpoint_url: str | None, bucket: str | None, state_dir: Path) -> tuple[Any, str]:
    import boto3
    from botocore.config import Config

    try:
        saved = Connection.read(state_dir)
    except (OSError, ValueError, KeyError) as error:
        raise CliError(f"Cannot read {state_dir / 'local.json'}: {error}") from None
    endpoint = (
        endpoint_url
        or os.environ.get("GANTRY_ENDPOINT_URL")
        or (saved.aws_endpoint_url if saved else None)
    )
    bucket = bucket or os.environ.get("GANTRY_BUCKET_NAME") or (saved.bucket if saved else None)
    if not bucket:
        raise CliError(
            "No drop folder to write to: start one with `gantry local up`, or give --bucket "
            "(or GANTRY_BUCKET_NAME)"
        )
    session = boto3.session.Session(
        region_name=os.environ.get("GANTRY_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    credentials: dict[str, str] = {}
    if endpoint and session.get_credentials() is None:
        # A local endpoint takes any credentials, but boto3 insists on some.
        credentials = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        # Path style, as the stack's own clients: virtual hosts break on local endpoints.
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
        **credentials,
    )
    return client, bucket


@contextmanager
def _s3_errors() -> Iterator[None]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as error:
        info = error.response.get("Error", {})
        raise CliError(f"S3: {info.get('Code', 'error')}: {info.get('Message') or error}") from None
    except (BotoCoreError, S3UploadFailedError) as error:
        raise CliError(f"S3: {error}") from None


def _signature(s3: Any, bucket: str, key: str) -> tuple[str, str] | None:
    """What tells a result written after the drop from an older one at the same key."""
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("ETag", ""), head["LastModified"].isoformat()


def _wait(
    s3: Any,
    bucket: str,
    results: str,
    before: dict[str, tuple[str, str] | None],
    timeout: float | None,
) -> dict[str, Any]:
    """job.json (the job ended) or error.json (no job could be made), once either is new."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with spinner(f"Waiting for s3://{bucket}/{results} …"):
        while True:
            for name in _RESULT_FILES:
                now = _signature(s3, bucket, results + name)
                if now is not None and now != before[name]:
                    body = s3.get_object(Bucket=bucket, Key=results + name)["Body"].read()
                    try:
                        return json.loads(body)
                    except ValueError:
                        return {"reason": f"{name} is not valid JSON"}
            if deadline is not None and time.monotonic() > deadline:
                raise CliError(f"No results after {timeout:g} s in s3://{bucket}/{results}")
            time.sleep(POLL_SECONDS)


def _this_drop(
    listing: list[tuple[str, int]], outcome: dict[str, Any], prefix: str
) -> list[tuple[str, int]]:
    """The files of this drop's job: a case dropped again keeps older image files (their
    names differ per run) next to the new ones, and job.json names the new ones."""
    named = {
        key[len(prefix) :]
        for output in outcome.get("outputs") or []
        for key in output.get("keys") or []
    }
    if not named:
        return listing
    named.add(JOB_FILE)
    if outcome.get("status") != "Succeeded":
        named.add(ERROR_FILE)
    return [(key, size) for key, size in listing if key in named]


def _listing(s3: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend((o["Key"][len(prefix) :], o["Size"]) for o in page.get("Contents", []))
    return sorted(found)
