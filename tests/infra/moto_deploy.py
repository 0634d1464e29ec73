"""Deploy the synthesized template into moto's CloudFormation (server mode) and act as the
parts of AWS that moto does not play: Lambda's SQS pollers and EventBridge's Lambda targets.

Only this harness is patched, never the template the stack synthesizes: ``harness_template``
returns a patched *copy*, and every patch says which moto gap it covers. What moto then still
cannot create is listed in ``NOT_CREATED`` and checked by the test, so the list stays true.

Invoking a deployed function means: read its configuration from moto's Lambda (handler path
and environment, exactly as the stack set them), build the handler's settings from that
environment plus the endpoint, and call the handler in this process. Lambda itself (moto
needs Docker to run code) and the functions' IAM are not exercised here.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import boto3

ACCOUNT = "123456789012"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# `cdk bootstrap` writes this parameter; the template's BootstrapVersion rule reads it.
BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
ASSETS_BUCKET = f"cdk-hnb659fds-assets-{ACCOUNT}-{REGION}"

# Removed from the copy, with the reason; how the test covers each otherwise is in
# docs/deploy.md ("What was verified offline").
REMOVED: dict[str, str] = {
    "AWS::CloudWatch::Alarm": "moto's CloudFormation cannot create alarms",
    "AWS::CloudWatch::Dashboard": "moto's CloudFormation cannot create dashboards",
    "Custom::S3BucketNotifications": "its handler is a Lambda function, which moto runs only "
    "in Docker; the harness applies the same NotificationConfiguration itself",
}
# Resource types moto's CloudFormation accepts but does not create (it warns and skips them).
NOT_CREATED = frozenset(
    {
        "AWS::S3::BucketPolicy",
        "AWS::SQS::QueuePolicy",
        "AWS::SNS::TopicPolicy",
        "AWS::ApiGateway::Account",
        "AWS::ApiGateway::Stage",
        "AWS::Lambda::EventInvokeConfig",
    }
)


def _walk(node: Any, replace: Callable[[dict[str, Any]], Any]) -> Any:
    if isinstance(node, dict):
        replaced = replace(node)
        if replaced is not node:
            return replaced
        return {key: _walk(value, replace) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk(value, replace) for value in node]
    return node


def harness_template(template: dict[str, Any], batch_service_role: str) -> dict[str, Any]:
    """A copy of ``template`` that moto's CloudFormation can create."""
    patched = copy.deepcopy(template)
    resources: dict[str, Any] = patched["Resources"]
    for logical_id in [k for k, v in resources.items() if v["Type"] in REMOVED]:
        del resources[logical_id]
    for logical_id, resource in resources.items():
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::EC2::FlowLog":
            # moto takes everything after the ARN's resource part as the bucket name, so the
            # key prefix makes the bucket unknown: deliver to the bucket itself.
            join = props["LogDestination"]["Fn::Join"]
            props["LogDestination"] = join[1][0]
        elif kind == "AWS::ECR::Repository":
            # moto does not generate a name; CloudFormation does.
            props.setdefault("RepositoryName", logical_id.lower())
        elif kind == "AWS::Batch::ComputeEnvironment":
            # moto requires the (optional) service role and the type in upper case.
            props.setdefault("ServiceRole", batch_service_role)
            props["Type"] = props["Type"].upper()
    buses = {k: v["Properties"]["Name"] for k, v in resources.items() if v["Type"].endswith("Bus")}

    def moto_can_resolve(node: dict[str, Any]) -> Any:
        attribute = node.get("Fn::GetAtt")
        if isinstance(attribute, list) and attribute[1] in (
            "ComputeEnvironmentArn",
            "JobQueueArn",
        ):
            # moto has no such attributes; its Ref of both is the ARN, as CloudFormation's is.
            return {"Ref": attribute[0]}
        if set(node) == {"Ref"} and node["Ref"] in buses:
            # moto's Ref of an event bus is its model object, not the name.
            return buses[node["Ref"]]
        return node

    return _walk(patched, moto_can_resolve)


