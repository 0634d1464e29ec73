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
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Annotations
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

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
