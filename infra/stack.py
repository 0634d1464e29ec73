"""The whole platform as one stack.

One stack rather than several: every function needs the table, the bucket, the queues and the
compute ARNs, so a split would turn each of those into a cross-stack export, and an exported
table or bucket can then never be replaced or renamed without tearing down its importers.
The stack stays far below CloudFormation's 500-resource limit. Inside it, small constructs:

- ``LambdaCode`` (packaging.py): the two code assets and the Powertools layer.
- ``DataStore`` (data.py): data bucket, access-log bucket, table, notification queues + DLQs.
- ``Compute`` (compute.py): VPC, Batch environments/queues/job definition, job and SageMaker
  roles, the runner image repository.
- ``Api`` (api.py): REST API, stage, access logs, optional custom domain and WAF.
- ``Handlers`` (handlers.py): the six functions and their grants.
- ``ImageImport`` (image_import.py): the import function's queue, runner layer, ECR rights,
  and the import job on the CPU queue.
- ``Events`` (events.py): EventBridge rules, schedule, SQS sources, DLQs; the job event bus.
- ``Observability`` (observability.py): alarms on every DLQ and on failed jobs, dashboard.

The stack is environment-agnostic: no lookups, no account or region baked in, so it
synthesizes offline and deploys to whatever ``cdk deploy`` targets.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import App, Aws, CfnOutput, Duration, RemovalPolicy, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from gantry import resources
from gantry.settings import Settings
from infra.api import Api
from infra.compute import Compute
from infra.config import FEATURE_FLAGS, GantryConfig
from infra.data import DataStore
from infra.events import Events, job_event_bus
from infra.handlers import SPECS, Handlers
from infra.image_import import ImageImport
from infra.job_data import JobDataAccess
from infra.observability import Observability
from infra.packaging import LambdaCode

STACK_NAME = "Gantry"
# Lambda's SQS poller guidance: queue visibility >= 6x the consumer's timeout.
VISIBILITY_FACTOR = 6


class GantryStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        config = GantryConfig.from_node(self.node)
        # The names the handlers default to; the infra creates resources under those names and
        # still passes every one explicitly, so a changed default changes both sides together.
        # Field defaults only: GANTRY_* variables in the deployer's shell must not rename
        # resources (Settings() would read them).
        settings = Settings.model_construct()
        removal = RemovalPolicy.DESTROY if config.destroy_on_delete else RemovalPolicy.RETAIN

        code = LambdaCode(self, "Code")
        data = DataStore(
            self,
            "Data",
            config=config,
            uploads_visibility=_visibility("on_upload"),
            dropbox_visibility=_visibility("on_dropbox"),
            imports_visibility=_visibility("on_import"),
            archive_runs_visibility=_visibility("on_archive_run"),
        )
        compute = Compute(
            self,
            "Compute",
            config=config,
            bucket=data.bucket,
            log_bucket=data.log_bucket,
            settings=settings,
        )
        api = Api(self, "Api", config=config, removal_policy=removal)
        bus = job_event_bus(self)

        environment = {
            "GANTRY_TABLE_NAME": data.table.table_name,
            "GANTRY_BUCKET_NAME": data.bucket.bucket_name,
            "GANTRY_REGION": Aws.REGION,
            "GANTRY_API_BASE_URL": api.base_url,
            "GANTRY_COMPUTE_BACKEND": config.compute_backend,
            "GANTRY_SAGEMAKER_SANDBOX": config.sagemaker_sandbox,
            "GANTRY_BATCH_JOB_QUEUE_GPU": settings.batch_job_queue_gpu,
            "GANTRY_BATCH_JOB_QUEUE_CPU": settings.batch_job_queue_cpu,
            "GANTRY_BATCH_JOB_DEFINITION": settings.batch_job_definition,
            "GANTRY_BATCH_CPU_HOST_VCPUS": str(config.cpu_host_vcpus),
            "GANTRY_SAGEMAKER_ROLE_ARN": compute.sagemaker_role.role_arn,
            "GANTRY_EVENT_BUS_NAME": bus.event_bus_name,
            "GANTRY_UPLOADS_QUEUE_URL": data.uploads_queue.queue_url,
            "GANTRY_IMPORTS_QUEUE_URL": data.imports_queue.queue_url,
            "GANTRY_IMAGE_REPOSITORY": compute.repository.repository_name,
            "GANTRY_ARCHIVE_RUNS_QUEUE_URL": data.archive_runs_queue.queue_url,
            "GANTRY_DROPBOX_OWNER": config.dropbox_owner,
            "GANTRY_COMPUTE_START_TIMEOUT_SECONDS": str(config.start_timeout_minutes * 60),
            "GANTRY_JOB_CREDENTIALS_FUNCTION": resources.DEFAULT_JOB_CREDENTIALS_FUNCTION,
        }
        if config.sagemaker_runner_image:
            environment["GANTRY_SAGEMAKER_RUNNER_IMAGE"] = config.sagemaker_runner_image
        if config.bioimageio_image:
            environment["GANTRY_BIOIMAGEIO_IMAGE"] = config.bioimageio_image
        if config.bioimageio_gpu_image:
            environment["GANTRY_BIOIMAGEIO_GPU_IMAGE"] = config.bioimageio_gpu_image

        handlers = Handlers(
            self,
            "Handlers",
            config=config,
            code=code,
            environment=environment,
            table=data.table,
            bucket=data.bucket,
            bus=bus,
            uploads_queue=data.uploads_queue,
            imports_queue=data.imports_queue,
            archive_runs_queue=data.archive_runs_queue,
            compute=compute,
            removal_policy=removal,
        )
        ImageImport(
            self,
            "ImageImport",
            config=config,
            function=handlers["on_import"],
            queue=data.imports_queue,
            repository=compute.repository,
            compute=compute,
            table=data.table,
            bucket=data.bucket,
            environment=environment,
        )
        JobDataAccess(
            self,
            "JobData",
            code=code,
            environment=environment,
            log_level=config.log_level,
            log_retention_days=config.log_retention_days,
            removal_policy=removal,
            table=data.table,
            bucket=data.bucket,
            runner_roles=[compute.job_role, compute.sagemaker_role],
        )
        api.integrate(handlers["api"])
        wiring = Events(
            self,
            "Events",
            handlers=handlers,
            data=data,
            compute=compute,
            bus=bus,
            sqs_max_concurrency=config.sqs_max_concurrency,
        )
        observability = Observability(
            self,
            "Observability",
            dead_letter_queues={**data.dead_letter_queues, **wiring.dead_letter_queues},
            functions=handlers.functions,
            rest_api=api.rest_api,
            alarm_email=config.alarm_email,
        )

        outputs = {
            "ApiBaseUrl": api.base_url,
            "TableName": data.table.table_name,
            "BucketName": data.bucket.bucket_name,
            "EventBusName": bus.event_bus_name,
            "GpuJobQueue": compute.gpu_queue.job_queue_name,
            "CpuJobQueue": compute.cpu_queue.job_queue_name,
            "JobDefinition": settings.batch_job_definition,
            "SageMakerRoleArn": compute.sagemaker_role.role_arn,
            "RunnerRepositoryUri": compute.repository.repository_uri,
            "AlarmTopicArn": observability.topic.topic_arn,
        }
        if api.domain is not None:
            outputs["CustomDomainTarget"] = api.domain.domain_name_alias_domain_name
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)


def _visibility(function: str) -> Duration:
    return Duration.seconds(SPECS[function][0].timeout_seconds * VISIBILITY_FACTOR)


def create_app(
    context: dict[str, Any] | None = None, *, nag: bool = True, outdir: str | None = None
) -> App:
    """The CDK app: one Gantry stack, checked by cdk-nag's AWS Solutions pack at synth."""
    app = App(context={**FEATURE_FLAGS, **(context or {})}, outdir=outdir)
    GantryStack(app, STACK_NAME, description="Gantry: GPU algorithm containers on typed inputs")
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
