"""Every deployed Lambda entry point, called as Lambda calls it: its ``handler`` with an event of
the shape AWS sends and a context with the attributes the Python runtime gives, against moto,
from a cold process state (settings from the environment, no Context built yet)."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext as PowertoolsLambdaContext

from gantry import resources


@dataclass
class _Context:
    """The attributes of the context object the AWS Lambda Python runtime passes a handler."""

    function_name: str = "gantry-api"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:gantry-api"
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/gantry-api"
    log_stream_name: str = "2026/11/27/[$LATEST]0123456789abcdef0123456789abcdef"
    identity: Any = None
    client_context: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def LambdaContext(**attributes: Any) -> PowertoolsLambdaContext:  # the runtime's, by its name
    """A context as the runtime passes it, typed as the handlers declare it (Powertools' class
    only describes that object)."""
    return cast(PowertoolsLambdaContext, _Context(**attributes))


@pytest.fixture
def cold(ctx, settings, monkeypatch):
    """The handlers' process state as on a cold start, its settings from the environment as
    the deployed functions get them; the table and bucket exist (in moto)."""
    from gantry.settings import get_settings
    from lambdas import runtime
    from lambdas.api import app

    for name in ("table_name", "bucket_name", "region", "api_base_url", "compute_backend"):
        monkeypatch.setenv(f"GANTRY_{name.upper()}", str(getattr(settings, name)))
    get_settings.cache_clear()
    monkeypatch.setattr(runtime, "_context", None)
    monkeypatch.setattr(app, "_app", None)
    yield ctx
    get_settings.cache_clear()


def _sqs_event(*bodies: dict[str, Any], queue: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
                "body": json.dumps(body),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1795000000000",
                    "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                    "ApproximateFirstReceiveTimestamp": "1795000000001",
                },
                "messageAttributes": {},
                "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
                "awsRegion": "us-east-1",
            }
            for body in bodies
        ]
    }


def _s3_notification(bucket: str, key: str, size: int) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-27T14:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
                "requestParameters": {"sourceIPAddress": "203.0.113.7"},
                "responseElements": {
                    "x-amz-request-id": "C3D13FE58DE4C810",
                    "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S",
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "gantry",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": key,
                        "size": size,
                        "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                        "sequencer": "0055AED6DCD90281E5",
                    },
                },
            }
        ]
    }


def test_the_api_handler_passes_its_own_lambda_context_on_a_cold_start(cold) -> None:
    from gantry.local.client import proxy_event
    from lambdas.api import app

    token = cold.store.users.create_token("alice")
    event = proxy_event(
        "GET",
        "algorithms/",
        headers={"Host": "api.gantry.test", "Authorization": f"Bearer {token}"},
        stage="prod",
    )
    lambda_context = LambdaContext()

    response = app.handler(event, lambda_context)

    assert response["statusCode"] == 200, response
    assert json.loads(response["body"])["count"] == 0
    # What a route reads as the invocation's context is the one Lambda passed, the first
    # (cold) request included.
    assert app._app is not None
    assert app._app.lambda_context is lambda_context

    again = app.handler(event, LambdaContext())
    assert again["statusCode"] == 200


def test_the_api_logs_each_request_with_its_request_ids(cold) -> None:
    from gantry.local.client import proxy_event
    from lambdas.api import app

    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        """The lines as the function's log shows them (Powertools' JSON formatter)."""

        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(app.logger.registered_formatter.format(record)))

    keep = Keep()
    function_log = logging.getLogger(app.logger.service)  # the logger Powertools writes to
    function_log.addHandler(keep)

    token = cold.store.users.create_token("alice")
    event = proxy_event(
        "GET", "algorithms/", headers={"Authorization": f"Bearer {token}"}, stage="prod"
    )
    event["requestContext"]["requestId"] = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    lambda_context = LambdaContext()

    try:
        app.handler(event, lambda_context)
    finally:
        function_log.removeHandler(keep)

    answered = [line for line in lines if line.get("message") == "answered"]
    assert len(answered) == 1, lines
    assert answered[0]["function_request_id"] == lambda_context.aws_request_id
    assert answered[0]["correlation_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    assert (answered[0]["method"], answered[0]["status"]) == ("GET", 200)


def test_the_api_handler_answers_401_without_credentials(cold) -> None:
    from gantry.local.client import proxy_event
    from lambdas.api import app

    event = proxy_event("GET", "algorithms/", headers={"Host": "api.gantry.test"})

    response = app.handler(event, LambdaContext())

    assert response["statusCode"] == 401
    assert json.loads(response["body"]) == {
        "detail": "Authentication credentials were not provided."
    }


def test_the_uploads_handler_takes_an_sqs_batch(cold, settings) -> None:
    from lambdas import on_upload

    stray = _s3_notification(settings.bucket_name, f"{resources.PREFIX_UPLOADS}u/x/y.mha", 10)
    event = _sqs_event(stray, {"not": "a message"}, queue="gantry-uploads")

    response = on_upload.handler(event, LambdaContext(function_name="gantry-on-upload"))

    # The stray object is handled (nothing to do); the unknown message comes back alone.
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}


def test_the_import_handler_takes_one_import_with_the_time_it_has_left(cold, monkeypatch) -> None:
    import time

    from gantry.pipeline.registry_publisher import RegistryPublisher
    from lambdas import on_import, runtime

    monkeypatch.setenv("GANTRY_IMAGE_REPOSITORY", "gantry-algorithm-images")
    gone = {"gantry": "import-image", "image": str(uuid.uuid4())}
    outside = {"gantry": "delete-model", "key": "values/not-a-model"}
    event = _sqs_event(gone, {"not": "an import"}, outside, queue="gantry-imports")

    response = on_import.handler(event, LambdaContext(function_name="gantry-on-import"))

    # An image deleted before its import is nothing to do; anything else comes back alone.
    failed = [{"itemIdentifier": record["messageId"]} for record in event["Records"][1:]]
    assert response == {"batchItemFailures": failed}
    # The deployment's publisher, stopping before the invocation's time (29 s here) runs out.
    publisher = runtime.context().image_publisher
    assert isinstance(publisher, RegistryPublisher)
    assert publisher.repository == "gantry-algorithm-images"
    assert publisher.deadline is not None
    assert publisher.deadline - time.monotonic() < 29 - on_import.MARGIN_SECONDS + 1


def test_the_drop_folder_handler_writes_why_a_drop_gives_no_job(cold, settings) -> None:
    from gantry.pipeline.dropbox import ERROR_FILE
    from gantry.resources import dropbox_results_prefix
    from lambdas import on_dropbox

    key = f"{resources.PREFIX_DROPBOX}no-such-algorithm/case1.mha"
    cold.clients.s3.put_object(Bucket=settings.bucket_name, Key=key, Body=b"x")
    event = _sqs_event(_s3_notification(settings.bucket_name, key, 1), queue="gantry-dropbox")

    response = on_dropbox.handler(event, LambdaContext(function_name="gantry-on-dropbox"))

    assert response == {"batchItemFailures": []}
    error_key = dropbox_results_prefix("no-such-algorithm/case1") + ERROR_FILE
    body = cold.clients.s3.get_object(Bucket=settings.bucket_name, Key=error_key)["Body"].read()
    assert "Unknown algorithm 'no-such-algorithm'" in body.decode()


def test_the_job_event_handler_ignores_an_event_for_no_gantry_job(cold) -> None:
    from pathlib import Path

    from lambdas import on_job_event

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "events"
    event = json.loads((fixtures / "batch_succeeded.json").read_text())

    response = on_job_event.handler(event, LambdaContext(function_name="gantry-on-job-event"))

    assert response == {"status": None}


def test_the_sweeper_handler_runs_on_its_schedule(cold) -> None:
    from lambdas import sweeper

    event = {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-27T14:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/gantry-sweeper"],
        "detail": {},
    }

    report = sweeper.handler(event, LambdaContext(function_name="gantry-sweeper"))

    # Nothing is unfinished: a report of what it did, every list empty, as JSON.
    assert report and all(value == [] for value in report.values()), report
    assert json.loads(json.dumps(report)) == report


def test_the_job_credentials_handler_refuses_what_is_not_a_request(cold) -> None:
    from lambdas import job_credentials

    lambda_context = LambdaContext(function_name="gantry-job-credentials")

    bad = job_credentials.handler({"job": "j", "attempt": 0}, lambda_context)
    unknown = job_credentials.handler(
        {"job": "no-such-job", "attempt": 1, "claim": "c" * 32}, lambda_context
    )

    assert bad == {"error": "The credentials request is not valid"}
    assert set(unknown) == {"error"} and unknown["error"]


def test_the_archive_run_handler_takes_pages_and_job_events_from_its_queue(cold, caplog) -> None:
    from lambdas import on_archive_run

    # A job that no archive run made ends: EventBridge delivers its event to the queue as it is.
    ended = {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": resources.DETAIL_TYPE_JOB_FAILED,
        "source": resources.EVENT_SOURCE,
        "account": "123456789012",
        "time": "2026-11-27T14:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"job": str(uuid.uuid4()), "status": "Failed", "source": "api"},
    }
    no_run = {"gantry": "archive-run-page", "cursor": None}
    event = _sqs_event(ended, {"not": "a page"}, no_run, queue="gantry-archive-runs")

    response = on_archive_run.handler(event, LambdaContext(function_name="gantry-on-archive-run"))

    # Another job's end is nothing to do; the unknown and the malformed message come back.
    failed = [{"itemIdentifier": record["messageId"]} for record in event["Records"][1:]]
    assert response == {"batchItemFailures": failed}
    # The log says why the malformed one failed.
    malformed = event["Records"][2]["messageId"]
    assert f"message {malformed} failed: archive-run-page message: run: Field required" in (
        caplog.text
    )
