"""``gantry token list|create|revoke`` through the API (``create`` may also write the table
directly: see gantry/cli.py)."""

from __future__ import annotations

import os
from typing import Annotated
from urllib.parse import quote

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from gantry.commands.client import ApiOptions, api_command, fail, render, reported, say


@api_command
def create_token(
    api: ApiOptions,
    user: Annotated[
        str | None,
        typer.Option(help="Whose token (created if new); others' need an admin's token."),
    ] = None,
    admin: Annotated[
        bool, typer.Option(help="Table only: let the user see and manage everything.")
    ] = False,
    expires_in: Annotated[
        int | None, typer.Option(help="Days until it stops working (default: never).")
    ] = None,
) -> None:
    """Create an API token; only its hash is stored, so this is the one time it is shown.

    With GANTRY_TABLE_NAME set (and no --api-url), it is written straight into that table
    with the AWS credentials of the environment: the first token of a deployed stack.
    Otherwise the API the other commands use makes it (.gantry/local.json, GANTRY_API_URL …).
    """
    if os.environ.get("GANTRY_TABLE_NAME") and not api.api_url:
        print(_create_in_table(user, admin, expires_in))
        return
    if admin:
        fail("--admin works only when writing the table (GANTRY_TABLE_NAME)")
    with reported(), api.connect() as client:
        body = {"user": user, "expires_in_days": expires_in}
        created = client.post("tokens/", {k: v for k, v in body.items() if v is not None})
    # The secret alone on stdout, so scripts can capture it.
    print(created["token"])


def _create_in_table(user: str | None, admin: bool, expires_in: int | None) -> str:
    from datetime import timedelta

    from gantry import timeutil
    from gantry.context import Context
    from gantry.settings import get_settings

    if not user:
        fail("--user is required when writing the table (GANTRY_TABLE_NAME)")
    expires = timeutil.now() + timedelta(days=expires_in) if expires_in else None
    try:
        users = Context.create(get_settings()).store.users
        token, _ = users.issue_token(user, is_admin=admin, expires=expires)
    except Exception as error:  # one clear line, not a traceback
        fail(f"Could not create a token: {error}")
    return token


@api_command
def list_tokens(
    api: ApiOptions,
    user: Annotated[
        str | None, typer.Option(help="Another user's tokens (admins).", show_default=False)
    ] = None,
) -> None:
    """Your API tokens: id, created, expires (never their secrets)."""
    with reported(), api.connect() as client:
        found = list(client.iterate("tokens/", user=user))
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "user", "created", "expires"):
        table.add_column(column, no_wrap=True)
    for token in found:
        table.add_row(
            escape(token["pk"]),
            escape(token["user"]),
            token["created"][:19].replace("T", " "),
            (token.get("expires") or "never")[:19].replace("T", " "),
        )
    render(table)


@api_command
def revoke_token(
    api: ApiOptions,
    pk: Annotated[str, typer.Argument(help="The token's id (gantry token list).")],
) -> None:
    """Revoke an API token: it stops working at once."""
    with reported(), api.connect() as client:
        client.request("DELETE", f"tokens/{quote(pk, safe='')}/")
    say(f"Token [bold]{escape(pk)}[/] revoked")
