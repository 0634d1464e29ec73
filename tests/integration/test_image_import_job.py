"""Imports too large or too long for the import function: handed over to a Batch job on the CPU
queue, whose container command runs the same import (``python -m gantry.pipeline.import_job``).
The control flow runs on moto (S3, SQS, DynamoDB, Batch, ECR's token); the bytes go to a real
registry on loopback, as in test_image_import_aws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gantry.pipeline import import_job
from gantry.pipeline.wiring import import_image_message
from lambdas import on_import, on_job_event
from tests.image_builder import write_archive
from tests.integration.pipeline_support import create_batch_resources
from tests.integration.test_image_import_aws import (  # noqa: F401
    _spec,
    algorithm,
    deliver_imports,
    deployed,
    import_archive,
)
from tests.integration.test_oci_push import runner_layer  # noqa: F401

pytestmark = pytest.mark.slow

DEFINITION = "gantry-importer"
COMMAND = ["python", "-m", "gantry.pipeline.import_job", "Ref::image"]


@pytest.fixture
def with_job(ctx, deployed) -> dict[str, Any]:  # noqa: F811
    """The deployment's import job: a definition on the CPU queue running the import command,
    and archives over 1 kB handed to it."""
    batch = ctx.clients.batch
    role = create_batch_resources(ctx.clients.client("iam"), batch, ctx.settings)
    batch.register_job_definition(
        jobDefinitionName=DEFINITION,
        type="container",
        containerProperties={
            "image": "public.ecr.aws/docker/library/python:3.13-slim",
            "command": COMMAND,
            "jobRoleArn": role,
            "resourceRequirements": [
                {"type": "VCPU", "value": "2"},
                {"type": "MEMORY", "value": "4096"},
            ],
        },
    )
    ctx.settings = ctx.settings.model_copy(
        update={"import_job_definition": DEFINITION, "import_job_threshold_bytes": 1000}
    )
    return deployed


def _submitted(ctx, status: str) -> dict[str, Any]:
    """The one Batch job named in the image's status text."""
    assert status.startswith(import_job.HANDED_OVER_PREFIX), status
    job_id = status.partition("(Batch job ")[2].partition(")")[0]
    [job] = ctx.clients.batch.describe_jobs(jobs=[job_id])["jobs"]
    return job


def _batch_event(job: dict[str, Any], status: str, reason: str = "") -> dict[str, Any]:
    return {
        "version": "0",
        "id": "event-1",
        "source": "aws.batch",
        "detail-type": "Batch Job State Change",
        "account": "123456789012",
        "region": "us-east-1",
        "time": "2026-01-01T00:00:00Z",
        "resources": [job["jobArn"]],
        "detail": {
            "jobName": job["jobName"],
            "jobId": job["jobId"],
            "jobQueue": job["jobQueue"],
            "status": status,
            "statusReason": reason,
            "attempts": [],
        },
    }


def test_a_large_archive_is_imported_by_a_job_on_the_cpu_queue(
    ctx,
    api,
    with_job,
    algorithm,  # noqa: F811
    tmp_path: Path,
) -> None:
    archive = write_archive(tmp_path / "image.tar.gz", _spec(), compression="gzip")
    assert archive.stat().st_size > 1000

    image = import_archive(ctx, api, with_job, algorithm, archive)

    # The function handed it over: Queued, the status naming the job and why.
    assert image["import_status"] == "Queued", image["status"]
    assert "larger than the import function takes" in image["status"]
    assert image["is_in_registry"] is False
    job = _submitted(ctx, image["status"])
    assert job["jobName"] == f"gantry-import-{image['pk']}"
    assert job["jobQueue"].endswith(f"/{ctx.settings.batch_job_queue_cpu}")
    assert job["jobDefinition"].split("/")[-1].startswith(f"{DEFINITION}:")
    assert job["parameters"] == {"image": image["pk"]}

    # The message again (at-least-once): the job has the import, nothing is submitted again.
    queue = with_job["queues"]["gantry-imports"]
    ctx.clients.sqs.send_message(QueueUrl=queue, MessageBody=import_image_message(image["pk"]))
    assert deliver_imports(ctx, queue) == 1
    again = api.get(f"algorithms/images/{image['pk']}/")[1]
    assert again["status"] == image["status"]
    listed = ctx.clients.batch.list_jobs(jobQueue=ctx.settings.batch_job_queue_cpu)
    imports = [j for j in listed["jobSummaryList"] if j["jobName"].startswith("gantry-import-")]
    assert len(imports) == 1

    # The job's container command: the same import, to its end.
    assert import_job.main([image["pk"]], ctx) == 0
    done = api.get(f"algorithms/images/{image['pk']}/")[1]
    assert done["import_status"] == "Completed", done["status"]
    assert done["is_in_registry"] is True
    assert done["is_desired_version"] is True
    assert done["image"].startswith(with_job["url"].removeprefix("http://"))
    # Batch then reports the job succeeded: nothing changes.
    assert on_job_event.process(ctx, _batch_event(job, "SUCCEEDED")) is None
    assert api.get(f"algorithms/images/{image['pk']}/")[1]["import_status"] == "Completed"


