"""The ``gantry`` command: tokens for operators, and the README's demo."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gantry.cli import app


def test_token_create_stores_only_a_hash_and_the_token_authenticates(ctx, monkeypatch):
    from gantry.settings import get_settings

    monkeypatch.setenv("GANTRY_TABLE_NAME", ctx.settings.table_name)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["token", "create", "--user", "carol"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert ctx.store.users.user_for_token(token).username == "carol"
    raw = json.dumps(ctx.clients.dynamodb.scan(TableName=ctx.settings.table_name)["Items"])
    assert token not in raw


def test_backfill_gives_an_old_token_an_id_once(ctx, monkeypatch):
    from gantry import timeutil
    from gantry.settings import get_settings
    from gantry.store import keys
    from gantry.store.table import MAIN_SK
    from gantry.users import hash_token

    result = CliRunner().invoke(app, ["backfill"])
    assert result.exit_code == 1 and "GANTRY_TABLE_NAME" in result.output
    # A token as versions before token ids stored it.
    ctx.store.users.ensure_user("carol")
    item = ctx.store.table.item(
        keys.token(hash_token("old-secret")),
        MAIN_SK,
        None,
        username="carol",
        created=timeutil.iso(),
    )
    ctx.store.table.put(item)
    monkeypatch.setenv("GANTRY_TABLE_NAME", ctx.settings.table_name)
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(app, ["backfill"])
        again = CliRunner().invoke(app, ["backfill"])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    assert "token ids: 1 added" in first.output
    assert "Nothing to add" in again.output
    tokens, count = ctx.store.users.tokens_page("carol", offset=0, limit=10)
    assert count == 1 and tokens[0].user == "carol"


@pytest.mark.slow
def test_demo_runs_a_segmentation_job_end_to_end(tmp_path):
    import SimpleITK

    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Job Succeeded" in result.output
    segmentation = SimpleITK.ReadImage(str(tmp_path / "segmentation.mha"))
    ct = SimpleITK.ReadImage(str(tmp_path / "ct-image.mha"))
    # The overlay keeps the input's geometry, and the body (above 0 HU) is segmented.
    assert segmentation.GetSpacing() == ct.GetSpacing()
    assert segmentation.GetOrigin() == ct.GetOrigin()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["foreground_voxels"] > 0


def test_token_create_admin_refuses_an_existing_plain_user(ctx, monkeypatch):
    """Anyone may come to hold a plain user's name (an archive's editor creates users by naming
    them): asking for an admin token for it fails and says why, and makes no token."""
    from gantry.settings import get_settings

    ctx.store.users.ensure_user("carol")
    monkeypatch.setenv("GANTRY_TABLE_NAME", ctx.settings.table_name)
    get_settings.cache_clear()
    try:
        refused = CliRunner().invoke(app, ["token", "create", "--user", "carol", "--admin"])
        made = CliRunner().invoke(app, ["token", "create", "--user", "dave", "--admin"])
    finally:
        get_settings.cache_clear()
    assert refused.exit_code == 1
    assert "'carol' is a user who is not an admin" in refused.output
    assert ctx.store.users.tokens_page("carol", offset=0, limit=10)[1] == 0
    assert ctx.store.users.find_user("carol").is_admin is False
    assert made.exit_code == 0, made.output
    assert ctx.store.users.user_for_token(made.output.strip()).is_admin is True
