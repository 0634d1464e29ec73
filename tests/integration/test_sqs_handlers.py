"""What both SQS handlers do with messages they cannot use: fail that record alone."""

from __future__ import annotations

import json

import pytest

from lambdas import on_dropbox, on_upload


def _batch(bodies: list[str]) -> dict:
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:gantry-uploads",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


@pytest.mark.parametrize("handler", [on_upload, on_dropbox])
def test_bodies_that_are_not_known_json_objects_fail_alone(ctx, handler) -> None:
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})
    bodies = ["not json", "[1, 2]", json.dumps({"what": "else"}), test_event]
    response = handler.process(ctx, _batch(bodies))
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == ["m0", "m1", "m2"]
