"""The synthesized template as a deployment would see it: every intrinsic resolved to the name
or ARN CloudFormation would give it in one account and region, and each principal's policies.

Names a resource declares (``TableName``, ``QueueName``, ``JobQueueName`` …) are used as they
are; resources without one get a fixed physical name derived from the logical id, as
CloudFormation generates one. Only the intrinsics and attributes below are known: anything
else raises :class:`Unresolved`, so an ARN the rehearsal cannot compute fails the check
instead of matching a wildcard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"
STACK_NAME = "Gantry"

PSEUDO = {
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": PARTITION,
    "AWS::URLSuffix": URL_SUFFIX,
    "AWS::StackName": STACK_NAME,
}


class Unresolved(Exception):
    """An intrinsic or attribute the rehearsal cannot turn into a concrete value."""


def _arn(service: str, resource: str, *, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{account}:{resource}"


@dataclass
class Deployment:
    """The template with the names one deployment in ``ACCOUNT``/``REGION`` would have."""

    template: dict[str, Any]
    resources: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.resources = self.template["Resources"]

    # --- Names and attributes -------------------------------------------------------------

    def physical_name(self, logical_id: str) -> str:
        """The resource's name: the one it declares, else one CloudFormation would make."""
        resource = self._resource(logical_id)
        props = resource.get("Properties", {})
        declared = {
            "AWS::DynamoDB::Table": "TableName",
            "AWS::S3::Bucket": "BucketName",
            "AWS::SQS::Queue": "QueueName",
            "AWS::Events::EventBus": "Name",
            "AWS::Batch::JobQueue": "JobQueueName",
            "AWS::Batch::JobDefinition": "JobDefinitionName",
            "AWS::Batch::ComputeEnvironment": "ComputeEnvironmentName",
            "AWS::IAM::Role": "RoleName",
            "AWS::ECR::Repository": "RepositoryName",
            "AWS::Logs::LogGroup": "LogGroupName",
            "AWS::Lambda::Function": "FunctionName",
            "AWS::SNS::Topic": "TopicName",
            "AWS::CloudWatch::Dashboard": "DashboardName",
        }.get(resource["Type"])
        if declared and declared in props:
            return str(self.resolve(props[declared]))
        # CloudFormation: <stack>-<logical id>-<random>, lower case where the service needs it.
        return f"{STACK_NAME}-{logical_id}"[:60].lower()

    def ref(self, logical_id: str) -> str:
        if logical_id in PSEUDO:
            return PSEUDO[logical_id]
        if logical_id in self.template.get("Parameters", {}):
            default = self.template["Parameters"][logical_id].get("Default")
            if default is None:
                raise Unresolved(f"parameter {logical_id} has no default")
            return str(default)
        kind = self._resource(logical_id)["Type"]
        name = self.physical_name(logical_id)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.{URL_SUFFIX}/{ACCOUNT}/{name}"
        if kind in ("AWS::Batch::JobQueue", "AWS::Batch::ComputeEnvironment", "AWS::SNS::Topic"):
            return self.get_att(logical_id, "Arn")
        if kind == "AWS::Batch::JobDefinition":
            return _arn("batch", f"job-definition/{name}:1")
        return name

    def get_att(self, logical_id: str, attribute: str) -> str:
        kind = self._resource(logical_id)["Type"]
        name = self.physical_name(logical_id)
        arns = {
            "AWS::DynamoDB::Table": lambda: _arn("dynamodb", f"table/{name}"),
            "AWS::S3::Bucket": lambda: f"arn:{PARTITION}:s3:::{name}",
            "AWS::SQS::Queue": lambda: _arn("sqs", name),
            "AWS::Events::EventBus": lambda: _arn("events", f"event-bus/{name}"),
            "AWS::Batch::JobQueue": lambda: _arn("batch", f"job-queue/{name}"),
            "AWS::Batch::ComputeEnvironment": lambda: _arn("batch", f"compute-environment/{name}"),
            "AWS::IAM::Role": lambda: f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}",
            "AWS::ECR::Repository": lambda: _arn("ecr", f"repository/{name}"),
            "AWS::Logs::LogGroup": lambda: _arn("logs", f"log-group:{name}:*"),
            "AWS::Lambda::Function": lambda: _arn("lambda", f"function:{name}"),
            "AWS::SNS::Topic": lambda: _arn("sns", name),
        }
        arn_attributes = ("Arn", "JobQueueArn", "ComputeEnvironmentArn", "TopicArn")
        if attribute in arn_attributes and kind in arns:
            return arns[kind]()
        if attribute in ("QueueName", "Name", "RoleId") and kind in (
            "AWS::SQS::Queue",
            "AWS::Events::EventBus",
        ):
            return name
        if kind == "AWS::SQS::Queue" and attribute == "QueueUrl":
            return self.ref(logical_id)
        if kind == "AWS::ApiGateway::RestApi" and attribute == "RootResourceId":
            return f"{name}-root"
        raise Unresolved(f"Fn::GetAtt {logical_id}.{attribute} ({kind})")

    def _resource(self, logical_id: str) -> dict[str, Any]:
        try:
            return self.resources[logical_id]
        except KeyError:
            raise Unresolved(f"no resource {logical_id}") from None

    # --- Intrinsics -----------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic replaced by its concrete value."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical_id, attribute)
            if key == "Fn::Join":
                separator, parts = arg
                return separator.join(str(self.resolve(p)) for p in self.resolve(parts))
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                separator, text = arg
                return str(self.resolve(text)).split(separator)
            if key.startswith("Fn::") or key == "Condition":
                raise Unresolved(f"{key} is not resolved by the rehearsal")
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else arg
        values = {k: str(self.resolve(v)) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return values[name]
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return self.ref(name)

        return re.sub(r"\$\{([^}!][^}]*)\}", replace, text)

    # --- Principals -----------------------------------------------------------------------

    def role_of_function(self, handler: str) -> str:
        """The logical id of the role of the function with this handler."""
        for resource in self.resources.values():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::Lambda::Function" and props.get("Handler") == handler:
                return props["Role"]["Fn::GetAtt"][0]
        raise Unresolved(f"no function with handler {handler}")

    def function_environment(self, handler: str) -> dict[str, str]:
        for resource in self.resources.values():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::Lambda::Function" and props.get("Handler") == handler:
                return self.resolve(props.get("Environment", {}).get("Variables", {}))
        raise Unresolved(f"no function with handler {handler}")

    def roles_assumed_by(self, service: str) -> list[str]:
        found = []
        for logical_id, resource in self.resources.items():
            if resource["Type"] != "AWS::IAM::Role":
                continue
            document = resource["Properties"]["AssumeRolePolicyDocument"]
            for statement in document["Statement"]:
                principals = statement.get("Principal", {}).get("Service", [])
                if service in (principals if isinstance(principals, list) else [principals]):
                    found.append(logical_id)
        return found

    def role_by_arn(self, arn: str) -> str:
        """The logical id of the role with this (resolved) ARN."""
        for logical_id, resource in self.resources.items():
            if resource["Type"] == "AWS::IAM::Role" and self.get_att(logical_id, "Arn") == arn:
                return logical_id
        raise Unresolved(f"no role {arn}")

    def job_role(self, definition_name: str) -> str:
        """The logical id of the job role of the Batch job definition with this name."""
        for resource in self.resources.values():
            props = resource.get("Properties", {})
            if (
                resource["Type"] == "AWS::Batch::JobDefinition"
                and props.get("JobDefinitionName") == definition_name
            ):
                return props["ContainerProperties"]["JobRoleArn"]["Fn::GetAtt"][0]
        raise Unresolved(f"no job definition {definition_name}")

    def statements(self, role: str) -> list[dict[str, Any]]:
        """Every identity-policy statement of the role, resolved."""
        resource = self._resource(role)
        if resource.get("Properties", {}).get("ManagedPolicyArns"):
            # A managed policy's text is not in the template: it cannot be evaluated here.
            raise Unresolved(f"role {role} has managed policies the rehearsal cannot read")
        found: list[dict[str, Any]] = []
        for policy in resource.get("Properties", {}).get("Policies", []):
            found.extend(_as_list(policy["PolicyDocument"]["Statement"]))
        for other in self.resources.values():
            props = other.get("Properties", {})
            if other["Type"] == "AWS::IAM::Policy" and {"Ref": role} in props.get("Roles", []):
                found.extend(_as_list(props["PolicyDocument"]["Statement"]))
        return [self.resolve(s) for s in found]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
