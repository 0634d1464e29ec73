"""Record every AWS call the code makes, as IAM sees it: principal, action, resource, context.

A botocore ``before-parameter-build`` hook, added to botocore's built-in handlers so every
session created while recording has it (the handlers build their own clients). It sees API
calls and presigned URLs alike (a presigned URL is a request made later under the signer's
credentials). Each call is attributed to the principal set with :func:`acting_as` — the
function whose handler is running, the runner's job role, the SageMaker role; calls made
while no principal acts (the test arranging AWS state) are not recorded.

Operation names become IAM actions and resource ARNs by the table below, from AWS's
"Actions, resources, and condition keys" pages. An operation missing from it is recorded as
unknown and fails the check: a new AWS call needs a line here before it can pass.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
from botocore import handlers as botocore_handlers

from gantry.oci.registry import Registry
from tests.iam.evaluate import Request
from tests.iam.template import ACCOUNT, PARTITION, REGION


@dataclass(frozen=True)
class Call:
    principal: str
    service: str
    operation: str
    requests: tuple[Request, ...]
    presigned: bool = False
    # A role session's policy (AssumeRole's Policy): the call needs its allow too.
    session_policy: tuple[dict[str, Any], ...] = ()
    params: dict[str, Any] | None = None


class UnknownOperation(Exception):
    pass


def _arn(service: str, resource: str) -> str:
    return f"arn:{PARTITION}:{service}:{REGION}:{ACCOUNT}:{resource}"


def _s3_object(bucket: str, key: str) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}/{key}"


def _copy_source(source: Any) -> str:
    if isinstance(source, dict):
        return _s3_object(source["Bucket"], source["Key"])
    text = unquote(str(source)).lstrip("/").split("?versionId=")[0]
    bucket, _, key = text.partition("/")
    return _s3_object(bucket, key)


def _queue_arn(url: str) -> str:
    parts = urlparse(url).path.strip("/").split("/")
    return _arn("sqs", parts[-1])


def _table(name: str) -> str:
    return name if name.startswith("arn:") else _arn("dynamodb", f"table/{name}")


def _batch(kind: str, name: str) -> str:
    return name if name.startswith("arn:") else _arn("batch", f"{kind}/{name}")


def _event_bus(name: str | None) -> str:
    name = name or "default"
    return name if name.startswith("arn:") else _arn("events", f"event-bus/{name}")


R = Request
TLS = {"aws:SecureTransport": "true"}


def _s3(operation: str, p: dict[str, Any]) -> list[Request]:
    bucket = p.get("Bucket", "")
    obj = _s3_object(bucket, p.get("Key", ""))
    bucket_arn = f"arn:{PARTITION}:s3:::{bucket}"
    read = "s3:GetObjectVersion" if p.get("VersionId") else "s3:GetObject"
    simple = {
        "GetObject": [R(read, obj, TLS)],
        "HeadObject": [R(read, obj, TLS)],
        "PutObject": [R("s3:PutObject", obj, TLS)],
        "CreateMultipartUpload": [R("s3:PutObject", obj, TLS)],
        "UploadPart": [R("s3:PutObject", obj, TLS)],
        "CompleteMultipartUpload": [R("s3:PutObject", obj, TLS)],
        "AbortMultipartUpload": [R("s3:AbortMultipartUpload", obj, TLS)],
        "ListParts": [R("s3:ListMultipartUploadParts", obj, TLS)],
        "DeleteObject": [R("s3:DeleteObject", obj, TLS)],
        "GetObjectTagging": [R("s3:GetObjectTagging", obj, TLS)],
        "CopyObject": [
            R("s3:GetObject", _copy_source(p.get("CopySource")), TLS),
            R("s3:PutObject", obj, TLS),
        ],
        "UploadPartCopy": [
            R("s3:GetObject", _copy_source(p.get("CopySource")), TLS),
            R("s3:PutObject", obj, TLS),
        ],
        "HeadBucket": [R("s3:ListBucket", bucket_arn, TLS)],
    }
    if operation in simple:
        return simple[operation]
    if operation in ("ListObjectsV2", "ListObjects"):
        context = dict(TLS)
        if "Prefix" in p:
            context["s3:prefix"] = p["Prefix"]
        return [R("s3:ListBucket", bucket_arn, context)]
    if operation == "DeleteObjects":
        return [
            R("s3:DeleteObject", _s3_object(bucket, o["Key"]), TLS) for o in p["Delete"]["Objects"]
        ]
    raise UnknownOperation(f"s3:{operation}")


_DYNAMODB_TRANSACT = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}


def _dynamodb(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "DescribeTable"):
        return [R(f"dynamodb:{operation}", _table(p["TableName"]))]
    if operation in ("Query", "Scan"):
        table = _table(p["TableName"])
        if p.get("IndexName"):
            table = f"{table}/index/{p['IndexName']}"
        return [R(f"dynamodb:{operation}", table)]
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [R(f"dynamodb:{operation}", _table(t)) for t in p["RequestItems"]]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        found = []
        for item in p["TransactItems"]:
            ((kind, body),) = item.items()
            found.append(R(_DYNAMODB_TRANSACT[kind], _table(body["TableName"])))
        return found
    raise UnknownOperation(f"dynamodb:{operation}")


def _pass_roles(roles: list[str | None], service: str) -> list[Request]:
    return [R("iam:PassRole", r, {"iam:PassedToService": service}) for r in roles if r]


def _batch_calls(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation in ("DescribeJobs", "ListJobs", "DescribeJobDefinitions", "DescribeJobQueues"):
        # No resource-level permissions for these.
        return [R(f"batch:{operation}", "*")]
    if operation == "SubmitJob":
        found = [
            R("batch:SubmitJob", _batch("job-queue", p["jobQueue"])),
            R("batch:SubmitJob", _batch("job-definition", p["jobDefinition"])),
        ]
        if p.get("tags"):
            # Tag-on-create: tagging the new job is authorised as TagResource on it.
            found.append(R("batch:TagResource", _arn("batch", "job/new-job-id")))
        return found
    if operation == "RegisterJobDefinition":
        definition = _batch("job-definition", p["jobDefinitionName"])
        found = [R("batch:RegisterJobDefinition", definition)]
        if p.get("tags"):
            found.append(R("batch:TagResource", f"{definition}:1"))
        container = p.get("containerProperties") or {}
        return found + _pass_roles(
            [container.get("jobRoleArn"), container.get("executionRoleArn")],
            "batch.amazonaws.com",
        )
    if operation in ("TerminateJob", "CancelJob"):
        return [R(f"batch:{operation}", _batch("job", p["jobId"]))]
    if operation == "DeregisterJobDefinition":
        return [R("batch:DeregisterJobDefinition", _batch("job-definition", p["jobDefinition"]))]
    if operation == "TagResource":
        return [R("batch:TagResource", p["resourceArn"])]
    raise UnknownOperation(f"batch:{operation}")


def _sagemaker(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation in ("CreateTrainingJob", "DescribeTrainingJob", "StopTrainingJob"):
        job = _arn("sagemaker", f"training-job/{p['TrainingJobName'].lower()}")
        found = [R(f"sagemaker:{operation}", job)]
        if operation == "CreateTrainingJob":
            if p.get("Tags"):
                found.append(R("sagemaker:AddTags", job))
            found += _pass_roles([p["RoleArn"]], "sagemaker.amazonaws.com")
        return found
    raise UnknownOperation(f"sagemaker:{operation}")


def _events(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation == "PutEvents":
        return [R("events:PutEvents", _event_bus(e.get("EventBusName"))) for e in p["Entries"]]
    raise UnknownOperation(f"events:{operation}")


def _sqs(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation in (
        "SendMessage",
        "SendMessageBatch",
        "ReceiveMessage",
        "DeleteMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibility",
        "GetQueueAttributes",
    ):
        return [R(f"sqs:{operation}", _queue_arn(p["QueueUrl"]))]
    raise UnknownOperation(f"sqs:{operation}")


def _sts(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation == "AssumeRole":
        return [R("sts:AssumeRole", p["RoleArn"])]
    raise UnknownOperation(f"sts:{operation}")


def _lambda(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation == "Invoke":
        name = p["FunctionName"]
        arn = name if name.startswith("arn:") else _arn("lambda", f"function:{name}")
        return [R("lambda:InvokeFunction", arn)]
    raise UnknownOperation(f"lambda:{operation}")


def _ecr_repository(name: str) -> str:
    return _arn("ecr", f"repository/{name}")


def _ecr(operation: str, p: dict[str, Any]) -> list[Request]:
    if operation == "GetAuthorizationToken":
        # No resource-level permissions.
        return [R("ecr:GetAuthorizationToken", "*")]
    if operation in ("BatchDeleteImage", "BatchGetImage", "DescribeImages", "PutImage"):
        return [R(f"ecr:{operation}", _ecr_repository(p["repositoryName"]))]
    raise UnknownOperation(f"ecr:{operation}")


# ECR's OCI distribution API, as IAM authorises it (ECR's "Amazon ECR API permissions" page):
# (method, the path's kind) -> the actions of the repository it needs.
_REGISTRY_ACTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("HEAD", "blobs"): ("ecr:BatchCheckLayerAvailability",),
    ("GET", "blobs"): ("ecr:GetDownloadUrlForLayer",),
    ("POST", "uploads"): ("ecr:InitiateLayerUpload",),
    ("PATCH", "uploads"): ("ecr:UploadLayerPart",),
    ("PUT", "uploads"): ("ecr:CompleteLayerUpload",),
    # A PUT with the blob in its body (a small config) uploads and completes at once.
    ("PUT+body", "uploads"): ("ecr:UploadLayerPart", "ecr:CompleteLayerUpload"),
    ("PUT", "manifests"): ("ecr:PutImage",),
    ("GET", "manifests"): ("ecr:BatchGetImage",),
    ("HEAD", "manifests"): ("ecr:BatchGetImage",),
    ("DELETE", "manifests"): ("ecr:BatchDeleteImage",),
}
_REGISTRY_PATH = re.compile(r"^/v2/(?P<repository>.+?)/(?P<kind>blobs/uploads|blobs|manifests)\b")


def registry_requests(method: str, url: str, body: bytes | None) -> tuple[str, list[Request]]:
    """An HTTP request of the OCI distribution API to ECR: its name, what IAM checks."""
    match = _REGISTRY_PATH.match(urlparse(url).path)
    if not match:
        raise UnknownOperation(f"ecr: {method} {urlparse(url).path}")
    kind = "uploads" if match["kind"] == "blobs/uploads" else match["kind"]
    with_body = method == "PUT" and kind == "uploads" and bool(body)
    key = (f"{method}+body" if with_body else method, kind)
    if key not in _REGISTRY_ACTIONS:
        raise UnknownOperation(f"ecr: {method} {kind}")
    resource = _ecr_repository(match["repository"])
    return f"{method} {kind}", [R(action, resource) for action in _REGISTRY_ACTIONS[key]]


SERVICES: dict[str, Callable[[str, dict[str, Any]], list[Request]]] = {
    "s3": _s3,
    "dynamodb": _dynamodb,
    "batch": _batch_calls,
    "sagemaker": _sagemaker,
    "events": _events,
    "sqs": _sqs,
    "sts": _sts,
    "lambda": _lambda,
    "ecr": _ecr,
}


def to_requests(service: str, operation: str, params: dict[str, Any]) -> list[Request]:
    if service not in SERVICES:
        raise UnknownOperation(f"{service}:{operation}")
    return SERVICES[service](operation, params)


class Recorder:
    """The calls made while recording, by principal."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.unknown: list[tuple[str, str]] = []
        self.principal: str | None = None
        self.session_policy: tuple[dict[str, Any], ...] = ()

    def __call__(self, params: dict[str, Any], model: Any, context: Any = None, **_: Any) -> None:
        if self.principal is None:
            return
        service = model.service_model.service_name
        operation = model.name
        try:
            requests = tuple(to_requests(service, operation, params))
        except UnknownOperation as error:
            self.unknown.append((self.principal, str(error)))
            return
        self.record(
            Call(
                self.principal,
                service,
                operation,
                requests,
                presigned=bool((context or {}).get("is_presign_request")),
                session_policy=self.session_policy,
                params=dict(params),
            )
        )

    def record(self, call: Call) -> None:
        self.calls.append(call)

    @contextlib.contextmanager
    def acting_as(
        self, principal: str, session_policy: tuple[dict[str, Any], ...] = ()
    ) -> Iterator[None]:
        """Attribute the calls made inside to ``principal`` (not per thread: s3transfer's
        worker threads copy on the caller's behalf), limited by a session policy if any."""
        previous = self.principal, self.session_policy
        self.principal, self.session_policy = principal, session_policy
        try:
            yield
        finally:
            self.principal, self.session_policy = previous

    def last(self, principal: str, operation: str) -> Call:
        return next(
            c for c in reversed(self.calls) if c.principal == principal and c.operation == operation
        )

    def principals(self) -> set[str]:
        return {c.principal for c in self.calls}


