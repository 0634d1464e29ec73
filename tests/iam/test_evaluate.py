"""The rehearsal's own parts: a policy it cannot judge or an ARN it cannot compute fails."""

from __future__ import annotations

import pytest

from tests.iam.calls import to_requests
from tests.iam.evaluate import Request, Unjudgeable, allowed
from tests.iam.template import Deployment, Unresolved

BUCKET = "arn:aws:s3:::data"
LIST = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": BUCKET}


def test_actions_match_case_insensitively_and_resources_exactly() -> None:
    statement = {"Effect": "Allow", "Action": "S3:Get*", "Resource": f"{BUCKET}/io/*"}
    assert allowed([statement], Request("s3:GetObject", f"{BUCKET}/io/a"))
    assert not allowed([statement], Request("s3:GetObject", f"{BUCKET}/IO/a"))
    assert not allowed([statement], Request("s3:PutObject", f"{BUCKET}/io/a"))


def test_an_explicit_deny_wins() -> None:
    deny = {"Effect": "Deny", "Action": "*", "Resource": "*"}
    assert not allowed([LIST, deny], Request("s3:ListBucket", BUCKET))


def test_conditions_must_hold() -> None:
    statement = {**LIST, "Condition": {"StringLike": {"s3:prefix": ["io/*"]}}}
    assert allowed([statement], Request("s3:ListBucket", BUCKET, {"s3:prefix": "io/1/"}))
    assert not allowed([statement], Request("s3:ListBucket", BUCKET, {"s3:prefix": "values/"}))
    # No prefix in the request: the key is absent and StringLike does not hold.
    assert not allowed([statement], Request("s3:ListBucket", BUCKET))


def test_an_operator_it_does_not_know_fails_instead_of_passing() -> None:
    statement = {**LIST, "Condition": {"NumericLessThan": {"s3:max-keys": "10"}}}
    with pytest.raises(Unjudgeable):
        allowed([statement], Request("s3:ListBucket", BUCKET))


def test_an_unresolved_intrinsic_never_matches_a_wildcard() -> None:
    deployment = Deployment({"Resources": {}})
    with pytest.raises(Unresolved):
        deployment.resolve({"Fn::ImportValue": "elsewhere"})
    with pytest.raises(Unresolved):
        deployment.resolve({"Fn::GetAtt": ["Missing", "Arn"]})
    statement = {"Effect": "Allow", "Action": "*", "Resource": [{"Ref": "Missing"}]}
    with pytest.raises(Unjudgeable):
        allowed([statement], Request("s3:GetObject", f"{BUCKET}/a"))


def test_intrinsics_resolve_to_the_deployed_names() -> None:
    deployment = Deployment(
        {
            "Resources": {
                "Table": {"Type": "AWS::DynamoDB::Table", "Properties": {"TableName": "gantry"}},
                "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "q"}},
            }
        }
    )
    assert deployment.resolve({"Fn::GetAtt": ["Table", "Arn"]}) == (
        "arn:aws:dynamodb:us-east-1:123456789012:table/gantry"
    )
    assert deployment.resolve({"Fn::Sub": "${Queue.Arn}/x-${AWS::Region}"}) == (
        "arn:aws:sqs:us-east-1:123456789012:q/x-us-east-1"
    )
    assert deployment.resolve({"Fn::Join": ["", ["a", {"Ref": "Queue"}]]}) == (
        "ahttps://sqs.us-east-1.amazonaws.com/123456789012/q"
    )


def test_copying_an_object_needs_read_of_the_source_and_write_of_the_target() -> None:
    requests = to_requests(
        "s3", "CopyObject", {"Bucket": "data", "Key": "values/b", "CopySource": "data/uploads/a"}
    )
    assert [(r.action, r.resource) for r in requests] == [
        ("s3:GetObject", f"{BUCKET}/uploads/a"),
        ("s3:PutObject", f"{BUCKET}/values/b"),
    ]
