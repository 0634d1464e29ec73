"""TransactWriteItems on the embedded endpoint: all or nothing, as moto's own (and DynamoDB).

Each case runs twice, against moto's implementation and against the endpoint's
(``gantry.local.transactions``), and must give the same answers and leave the same items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from gantry.local import moto_patch, transactions

TABLE = "transactions"


@pytest.fixture(params=["moto", "gantry"])
def dynamodb(request, monkeypatch) -> Iterator[Any]:
    original = moto_patch.original(DynamoDBBackend, "transact_write_items")
    chosen = original if request.param == "moto" else transactions.transact_write_items
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", chosen)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": "PK", "KeyType": "HASH"},
                {"AttributeName": "SK", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "PK", "AttributeType": "S"},
                {"AttributeName": "SK", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        for n in range(3):
            client.put_item(
                TableName=TABLE,
                Item={"PK": {"S": f"item#{n}"}, "SK": {"S": "A"}, "count": {"N": "1"}},
            )
        yield client


def _items(client: Any) -> dict[str, dict[str, Any]]:
    found = client.scan(TableName=TABLE)["Items"]
    return {item["PK"]["S"]: item for item in found}


def _key(pk: str) -> dict[str, Any]:
    return {"PK": {"S": pk}, "SK": {"S": "A"}}


def _put(pk: str, **extra: Any) -> dict[str, Any]:
    return {"Put": {"TableName": TABLE, "Item": {**_key(pk), "count": {"N": "0"}}, **extra}}


def _add(pk: str, **extra: Any) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": TABLE,
            "Key": _key(pk),
            "UpdateExpression": "ADD #c :one",
            "ExpressionAttributeNames": {"#c": "count"},
            "ExpressionAttributeValues": {":one": {"N": "1"}},
            **extra,
        }
    }


def test_every_action_is_applied(dynamodb) -> None:
    dynamodb.transact_write_items(
        TransactItems=[
            _put("new", ConditionExpression="attribute_not_exists(PK)"),
            _add("item#0"),
            {"Delete": {"TableName": TABLE, "Key": _key("item#1")}},
            {
                "ConditionCheck": {
                    "TableName": TABLE,
                    "Key": _key("item#2"),
                    "ConditionExpression": "attribute_exists(PK)",
                }
            },
        ]
    )
    items = _items(dynamodb)
    assert sorted(items) == ["item#0", "item#2", "new"]
    assert items["item#0"]["count"] == {"N": "2"}
    assert items["item#2"]["count"] == {"N": "1"}


def test_a_failed_condition_writes_nothing_and_says_which(dynamodb) -> None:
    before = _items(dynamodb)
    with pytest.raises(ClientError) as raised:
        dynamodb.transact_write_items(
            TransactItems=[
                _put("new"),
                _add("item#0"),
                {"Delete": {"TableName": TABLE, "Key": _key("item#1")}},
                _add("item#2", ConditionExpression="attribute_not_exists(PK)"),
            ]
        )
    error = raised.value.response
    assert error["Error"]["Code"] == "TransactionCanceledException"
    codes = [reason["Code"] for reason in error["CancellationReasons"]]
    assert codes == ["None", "None", "None", "ConditionalCheckFailed"]
    assert _items(dynamodb) == before


def test_an_action_that_cannot_be_applied_undoes_the_earlier_ones(dynamodb) -> None:
    before = _items(dynamodb)
    with pytest.raises(ClientError) as raised:
        dynamodb.transact_write_items(
            TransactItems=[
                _put("new"),
                _add("item#0"),
                # ADD of a number to a string attribute: refused when it is applied.
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": _key("item#1"),
                        "UpdateExpression": "SET #s = :text ADD #s :one",
                        "ExpressionAttributeNames": {"#s": "state"},
                        "ExpressionAttributeValues": {":text": {"S": "x"}, ":one": {"N": "1"}},
                    }
                },
            ]
        )
    assert raised.value.response["Error"]["Code"] in (
        "TransactionCanceledException",
        "ValidationException",
    )
    assert _items(dynamodb) == before


def test_two_actions_on_one_item_are_refused(dynamodb) -> None:
    before = _items(dynamodb)
    with pytest.raises(ClientError) as raised:
        dynamodb.transact_write_items(TransactItems=[_put("new"), _add("item#0"), _add("item#0")])
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert _items(dynamodb) == before


def test_the_endpoint_uses_the_item_by_item_rollback() -> None:
    from gantry.local.endpoint import moto_app

    moto_app()
    assert DynamoDBBackend.transact_write_items is transactions.transact_write_items
