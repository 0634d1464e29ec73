"""Least-privilege IAM statements shared by the constructs.

S3 access is granted per key prefix (``uploads/``, ``values/``, ``io/`` …) with explicit
actions rather than the L2 ``grant_*`` helpers, whose ``s3:GetObject*``-style action wildcards
give more than Gantry needs. A prefix a function may write it may also read (HEAD before
overwrite, copy within the prefix). DynamoDB access is the item-level API on the one table and
on each named GSI from ``gantry.resources`` (no ``index/*`` wildcard, no ``Scan``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from aws_cdk import Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import IConstruct

from gantry import resources
from infra.nag import acknowledge

S3_READ = ("s3:GetObject",)
# ListMultipartUploadParts: gcapi's list-parts endpoint (resuming an upload) asks S3.
S3_WRITE = (
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
TABLE_READ = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query")
TABLE_WRITE = (
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
)


def object_arns(bucket: s3.IBucket, prefixes: Iterable[str]) -> list[str]:
    return [bucket.arn_for_objects(f"{prefix}*") for prefix in prefixes]


def prefix_statements(
    bucket: s3.IBucket, *, read: Iterable[str] = (), write: Iterable[str] = ()
) -> list[iam.PolicyStatement]:
    """Object access under the given prefixes plus a prefix-limited ``ListBucket``."""
    write = sorted(set(write))
    readable = sorted(set(read) | set(write))
    if not readable:
        return []
    statements = [
        iam.PolicyStatement(actions=list(S3_READ), resources=object_arns(bucket, readable)),
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in readable]}},
        ),
    ]
    if write:
        statements.append(
            iam.PolicyStatement(actions=list(S3_WRITE), resources=object_arns(bucket, write))
        )
    return statements


def grant_prefixes(
    principal: iam.IGrantable,
    bucket: s3.IBucket,
    *,
    read: Iterable[str] = (),
    write: Iterable[str] = (),
) -> None:
    read, write = tuple(read), tuple(write)
    for statement in prefix_statements(bucket, read=read, write=write):
        principal.grant_principal.add_to_principal_policy(statement)
    for prefix in sorted(set(read) | set(write)):
        acknowledge(
            cast(IConstruct, principal.grant_principal),  # a Role: its DefaultPolicy is a child
            f"AwsSolutions-IAM5[Resource::{bucket_arn_placeholder(bucket)}/{prefix}*]",
            f"Object access is scoped to the {prefix} prefix this principal works in; the "
            "keys below it are per job/upload ids that cannot be known at deploy time.",
        )


def bucket_arn_placeholder(bucket: s3.IBucket) -> str:
    """How cdk-nag renders the bucket's ARN in a finding: ``<LogicalId.Arn>``."""
    resolved = Stack.of(bucket).resolve(bucket.bucket_arn)
    logical_id = resolved["Fn::GetAtt"][0]
    return f"<{logical_id}.Arn>"


def table_arns(table: dynamodb.ITable) -> list[str]:
    return [
        table.table_arn,
        *(f"{table.table_arn}/index/{gsi.name}" for gsi in resources.GLOBAL_INDEXES),
    ]


def grant_table(principal: iam.IGrantable, table: dynamodb.ITable, *, write: bool) -> None:
    actions = [*TABLE_READ, *(TABLE_WRITE if write else ())]
    principal.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(actions=actions, resources=table_arns(table))
    )
