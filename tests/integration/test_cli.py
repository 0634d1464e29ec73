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