def test_an_import_out_of_the_functions_time_is_handed_over(
    ctx,
    api,
    with_job,
    algorithm,  # noqa: F811
    tmp_path: Path,
) -> None:
    ctx.settings = ctx.settings.model_copy(update={"import_job_threshold_bytes": 10**9})
    with_job["publisher"].time_left(-1)
    archive = write_archive(tmp_path / "image.tar", _spec())

    image = import_archive(ctx, api, with_job, algorithm, archive)

    assert image["import_status"] == "Queued", image["status"]
    assert image["status"].endswith(import_job.OUT_OF_TIME)
    _submitted(ctx, image["status"])
    # The job has no deadline.
    assert import_job.main([image["pk"]], ctx) == 0
    done = api.get(f"algorithms/images/{image['pk']}/")[1]
    assert done["import_status"] == "Completed", done["status"]


def test_a_job_that_ends_without_importing_fails_the_import_with_batchs_reason(
    ctx,
    api,
    with_job,
    algorithm,  # noqa: F811
    tmp_path: Path,
) -> None:
    archive = write_archive(tmp_path / "image.tar.gz", _spec(), compression="gzip")
    image = import_archive(ctx, api, with_job, algorithm, archive)
    job = _submitted(ctx, image["status"])

    reason = "CannotPullContainerError: pull access denied"
    assert on_job_event.process(ctx, _batch_event(job, "FAILED", reason)) is None

    failed = api.get(f"algorithms/images/{image['pk']}/")[1]
    assert failed["import_status"] == "Failed"
    assert failed["status"] == (
        f"The import job on the CPU queue (Batch job {job['jobId']}) ended without importing "
        f"the image: {reason}"
    )
    # A later import of the same archive is not refused as a duplicate.
    second = import_archive(ctx, api, with_job, algorithm, archive)
    assert import_job.main([second["pk"]], ctx) == 0
    assert api.get(f"algorithms/images/{second['pk']}/")[1]["import_status"] == "Completed"


def test_without_an_import_job_a_large_archive_is_imported_by_the_function(
    ctx,
    api,
    deployed,  # noqa: F811
    algorithm,  # noqa: F811
    tmp_path: Path,
) -> None:
    ctx.settings = ctx.settings.model_copy(update={"import_job_threshold_bytes": 1000})
    archive = write_archive(tmp_path / "image.tar.gz", _spec(), compression="gzip")
    image = import_archive(ctx, api, deployed, algorithm, archive)
    assert image["import_status"] == "Completed", image["status"]


def test_the_job_command_needs_one_image_pk(capsys) -> None:
    assert import_job.main([]) == 2
    assert "usage: python -m gantry.pipeline.import_job IMAGE_PK" in capsys.readouterr().err


def test_an_unknown_message_type_is_not_taken_for_an_import(ctx) -> None:
    with pytest.raises(ValueError, match="unknown message"):
        on_import.handle_message(ctx, {"gantry": "import-nothing", "image": "1"})
    with pytest.raises(ValueError, match="import-model message: model: Field required"):
        on_import.handle_message(ctx, {"gantry": "import-model", "image": "1"})
