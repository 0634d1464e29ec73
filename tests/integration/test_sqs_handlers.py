"""What both SQS handlers do with messages they cannot use: fail that record alone."""

from __future__ import annotations

import json

import pytest

from lambdas import on_dropbox, on_upload
from tests.conftest import sqs_event


@pytest.mark.parametrize("handler", [on_upload, on_dropbox])
def test_bodies_that_are_not_known_json_objects_fail_alone(ctx, handler) -> None:
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})
    bodies = ["not json", "[1, 2]", json.dumps({"what": "else"}), test_event]
    response = handler.process(ctx, sqs_event(bodies))
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == ["m0", "m1", "m2"]
