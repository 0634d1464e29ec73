"""One factory for every Gantry Lambda function, so they differ only where they must.

Each function gets its own log group (explicit retention, removed with the stack unlike the
implicit ``/aws/lambda/*`` group), the Powertools layer, arm64, and the common environment:
the ``GANTRY_*`` settings every handler reads through ``gantry.settings.Settings`` plus the
Powertools variables. Handlers add nothing of their own to the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.nag import acknowledge
from infra.packaging import ARCHITECTURE, RUNTIME, LambdaCode

# One service name for all functions: Powertools adds it as the ``service`` dimension of every
# metric, so the alarms and the dashboard can address JobsFailed/JobsSucceeded regardless of
# which function emitted them.
POWERTOOLS_SERVICE_NAME = "gantry"
METRICS_NAMESPACE = "Gantry"


@dataclass(frozen=True)
class FunctionSpec:
    """What differs between the functions."""

    name: str
    handler: str
    description: str
    imaging: bool = False
    # The import function: registers bioimage.io model packages (LambdaCode.bioimageio).
    bioimageio: bool = False
    memory_mib: int = 1024
    timeout_seconds: int = 30
    ephemeral_mib: int = 512
    # A fixed name where something outside the stack's functions must name it (the runner).
    function_name: str | None = None


class GantryFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: FunctionSpec,
        code: LambdaCode,
        environment: Mapping[str, str],
        log_level: str,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
        reserved_concurrency: int | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=retention(log_retention_days),
            removal_policy=removal_policy,
        )
        # An explicit role instead of the default one with AWSLambdaBasicExecutionRole: that
        # managed policy may write to any log group; this one only to the function's own.
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Gantry {spec.name} function",
        )
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            description=spec.description,
            function_name=spec.function_name,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=spec.handler,
            code=code.bioimageio
            if spec.bioimageio
            else (code.imaging if spec.imaging else code.core),
            layers=[code.powertools],
            memory_size=spec.memory_mib,
            timeout=Duration.seconds(spec.timeout_seconds),
            ephemeral_storage_size=Size.mebibytes(spec.ephemeral_mib),
            log_group=self.log_group,
            role=self.role,
            reserved_concurrent_executions=reserved_concurrency,
            environment={
                **environment,
                **(code.simpleitk_environment() if spec.imaging else {}),
                "POWERTOOLS_SERVICE_NAME": POWERTOOLS_SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "LOG_LEVEL": log_level,
            },
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "python3.13 on purpose: the Powertools layer the stack uses is the public "
            "python313 layer of the release pyproject.toml pins (infra/packaging.py "
            "POWERTOOLS_LAYERS), so the functions run what the tests run. A newer runtime "
            "needs that release's layer for it and aarch64 wheels of SimpleITK, numpy and "
            "pydantic-core for it; RUNTIME and PYTHON_VERSION change together then.",
        )


RETENTION_BY_DAYS: dict[int, logs.RetentionDays] = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}


def retention(days: int) -> logs.RetentionDays:
    try:
        return RETENTION_BY_DAYS[days]
    except KeyError:
        raise ValueError(
            f"gantry:logRetentionDays must be one of {sorted(RETENTION_BY_DAYS)}, not {days}"
        ) from None
