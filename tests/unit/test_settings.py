"""Settings come from GANTRY_* variables; values given to the constructor win over them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gantry.settings import Settings


def test_variables_are_read_and_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_TABLE_NAME", "from-env")
    monkeypatch.setenv("GANTRY_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("gantry_compute_backend", "local")
    monkeypatch.setenv("GANTRY_SIGNING_KEY_HEX", "not a setting")

    settings = Settings()

    assert settings.table_name == "from-env"
    assert settings.max_attempts == 5
    assert settings.compute_backend == "local"


def test_the_constructor_wins_over_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_TABLE_NAME", "from-env")
    monkeypatch.setenv("GANTRY_REGION", "eu-west-1")

    settings = Settings(table_name="given")

    assert (settings.table_name, settings.region) == ("given", "eu-west-1")


def test_a_bad_variable_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_COMPUTE_START_TIMEOUT_SECONDS", "10")

    with pytest.raises(ValidationError, match="compute_start_timeout_seconds"):
        Settings()
