"""Create the table and bucket from gantry.resources on any AWS-compatible endpoint.

Used by the local stack and the tests; the CDK stacks build the same shapes from the same
definitions for AWS.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from gantry import resources
from gantry.aws import Clients
from gantry.settings import Settings


def table_definition(name: str) -> dict:
    attributes = {resources.PARTITION_KEY, resources.SORT_KEY}
    for index in resources.GLOBAL_INDEXES:
        attributes |= {index.partition_key, index.sort_key}
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [
            {"AttributeName": resources.PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": resources.SORT_KEY, "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index.name,
                "KeySchema": [
                    {"AttributeName": index.partition_key, "KeyType": "HASH"},
                    {"AttributeName": index.sort_key, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in resources.GLOBAL_INDEXES
        ],
    }


def ensure_table(clients: Clients, settings: Settings) -> None:
    try:
        clients.dynamodb.create_table(**table_definition(settings.table_name))
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise
        return
    clients.dynamodb.get_waiter("table_exists").wait(TableName=settings.table_name)
    clients.dynamodb.update_time_to_live(
        TableName=settings.table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": resources.TTL_ATTRIBUTE},
    )


def ensure_bucket(clients: Clients, settings: Settings) -> None:
    try:
        if settings.region == "us-east-1":
            clients.s3.create_bucket(Bucket=settings.bucket_name)
        else:
            clients.s3.create_bucket(
                Bucket=settings.bucket_name,
                CreateBucketConfiguration={"LocationConstraint": settings.region},
            )
    except ClientError as error:
        if error.response["Error"]["Code"] not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise


def ensure_data(clients: Clients, settings: Settings) -> None:
    ensure_table(clients, settings)
    ensure_bucket(clients, settings)
