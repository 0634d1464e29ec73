"""Compute job names, their reverse mapping, and what every backend passes to the runner."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest

from gantry.algorithms import AlgorithmImage
from gantry.compute import SubmitError, compute_name, parse_compute_name, sagemaker_name
from gantry.compute.base import (
    RUNNER_MARGIN_SECONDS,
    hard_time_limit,
    job_tags,
    runner_command,
    runner_environment,
)
from gantry.contract import new_signing_key
from gantry.jobs import Job
from gantry.resources import (
    ENV_ALGORITHM_CMD,
    ENV_ALGORITHM_ENTRYPOINT,
    ENV_SIGNING_KEY,
    RUNNER_BINARY_PATH,
)

SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
NOW = "2026-01-02T10:00:00Z"


def make_job(**overrides: Any) -> Job:
    values: dict[str, Any] = {
        "pk": str(uuid.uuid4()),
        "algorithm": str(uuid.uuid4()),
        "algorithm_image": str(uuid.uuid4()),
        "creator": "alice",
        "time_limit": 3600,
        "requires_gpu_type": "T4",
        "requires_memory_gb": 8,
        "signing_key": new_signing_key(),
        "created": NOW,
        "modified": NOW,
    }
    values.update(overrides)
    return Job(**values)


def make_image(**overrides: Any) -> AlgorithmImage:
    values: dict[str, Any] = {
        "pk": str(uuid.uuid4()),
        "algorithm": str(uuid.uuid4()),
        "creator": "alice",
        "created": NOW,
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/gantry-runner:v1",
        "entrypoint": ["/usr/bin/python3"],
        "command": ["/opt/algorithm/main.py", "--fast"],
    }
    values.update(overrides)
    return AlgorithmImage(**values)


def decode(value: str) -> Any:
    return json.loads(base64.b64decode(value))


def test_compute_name_is_prefix_pk_attempt():
    pk = "3f2a1c9e-7b4d-4e8a-9c1f-2d5e6a7b8c90"
    assert compute_name(pk, 2) == f"gantry-{pk}-2"
    assert parse_compute_name(compute_name(pk, 2)) == (pk, 2)


def test_sagemaker_name_fits_63_characters_and_maps_back():
    pk = "3f2a1c9e-7b4d-4e8a-9c1f-2d5e6a7b8c90"
    for attempt in (1, 12, 999_999):
        name = sagemaker_name(pk, attempt)
        assert len(name) <= 63
        assert SAGEMAKER_NAME.match(name)
        assert "-" not in name.removeprefix("gantry-").rpartition("-")[0]
        assert parse_compute_name(name) == (pk, attempt)


def test_sagemaker_name_refuses_what_cannot_fit():
    with pytest.raises(SubmitError):
        sagemaker_name("x" * 60, 1)
    with pytest.raises(SubmitError):
        compute_name("bad/pk", 1)


@pytest.mark.parametrize(
    "name",
    ["", "other-3f2a-1", "gantry-", "gantry-abc", "gantry-abc-", "gantry--1", "gantry-abc-x1"],
)
def test_parse_rejects_other_names(name):
    assert parse_compute_name(name) is None


def test_parse_keeps_non_uuid_keys():
    assert parse_compute_name("gantry-job-with-dashes-3") == ("job-with-dashes", 3)


def test_runner_environment_carries_key_and_command():
    job, image = make_job(), make_image()
    env = runner_environment(job, image)
    assert env[ENV_SIGNING_KEY] == job.signing_key
    assert decode(env[ENV_ALGORITHM_ENTRYPOINT]) == ["/usr/bin/python3"]
    assert decode(env[ENV_ALGORITHM_CMD]) == ["/opt/algorithm/main.py", "--fast"]


def test_runner_environment_decodes_with_the_runner():
    from batch_runner.config import command_from_env

    env = runner_environment(make_job(), make_image())
    assert command_from_env(env) == ["/usr/bin/python3", "/opt/algorithm/main.py", "--fast"]


def test_runner_environment_omits_missing_parts_and_needs_a_key():
    env = runner_environment(make_job(), make_image(entrypoint=None))
    assert ENV_ALGORITHM_ENTRYPOINT not in env
    with pytest.raises(SubmitError, match="signing key"):
        runner_environment(make_job(signing_key=""), make_image())


def test_runner_command_tags_and_time_limit():
    job = make_job(attempt=3, time_limit=300)
    assert runner_command("s3://b/k.json") == [
        RUNNER_BINARY_PATH,
        "invoke",
        "--file",
        "s3://b/k.json",
    ]
    with pytest.raises(ValueError):
        runner_command("/local/path")
    assert job_tags(job) == {"gantry:job": job.pk, "gantry:attempt": "3"}
    assert hard_time_limit(job) == 300 + RUNNER_MARGIN_SECONDS
