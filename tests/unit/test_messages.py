"""The messages between functions: what a sender writes, the receiver parses; a message with a
field missing or of a kind the queue does not take is refused, naming what is wrong."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gantry import messages
from gantry.pipeline import wiring


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


def test_the_job_ended_detail_says_whether_the_job_failed() -> None:
    detail = {"job": "j", "status": "Failed", "source": "dropbox", "unknown": 1}

    ended = messages.JobEnded.model_validate(detail)

    assert ended.failed and not ended.succeeded and ended.outputs == []
    assert "exec_duration" not in ended.model_fields_set