@dataclass
class Deployed:
    """The stack as moto created it, and the handlers it wires, callable in this process."""

    endpoint: str
    template: dict[str, Any]
    stack: dict[str, Any]
    skipped: set[str]
    invocations: list[str] = field(default_factory=list)
    _contexts: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str, **credentials: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            **(credentials or CREDENTIALS),
        )

    @property
    def outputs(self) -> dict[str, str]:
        return {o["OutputKey"]: o["OutputValue"] for o in self.stack.get("Outputs", [])}

    def physical_id(self, logical_id: str) -> str:
        cf = self.client("cloudformation")
        summaries = cf.list_stack_resources(StackName="Gantry")["StackResourceSummaries"]
        return next(
            str(r["PhysicalResourceId"]) for r in summaries if r["LogicalResourceId"] == logical_id
        )

    # --- Functions -----------------------------------------------------------------------

    def function(self, name_or_arn: str) -> dict[str, Any]:
        return dict(self.client("lambda").get_function_configuration(FunctionName=name_or_arn))

    def context_of(self, function: dict[str, Any]) -> Any:
        """The handler's Context, from the deployed function's own environment."""
        from gantry.context import Context
        from gantry.pipeline.wiring import install
        from gantry.settings import Settings

        name = function["FunctionName"]
        if name not in self._contexts:
            env = function["Environment"]["Variables"]
            values = {
                key.removeprefix("GANTRY_").lower(): value
                for key, value in env.items()
                if key.startswith("GANTRY_")
            }
            settings = Settings.model_validate({**values, "endpoint_url": self.endpoint})
            self._contexts[name] = install(Context.create(settings))
        return self._contexts[name]

    def invoke(self, name_or_arn: str, event: dict[str, Any]) -> Any:
        """Run the deployed function's handler on ``event`` as Lambda would."""
        from gantry.local.client import LambdaContextStub
        from lambdas import runtime

        function = self.function(name_or_arn)
        module, _, attribute = function["Handler"].rpartition(".")
        handler = getattr(importlib.import_module(module), attribute)
        self.invocations.append(function["FunctionName"])
        previous = runtime._context
        runtime._context = self.context_of(function)
        try:
            return handler(event, LambdaContextStub())
        finally:
            runtime._context = previous

    # --- What AWS would do on its own ----------------------------------------------------

    def poll_queues(self) -> int:
        """One round of Lambda's SQS pollers over every deployed event source mapping;
        partial batch failures stay in the queue. Returns the number of messages handled."""
        sqs = self.client("sqs")
        handled = 0
        for mapping in self.client("lambda").list_event_source_mappings()["EventSourceMappings"]:
            queue_name = mapping["EventSourceArn"].rsplit(":", 1)[1]
            url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
            received = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            records = []
            for m in received:
                if json.loads(m["Body"]).get("Event") == "s3:TestEvent":
                    # S3's first message on a new notification configuration; Lambda's
                    # handler would see it too, but it carries nothing to do.
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                    continue
                records.append(
                    {
                        "messageId": m["MessageId"],
                        "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"],
                        "attributes": m.get("Attributes", {}),
                        "messageAttributes": {},
                        "md5OfBody": m["MD5OfBody"],
                        "eventSource": "aws:sqs",
                        "eventSourceARN": mapping["EventSourceArn"],
                        "awsRegion": REGION,
                    }
                )
            if not records:
                continue
            response = self.invoke(mapping["FunctionArn"], {"Records": records}) or {}
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            for record in records:
                if record["messageId"] not in failed:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=record["receiptHandle"])
                    handled += 1
        return handled

    def deliver(self, event: dict[str, Any], bus: str = "default") -> list[str]:
        """EventBridge's delivery of ``event`` to the Lambda targets of the deployed rules on
        ``bus`` whose patterns match it (moto cannot invoke Lambda targets). Returns the rules
        that matched."""
        # moto has no TestEventPattern; its own matcher is the one its event delivery uses.
        from moto.events.models import EventPattern
        from moto.events.utils import EventMessageType

        events = self.client("events")
        matched = []
        for rule in events.list_rules(EventBusName=bus)["Rules"]:
            pattern = rule.get("EventPattern")
            # An event as moto's own delivery passes it (a TypedDict of the same keys).
            message = cast(EventMessageType, event)
            if not pattern or not EventPattern.load(pattern).matches_event(message):
                continue
            matched.append(rule["Name"])
            targets = events.list_targets_by_rule(Rule=rule["Name"], EventBusName=bus)["Targets"]
            for target in targets:
                if ":lambda:" in target["Arn"]:
                    self.invoke(target["Arn"], event)
        return matched


def _asset_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README", "code runs in the test process, not from this asset")
    return buffer.getvalue()


@contextmanager
def deployed_stack(template: dict[str, Any], endpoint: str) -> Iterator[Deployed]:
    """Bootstrap the account as `cdk bootstrap` would, create the stack, apply the bucket
    notifications of the removed custom resource."""
    import warnings

    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)

    client("ssm").put_parameter(Name=BOOTSTRAP_VERSION_PARAMETER, Value="21", Type="String")
    s3 = client("s3")
    s3.create_bucket(Bucket=ASSETS_BUCKET)
    for resource in template["Resources"].values():
        code = resource.get("Properties", {}).get("Code", {})
        if resource["Type"] == "AWS::Lambda::Function" and "S3Key" in code:
            s3.put_object(Bucket=ASSETS_BUCKET, Key=code["S3Key"], Body=_asset_zip())
    batch_role = client("iam").create_role(
        RoleName="AWSServiceRoleForBatch",
        Path="/aws-service-role/batch.amazonaws.com/",
        AssumeRolePolicyDocument="{}",
    )["Role"]["Arn"]
    body = harness_template(template, batch_role)
    cf = client("cloudformation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cf.create_stack(
            StackName="Gantry",
            TemplateBody=json.dumps(body),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
        )
    stack = cf.describe_stacks(StackName="Gantry")["Stacks"][0]
    created = {
        r["LogicalResourceId"]
        for r in cf.list_stack_resources(StackName="Gantry")["StackResourceSummaries"]
    }
    skipped = {body["Resources"][k]["Type"] for k in set(body["Resources"]) - created}
    deployed = Deployed(endpoint=endpoint, template=template, stack=stack, skipped=skipped)
    _apply_bucket_notifications(deployed)
    yield deployed


def _resolve(deployed: Deployed, node: Any) -> Any:
    """Refs and GetAtt Arn of the notification configuration, from the created stack."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return deployed.physical_id(node["Ref"])
        if set(node) == {"Fn::GetAtt"}:
            logical_id, attribute = node["Fn::GetAtt"]
            assert attribute == "Arn", attribute
            # The queue's URL; its host is AWS's, not the endpoint's: ask by name.
            name = deployed.physical_id(logical_id).rsplit("/", 1)[-1]
            sqs = deployed.client("sqs")
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            return attributes["Attributes"]["QueueArn"]
        return {key: _resolve(deployed, value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(deployed, value) for value in node]
    return node


def _apply_bucket_notifications(deployed: Deployed) -> None:
    for resource in deployed.template["Resources"].values():
        if resource["Type"] != "Custom::S3BucketNotifications":
            continue
        props = resource["Properties"]
        deployed.client("s3").put_bucket_notification_configuration(
            Bucket=_resolve(deployed, props["BucketName"]),
            NotificationConfiguration=_resolve(deployed, props["NotificationConfiguration"]),
        )