def recording_registry(recorder: Recorder, registry: Registry) -> Registry:
    """``registry`` whose every request is recorded as the ECR call IAM would judge (the
    registry itself, on loopback, asks for nothing but the token's credentials)."""

    class Recording(Registry):
        def _open(
            self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
        ) -> Any:
            if recorder.principal is not None and urlparse(url).path.startswith("/v2/"):
                try:
                    operation, requests = registry_requests(method, url, body)
                except UnknownOperation as error:
                    recorder.unknown.append((recorder.principal, str(error)))
                else:
                    recorder.record(Call(recorder.principal, "ecr", operation, tuple(requests)))
            return super()._open(method, url, headers, body)

    return Recording(registry.url, registry.username, registry.password, registry.chunk_bytes)


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Record the calls of every botocore session created inside the block."""
    recorder = Recorder()
    entry = ("before-parameter-build", recorder)
    botocore_handlers.BUILTIN_HANDLERS.append(entry)
    # boto3's default session (the runner's clients) may predate the hook: start a new one.
    default_session, boto3.DEFAULT_SESSION = boto3.DEFAULT_SESSION, None
    try:
        yield recorder
    finally:
        botocore_handlers.BUILTIN_HANDLERS.remove(entry)
        boto3.DEFAULT_SESSION = default_session
