"""The embedded endpoint's DynamoDB responses (gantry.local.dynamodb_responses) are moto's,
byte for byte: every response of real requests is serialised both ways and compared."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.dynamodb.responses import DynamoResult

from gantry.local import dynamodb_responses
from gantry.local.endpoint import EmbeddedAws

CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
TABLE = "responses"


@pytest.fixture
def compared() -> Iterator[list[tuple[str, Any, Any]]]:
    """Each DynamoDB response as (operation, moto's, ours), while the endpoint answers with
    moto's."""
    endpoint = EmbeddedAws().start()
    dynamodb_responses.uninstall()
    original = DynamoResult.execute_result
    assert dynamodb_responses.install()
    shortcut = DynamoResult.execute_result
    seen: list[tuple[str, Any, Any]] = []

    def both(self: Any, context: Any) -> Any:
        theirs = original(self, context)
        ours = shortcut(self, context)
        # Copies: moto adds its own headers to the dict of the response it sends.
        seen.append((str(context.operation_model.name), _copy(theirs), _copy(ours)))
        return theirs

    DynamoResult.execute_result = both  # type: ignore[method-assign]
    try:
        yield seen, endpoint  # type: ignore[misc]
    finally:
        DynamoResult.execute_result = shortcut  # type: ignore[method-assign]
        endpoint.stop()


def _copy(response: tuple[Any, dict[str, Any], Any]) -> tuple[Any, dict[str, Any], Any]:
    status, headers, body = response
    return status, dict(headers), body


def _item(n: int) -> dict[str, Any]:
    return {
        "PK": {"S": f"JOB#{n}"},
        "SK": {"S": "META"},
        "GSI1PK": {"S": "USER#1"},
        "GSI1SK": {"S": f"{n:08d}"},
        "doc": {"S": '{"inputs": [], "status": "Queued", "note": "ünïcode \\"quoted\\""}'},
        "version": {"N": "3"},
        "ratio": {"N": "-1.50"},
        "blob": {"B": b"\x00\x01binary"},
        "tags": {"SS": ["a", "b"]},
        "counts": {"NS": ["1", "2.5"]},
        "blobs": {"BS": [b"x", b"y"]},
        "map": {"M": {"nested": {"L": [{"S": "x"}, {"N": "1"}, {"NULL": True}]}}},
        "list": {"L": [{"M": {"a": {"BOOL": False}}}, {"SS": ["z"]}]},
        "flag": {"BOOL": True},
        "nothing_here": {"NULL": True},
    }


def test_dynamodb_responses_are_byte_for_byte_moto_s(compared):
    seen, endpoint = compared
    client = boto3.client(
        "dynamodb", endpoint_url=endpoint.url, region_name="us-east-1", **CREDENTIALS
    )
    client.create_table(
        TableName=TABLE,
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"}
            for name in ("PK", "SK", "GSI1PK", "GSI1SK")
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "GSI1",
                "KeySchema": [
                    {"AttributeName": "GSI1PK", "KeyType": "HASH"},
                    {"AttributeName": "GSI1SK", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.describe_table(TableName=TABLE)
    client.list_tables()
    key = {"PK": {"S": "JOB#1"}, "SK": {"S": "META"}}
    for n in range(5):
        client.put_item(TableName=TABLE, Item=_item(n), ReturnConsumedCapacity="TOTAL")
    client.put_item(TableName=TABLE, Item=_item(1), ReturnValues="ALL_OLD")
    client.get_item(TableName=TABLE, Key=key, ConsistentRead=True)
    client.get_item(TableName=TABLE, Key={"PK": {"S": "none"}, "SK": {"S": "none"}})
    client.get_item(
        TableName=TABLE,
        Key=key,
        ProjectionExpression="#d, version",
        ExpressionAttributeNames={"#d": "doc"},
    )
    client.batch_get_item(
        RequestItems={
            TABLE: {"Keys": [{"PK": {"S": f"JOB#{n}"}, "SK": {"S": "META"}} for n in range(7)]}
        },
        ReturnConsumedCapacity="INDEXES",
    )
    client.update_item(
        TableName=TABLE,
        Key=key,
        UpdateExpression="SET #s = :s, version = version + :one ADD tags :t REMOVE nothing_here",
        ConditionExpression="attribute_exists(PK)",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":s": {"S": "Executing"},
            ":one": {"N": "1"},
            ":t": {"SS": ["c"]},
        },
        ReturnValues="ALL_NEW",
    )
    client.update_item(
        TableName=TABLE,
        Key=key,
        UpdateExpression="SET version = version + :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
        ReturnValues="UPDATED_OLD",
    )
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.put_item(
            TableName=TABLE,
            Item=_item(1),
            ConditionExpression="attribute_not_exists(PK)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    client.query(
        TableName=TABLE,
        IndexName="GSI1",
        KeyConditionExpression="GSI1PK = :u",
        ExpressionAttributeValues={":u": {"S": "USER#1"}},
        ScanIndexForward=False,
        Limit=2,
    )
    client.query(
        TableName=TABLE,
        KeyConditionExpression="PK = :p",
        ExpressionAttributeValues={":p": {"S": "JOB#2"}},
        Select="COUNT",
    )
    client.scan(TableName=TABLE, Limit=3)
    client.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": _item(10)}},
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": key,
                    "UpdateExpression": "SET flag = :f",
                    "ExpressionAttributeValues": {":f": {"BOOL": False}},
                }
            },
        ]
    )
    with pytest.raises(client.exceptions.TransactionCanceledException):
        client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": TABLE,
                        "Item": _item(11),
                        "ConditionExpression": "attribute_exists(PK)",
                    }
                }
            ]
        )
    client.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": key}}])
    client.batch_write_item(
        RequestItems={
            TABLE: [{"DeleteRequest": {"Key": {"PK": {"S": "JOB#4"}, "SK": {"S": "META"}}}}]
        }
    )
    client.delete_item(TableName=TABLE, Key=key, ReturnValues="ALL_OLD")

    # TransactWriteItems and BatchWriteItem answer with JSON moto writes itself.
    operations = {operation for operation, _, _ in seen}
    assert {
        "GetItem",
        "BatchGetItem",
        "PutItem",
        "UpdateItem",
        "Query",
        "Scan",
        "TransactGetItems",
        "DeleteItem",
    } <= operations
    for operation, theirs, ours in seen:
        assert ours == theirs, operation
