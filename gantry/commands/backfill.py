"""``gantry backfill``: bring a deployed stack's records up to date after an upgrade."""

from __future__ import annotations

import os

from gantry.commands.client import fail


def run_backfill() -> None:
    """Add what records written by an older version lack: admins' and editors' lists, the
    active-job slots of unfinished jobs, ids of old tokens. Safe to repeat and to run while the
    platform runs. Writes the table named by GANTRY_TABLE_NAME with the AWS credentials of the
    environment (the local stack does this itself at every start)."""
    if not os.environ.get("GANTRY_TABLE_NAME"):
        fail("Set GANTRY_TABLE_NAME (the stack's table, see `gantry doctor`) and AWS credentials")
    from gantry.context import Context
    from gantry.settings import get_settings
    from gantry.store.backfill import backfill

    try:
        added = backfill(Context.create(get_settings()).store.table)
    except Exception as error:  # one clear line, not a traceback
        fail(f"Could not backfill: {error}")
    if not added:
        print("Nothing to add: every record is up to date")
    for what, count in sorted(added.items()):
        print(f"{what}: {count} added")
