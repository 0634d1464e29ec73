"""The messages between functions: what a sender writes, the receiver parses; a message with a
field missing or of a kind the queue does not take is refused, naming what is wrong."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gantry import messages
from gantry.pipeline import archive_runs, registry_publisher, wiring


@pytest.mark.parametrize(
    ("build", "model", "field"),
    [
        (wiring.validate_inputs_message, messages.ValidateInputs, "job"),
        (wiring.start_job_message, messages.StartJob, "job"),
        (wiring.import_image_message, messages.ImportImage, "image"),
        (wiring.import_item_values_message, messages.ImportItemValues, "item"),
        (wiring.import_upload_session_message, messages.ImportUploadSession, "session"),
        (wiring.import_model_message, messages.ImportModel, "model"),
        (wiring.import_bioimageio_message, messages.ImportBioimageio, "algorithm"),
    ],
)
def test_each_uploads_queue_message_parses_as_what_was_sent(build, model, field) -> None:
    body = build("0b5c7d3e")

    parsed = messages.UPLOADS_QUEUE_MESSAGE.validate_json(body)

    assert type(parsed) is model and getattr(parsed, field) == "0b5c7d3e"
    # The wire shape stays the one deployed queues hold: {"gantry": kind, field: pk}.
    assert json.loads(body) == {"gantry": model.model_fields["gantry"].default, field: "0b5c7d3e"}


def test_a_message_without_its_pk_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        messages.UPLOADS_QUEUE_MESSAGE.validate_python({"gantry": "validate-inputs", "job": ""})

    assert error.value.errors()[0]["loc"][-1] == "job"


def test_a_kind_the_uploads_queue_does_not_take_is_refused() -> None:
    with pytest.raises(ValidationError):
        messages.UPLOADS_QUEUE_MESSAGE.validate_python({"gantry": "archive-run-page", "run": "r"})


def test_each_imports_queue_deletion_parses_as_what_was_sent() -> None:
    reference = "123.dkr.ecr.us-east-1.amazonaws.com/images@sha256:" + "a" * 64
    body = registry_publisher.delete_image_message(reference, "image-7")

    parsed = messages.parse(messages.IMPORTS_QUEUE_MESSAGE, json.loads(body))

    assert parsed == messages.DeleteImage(reference=reference, tag="image-7")
    assert json.loads(body) == {"gantry": "delete-image", "reference": reference, "tag": "image-7"}
    model = messages.parse(
        messages.IMPORTS_QUEUE_MESSAGE, {"gantry": "delete-model", "key": "models/a/m.tar.gz"}
    )
    assert model == messages.DeleteModel(key="models/a/m.tar.gz")


@pytest.mark.parametrize(
    ("build", "model"),
    [
        (archive_runs.page_message, messages.ArchiveRunPage),
        (archive_runs.cancel_message, messages.ArchiveRunCancel),
    ],
)
@pytest.mark.parametrize("cursor", [None, {"pk": "item#3", "sk": "item"}])
def test_each_archive_runs_queue_message_parses_as_what_was_sent(build, model, cursor) -> None:
    body = build("run-1", cursor)

    parsed = messages.parse(messages.ARCHIVE_RUNS_QUEUE_MESSAGE, json.loads(body))

    assert type(parsed) is model and parsed.run == "run-1" and parsed.cursor == cursor
    kind = model.model_fields["gantry"].default
    assert json.loads(body) == {"gantry": kind, "run": "run-1", "cursor": cursor}


@pytest.mark.parametrize(
    ("adapter", "message", "says"),
    [
        (
            messages.IMPORTS_QUEUE_MESSAGE,
            {"gantry": "import-model", "image": "1"},
            "import-model message: model: Field required",
        ),
        (
            messages.IMPORTS_QUEUE_MESSAGE,
            {"gantry": "delete-model", "key": "values/x"},
            "delete-model message: key: Value error, not under models/",
        ),
        (
            messages.IMPORTS_QUEUE_MESSAGE,
            {"gantry": "import-nothing", "image": "1"},
            "unknown message kind 'import-nothing' (fields: ['gantry', 'image'])",
        ),
        (
            messages.ARCHIVE_RUNS_QUEUE_MESSAGE,
            {"gantry": "archive-run-page", "run": "r", "cursor": "page 2"},
            "archive-run-page message: cursor: Input should be a valid dictionary",
        ),
        (
            messages.ARCHIVE_RUNS_QUEUE_MESSAGE,
            {"gantry": "start-job", "job": "j"},
            "unknown message kind 'start-job'",
        ),
    ],
)
def test_a_malformed_message_is_refused_saying_what_is_wrong(adapter, message, says) -> None:
    with pytest.raises(messages.MalformedMessage) as error:
        messages.parse(adapter, message)

    assert says in str(error.value)


def test_the_job_ended_detail_says_whether_the_job_failed() -> None:
    detail = {"job": "j", "status": "Failed", "source": "dropbox", "unknown": 1}

    ended = messages.JobEnded.model_validate(detail)

    assert ended.failed and not ended.succeeded and ended.outputs == []
    assert "exec_duration" not in ended.model_fields_set
