"""What importing an algorithm image needs on AWS: the import function's trigger, its runner
layer, and its rights on the image repository (docs/deploy.md "Importing an algorithm image").

- The API queues one ``import-image`` message per uploaded archive on the imports queue; the
  import function (``lambdas.on_import``) takes them one at a time (an import may take its
  whole 15 minutes) and pushes the image, with the runner layer, to the repository.
- The runner layer (``make runner``'s ``gantry-runner-layer.tar``) reaches the function as a
  Lambda layer, at ``/opt/gantry-runner-layer.tar`` (``Settings.runner_layer_path``). A stack
  synthesized without it still deploys (with a warning); its imports fail saying so.
- The function alone may push to and delete from the repository: upload actions, PutImage,
  BatchGetImage (a retried import finds its tag), BatchDeleteImage (removing an image), all on
  this repository only; GetAuthorizationToken has no resource-level permissions. The
  repository's own policy denies deleting images to every other principal (not in a
  destroyable stack, which CloudFormation empties on delete), and its tags are immutable, so
  an image an algorithm uses cannot be replaced or removed behind the platform's back; its
  lifecycle policy (infra/compute.py) expires untagged manifests only.
- With an importer image (``gantry:importerImage``), archives larger than the function takes,
  and imports that run out of its time, go on as a Batch job on the CPU queue
  (``gantry.pipeline.import_job``): its role has the function's rights on the table, the
  uploads and the repository (not deleting); the function may submit it, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Annotations, Aws, Duration, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from gantry import resources as r
from gantry.pipeline.import_job import COMMAND as IMPORT_COMMAND
from gantry.pipeline.import_job import DEFINITION_NAME as IMPORT_DEFINITION_NAME
from infra.access import grant_prefixes, grant_table
from infra.compute import CPU_RUNNER_MEMORY, Compute
from infra.config import GantryConfig
from infra.nag import acknowledge

REPO_ROOT = Path(__file__).resolve().parents[1]
# What the import's push does on the repository (gantry.oci.registry over ECR's OCI API).
PUSH_ACTIONS = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
    "ecr:BatchGetImage",
)
DELETE_ACTIONS = ("ecr:BatchDeleteImage",)
# The import job's own time limit (a 10 GB archive at a few MB/s takes under an hour).
IMPORT_JOB_HOURS = 4


def runner_layer_file(config: GantryConfig) -> Path:
    path = Path(config.runner_layer)
    return path if path.is_absolute() else REPO_ROOT / path


class ImageImport(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: GantryConfig,
        function: lambda_.Function,
        queue: sqs.IQueue,
        repository: ecr.Repository,
        compute: Compute,
        table: dynamodb.ITable,
        bucket: s3.IBucket,
        environment: Mapping[str, str],
    ) -> None:
        super().__init__(scope, construct_id)
        layer_file = runner_layer_file(config)
        self.runner_layer: lambda_.LayerVersion | None = None
        if layer_file.is_file():
            self.runner_layer = lambda_.LayerVersion(
                self,
                "RunnerLayer",
                description="Gantry's runner layer (gantry-runner-layer.tar), appended to "
                "every imported algorithm image",
                code=lambda_.Code.from_asset(
                    str(layer_file.parent), exclude=["*", f"!{layer_file.name}"]
                ),
            )
            function.add_layers(self.runner_layer)
        else:
            Annotations.of(self).add_warning_v2(
                "gantry:noRunnerLayer",
                f"{layer_file} does not exist: run 'make runner' before deploying, or imported "
                "algorithm images will fail with a reason",
            )

        function.add_event_source(
            # One import per invocation: each gets the function's whole time.
            sources.SqsEventSource(
                queue,
                batch_size=1,
                report_batch_item_failures=True,
                max_concurrency=config.sqs_max_concurrency,
            )
        )
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=[*PUSH_ACTIONS, *DELETE_ACTIONS],
                resources=[repository.repository_arn],
            )
        )
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"])
        )
        acknowledge(
            function.role or function,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken has no resource-level permissions; every push and "
            "deletion is limited to the algorithm image repository.",
        )
        self._guard(repository, function, config)
        self.job_definition: batch.EcsJobDefinition | None = None
        if config.importer_image:
            self.job_definition = self._import_job(
                config, function, repository, compute, table, bucket, environment
            )
        else:
            Annotations.of(self).add_warning_v2(
                "gantry:noImporterImage",
                "gantry:importerImage is not set: imports run in the import function only, "
                "and an archive it cannot import within 15 minutes fails with a reason",
            )

    def _import_job(
        self,
        config: GantryConfig,
        function: lambda_.Function,
        repository: ecr.Repository,
        compute: Compute,
        table: dynamodb.ITable,
        bucket: s3.IBucket,
        environment: Mapping[str, str],
    ) -> batch.EcsJobDefinition:
        """The import job on the CPU queue: the import function's rights on the table, the
        uploads and the repository, in a job with no time limit but its own."""
        role = iam.Role(
            self,
            "ImportJobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Gantry's image import as a Batch job: reads uploads, pushes to ECR",
        )
        grant_table(role, table, write=True)
        grant_prefixes(role, bucket, read=(r.PREFIX_UPLOADS,))
        role.add_to_policy(
            iam.PolicyStatement(actions=list(PUSH_ACTIONS), resources=[repository.repository_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"])
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken has no resource-level permissions; every push is "
            "limited to the algorithm image repository.",
        )
        definition = batch.EcsJobDefinition(
            self,
            "ImportJobDefinition",
            job_definition_name=IMPORT_DEFINITION_NAME,
            container=batch.EcsEc2ContainerDefinition(
                self,
                "ImportJobContainer",
                image=ecs.ContainerImage.from_registry(config.importer_image),
                # A whole CPU host, as every CPU job (no job shares a host with it).
                cpu=config.cpu_host_vcpus,
                memory=CPU_RUNNER_MEMORY,
                environment={**environment, "AWS_REGION": Aws.REGION},
                command=list(IMPORT_COMMAND),
                job_role=role,
                execution_role=compute.execution_role,
                logging=ecs.LogDriver.aws_logs(stream_prefix="import", log_group=compute.job_logs),
            ),
            # A job that fails is reported by its state-change event, which fails the import
            # (gantry.pipeline.import_job.job_ended): no Batch retries.
            timeout=Duration.hours(IMPORT_JOB_HOURS),
        )
        function.add_environment("GANTRY_IMPORT_JOB_DEFINITION", IMPORT_DEFINITION_NAME)
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["batch:SubmitJob"],
                resources=[
                    compute.cpu_queue.job_queue_arn,
                    Stack.of(self).format_arn(
                        service="batch",
                        resource="job-definition",
                        resource_name=f"{IMPORT_DEFINITION_NAME}*",
                    ),
                ],
            )
        )
        acknowledge(
            function.role or function,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:batch:<AWS::Region>:"
            f"<AWS::AccountId>:job-definition/{IMPORT_DEFINITION_NAME}*]",
            "Any revision of the import job's definition (each deploy may register one).",
        )
        return definition

    @staticmethod
    def _guard(
        repository: ecr.Repository, function: lambda_.Function, config: GantryConfig
    ) -> None:
        """Deny deleting images to anyone but the import function (which removes an image
        when its record is deleted).

        Pushes stay open to the account's administrators (an image for ``gantry doctor``, or
        one registered by reference): tags are immutable, so a push cannot replace an image
        an algorithm uses. A destroyable stack (``gantry:destroyOnDelete``) gets no such policy:
        CloudFormation empties the repository (``EmptyOnDelete``) with the deployer's role.
        """
        assert function.role is not None
        if config.destroy_on_delete:
            return
        repository.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OnlyTheImportFunctionDeletesImages",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=list(DELETE_ACTIONS),
                conditions={"ArnNotEquals": {"aws:PrincipalArn": function.role.role_arn}},
            )
        )
