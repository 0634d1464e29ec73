"""Per-job data access: the credentials function and the role whose sessions it hands out.

The Batch job role and the SageMaker role hold no S3 data permission at all; each may only
invoke ``gantry-job-credentials`` (``lambdas/job_credentials.py``). That function checks the
runner's one-time claim against the job's record and assumes the *job data* role with a
session policy limited to ``io/<job>/<attempt>/`` (``gantry/job_credentials.py``): only the
function may assume it, and what a session can reach is the intersection of the role's
``io/`` grant and that policy. Cost: one short invocation per attempt and one per hour while
it runs (chained sessions last at most an hour), about $0.000001 each.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gantry import resources
from infra.access import grant_prefixes
from infra.functions import FunctionSpec, GantryFunction
from infra.packaging import LambdaCode

SPEC = FunctionSpec(
    name="job_credentials",
    handler="lambdas.job_credentials.handler",
    description="Issues a job's runner credentials for its own io/<job>/<attempt>/ only",
    memory_mib=256,
    timeout_seconds=15,
    function_name=resources.DEFAULT_JOB_CREDENTIALS_FUNCTION,
)


class JobDataAccess(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: LambdaCode,
        environment: Mapping[str, str],
        log_level: str,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
        table: dynamodb.ITable,
        bucket: s3.IBucket,
        runner_roles: list[iam.IRole],
    ) -> None:
        super().__init__(scope, construct_id)
        wrapper = GantryFunction(
            self,
            "Credentials",
            spec=SPEC,
            code=code,
            environment=environment,
            log_level=log_level,
            log_retention_days=log_retention_days,
            removal_policy=removal_policy,
        )
        self.function = wrapper.function
        self.data_role = iam.Role(
            self,
            "DataRole",
            assumed_by=iam.ArnPrincipal(wrapper.role.role_arn),
            # Sessions are chained from the function's own, which STS caps at one hour.
            max_session_duration=Duration.hours(1),
            description="Gantry job data: sessions limited to one io/<job>/<attempt>/ prefix",
        )
        grant_prefixes(self.data_role, bucket, write=[resources.PREFIX_IO])
        wrapper.role.add_to_policy(
            iam.PolicyStatement(actions=["sts:AssumeRole"], resources=[self.data_role.role_arn])
        )
        # Reads the job, records the redeemed claim (the job store's compare-and-set write is
        # a conditional PutItem of the whole item).
        wrapper.role.add_to_policy(
            iam.PolicyStatement(
                actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                resources=[table.table_arn],
            )
        )
        self.function.add_environment("GANTRY_JOB_DATA_ROLE_ARN", self.data_role.role_arn)
        for role in runner_roles:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["lambda:InvokeFunction"], resources=[self.function.function_arn]
                )
            )
