"""``gantry doctor``: what an operator checks after ``cdk deploy``, one finding per check.

Each check reads the deployed account the way the platform will use it and says, in one
line, what to fix when it fails: the stack and its outputs, the API answering, the EC2 quota
for the GPU instance types the GPU queue may launch, the alarms reaching their topic (and
CloudWatch allowed to publish there), and one small CPU job through the API to Succeeded.
The checks take boto3 clients and URLs, so the tests run them against moto and the local
stack; what moto cannot answer (EC2 quotas) reports as a failure to read, never as a pass.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

REQUIRED_OUTPUTS = (
    "ApiBaseUrl",
    "TableName",
    "BucketName",
    "EventBusName",
    "GpuJobQueue",
    "CpuJobQueue",
    "JobDefinition",
    "SageMakerRoleArn",
    "RunnerRepositoryUri",
    "AlarmTopicArn",
)
# EC2's vCPU quotas for G instances (g4dn, g5, g6): on-demand and spot.
GPU_ON_DEMAND_QUOTA = ("L-DB2E81BA", "Running On-Demand G and VT instances")
GPU_SPOT_QUOTA = ("L-3819A6DF", "All G and VT Spot Instance Requests")
CLOUDWATCH = "cloudwatch.amazonaws.com"
DOCTOR_ALGORITHM = "Gantry doctor"
DOCTOR_INPUT = ("Gantry doctor value", "doctor-value.json")
DOCTOR_OUTPUT = ("Gantry doctor result", "doctor-result.json")
# What the doctor's image runs: any image with a POSIX shell; INPUT_DIR and OUTPUT_DIR are
# /input and /output in the sandbox (the runner sets both).
DOCTOR_COMMAND = [
    "/bin/sh",
    "-c",
    f'cp "$INPUT_DIR/{DOCTOR_INPUT[1]}" "$OUTPUT_DIR/{DOCTOR_OUTPUT[1]}"',
]
TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    # What was found, or, when not ok, what to fix: one line.
    message: str
    # Worth knowing, not a failure (the exit status stays 0).
    warning: bool = False

    @property
    def failed(self) -> bool:
        return not self.ok and not self.warning


def _error_text(error: Exception, limit: int = 160) -> str:
    """The service's error on one short line (some answer with a whole HTML page)."""
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        text = f"{detail.get('Code', 'Error')}: {detail.get('Message', '')}"
    else:
        text = f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- The stack ------------------------------------------------------------------------------


def stack_outputs(cloudformation: Any, stack_name: str) -> tuple[Finding, dict[str, str]]:
    name = "stack"
    try:
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except (ClientError, BotoCoreError) as error:
        return (
            Finding(
                name,
                False,
                f"Stack {stack_name} not readable ({_error_text(error)}): deploy it with "
                f"`npx cdk deploy {stack_name}`, or pass --stack/--region of the deployment",
            ),
            {},
        )
    status = stack["StackStatus"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    if status not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        return (
            Finding(
                name,
                False,
                f"Stack {stack_name} is {status}: see its events in the CloudFormation console "
                "and deploy again",
            ),
            outputs,
        )
    missing = [key for key in REQUIRED_OUTPUTS if not outputs.get(key)]
    if missing:
        return (
            Finding(
                name,
                False,
                f"Stack {stack_name} lacks the outputs {', '.join(missing)}: deploy this "
                "version of Gantry again (`npx cdk deploy`)",
            ),
            outputs,
        )
    return Finding(name, True, f"{stack_name} is {status} with all its outputs"), outputs


# --- The API --------------------------------------------------------------------------------


def api_reachable(api_url: str, *, verify: Any = True, timeout: float = 15.0) -> Finding:
    """The unauthenticated version endpoint every client (gcapi) calls first."""
    name = "api"
    url = api_url.rstrip("/") + "/gcapi/"
    try:
        response = httpx.get(url, verify=verify, timeout=timeout)
    except httpx.HTTPError as error:
        return Finding(
            name,
            False,
            f"The API at {url} did not answer ({_error_text(error)}): check the "
            "stage and, with a custom domain, its DNS record (output CustomDomainTarget)",
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or "latest_version" not in body:
        return Finding(
            name,
            False,
            f"The API at {url} answered HTTP {response.status_code} without Gantry's version: "
            "check the api function's logs (/aws/lambda/…Api…) and the stage's integration",
        )
    return Finding(name, True, f"{url} answers (version {body['latest_version']})")


# --- GPU quota ------------------------------------------------------------------------------


def gpu_capacity_needed(batch: Any, ec2: Any, job_queue: str) -> dict[str, tuple[int, int, str]]:
    """Per market ("on-demand", "spot"): (vCPUs of the smallest instance type, the
    environments' max vCPUs, that type) of the compute environments behind the GPU queue."""
    (queue,) = batch.describe_job_queues(jobQueues=[job_queue])["jobQueues"]
    arns = [order["computeEnvironment"] for order in queue["computeEnvironmentOrder"]]
    environments = batch.describe_compute_environments(computeEnvironments=arns)[
        "computeEnvironments"
    ]
    types = sorted(
        {
            itype
            for env in environments
            for itype in env.get("computeResources", {}).get("instanceTypes", [])
        }
    )
    vcpus = (
        {
            item["InstanceType"]: int(item["VCpuInfo"]["DefaultVCpus"])
            for item in ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]
        }
        if types
        else {}
    )
    needed: dict[str, tuple[int, int, str]] = {}
    for env in environments:
        resources = env.get("computeResources", {})
        market = "spot" if resources.get("type") in ("SPOT", "FARGATE_SPOT") else "on-demand"
        known = [(vcpus[t], t) for t in resources.get("instanceTypes", []) if t in vcpus]
        if not known:
            continue
        smallest, itype = min(known)
        _, max_vcpus, _ = needed.get(market, (0, 0, ""))
        needed[market] = (smallest, max_vcpus + int(resources.get("maxvCpus", 0)), itype)
    return needed


def _quota_value(quotas: Any, code: str) -> float:
    try:
        return float(quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchResourceException":
            raise
        # Never raised in this account: the default applies.
        default = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)
        return float(default["Quota"]["Value"])


def gpu_quota(batch: Any, ec2: Any, quotas: Any, job_queue: str, region: str) -> list[Finding]:
    name = "gpu quota"
    try:
        needed = gpu_capacity_needed(batch, ec2, job_queue)
    except (ClientError, BotoCoreError, ValueError, KeyError) as error:
        return [
            Finding(
                name,
                False,
                f"The GPU queue {job_queue} and its environments could not be read "
                f"({_error_text(error)}): check the stack's Batch resources",
            )
        ]
    if not needed:
        return [Finding(name, False, f"The GPU queue {job_queue} has no compute environment")]
    findings = []
    for market, (smallest, max_vcpus, itype) in sorted(needed.items()):
        code, title = GPU_SPOT_QUOTA if market == "spot" else GPU_ON_DEMAND_QUOTA
        try:
            value = _quota_value(quotas, code)
        except (ClientError, BotoCoreError) as error:
            findings.append(
                Finding(
                    name,
                    False,
                    f"EC2 quota '{title}' ({code}) could not be read ({_error_text(error)}): "
                    "allow servicequotas:GetServiceQuota, or look it up in the Service Quotas "
                    f"console; at least {smallest} vCPUs are needed for one {itype}",
                )
            )
            continue
        findings.append(quota_finding(title, code, region, value, smallest, max_vcpus, itype))
    return findings


def quota_finding(
    title: str, code: str, region: str, value: float, smallest: int, max_vcpus: int, itype: str
) -> Finding:
    """The verdict on one vCPU quota against what the GPU environments may launch."""
    name = "gpu quota"
    quota = int(value)
    if quota < smallest:
        return Finding(
            name,
            False,
            f"EC2 quota '{title}' is {quota} vCPUs in {region}, less than one {itype} "
            f"({smallest} vCPUs): request at least {smallest} in Service Quotas (ec2 {code}); "
            "until then GPU jobs wait RUNNABLE and are cancelled",
        )
    if quota < max_vcpus:
        return Finding(
            name,
            True,
            f"EC2 quota '{title}' is {quota} vCPUs in {region}: at most {quota // smallest} GPU "
            f"jobs at once although the environments allow {max_vcpus} vCPUs (raise {code})",
            warning=True,
        )
    return Finding(name, True, f"EC2 quota '{title}' is {quota} vCPUs in {region}")


# --- Alarms ---------------------------------------------------------------------------------


def _allows_cloudwatch(policy_text: str | None, topic_arn: str) -> bool:
    if not policy_text:
        return False
    statements = json.loads(policy_text).get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal", {})
        services = principal.get("Service", []) if isinstance(principal, dict) else []
        services = [services] if isinstance(services, str) else services
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if (
            CLOUDWATCH in services
            and any(a in ("sns:Publish", "sns:*") for a in actions)
            and any(r in (topic_arn, "*") for r in resources)
        ):
            return True
    return False


def alarms_reach_topic(cloudwatch: Any, sns: Any, stack_name: str, topic_arn: str) -> list[Finding]:
    """The stack's alarms (CloudFormation names them ``<stack>-…``) notify the topic, and the
    topic's policy lets CloudWatch publish."""
    name = "alarms"
    try:
        paginator = cloudwatch.get_paginator("describe_alarms")
        alarms = [
            alarm
            for page in paginator.paginate(AlarmNamePrefix=f"{stack_name}-")
            for alarm in page["MetricAlarms"]
        ]
        attributes = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"]
        subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    except (ClientError, BotoCoreError) as error:
        return [
            Finding(
                name,
                False,
                f"The alarms or their topic could not be read ({_error_text(error)}): check "
                "cloudwatch:DescribeAlarms and sns:GetTopicAttributes for your credentials",
            )
        ]
    alarm_names = [a["AlarmName"] for a in alarms]
    findings = []
    if not alarm_names:
        findings.append(Finding(name, False, f"Stack {stack_name} has no alarms: deploy it again"))
    silent = sorted(a["AlarmName"] for a in alarms if topic_arn not in a.get("AlarmActions", []))
    if silent:
        findings.append(
            Finding(
                name,
                False,
                f"{len(silent)} alarm(s) do not notify {topic_arn} ({', '.join(silent[:3])}): "
                "deploy the stack again",
            )
        )
    if not _allows_cloudwatch(attributes.get("Policy"), topic_arn):
        findings.append(
            Finding(
                name,
                False,
                "The alarm topic's policy does not let CloudWatch publish, so no alarm "
                f"reaches it: allow {CLOUDWATCH} sns:Publish on {topic_arn} "
                "(this version of the stack does; deploy it again)",
            )
        )
    confirmed = [s for s in subscriptions if s["SubscriptionArn"].startswith("arn:")]
    if not confirmed:
        findings.append(
            Finding(
                name,
                False,
                "Nobody is subscribed to the alarm topic: deploy with -c "
                "gantry:alarmEmail=you@example.org and confirm the e-mail",
                warning=True,
            )
        )
    if not any(f.failed for f in findings):
        findings.insert(
            0, Finding(name, True, f"{len(alarms)} alarms notify the topic; CloudWatch may publish")
        )
    return findings


# --- One job --------------------------------------------------------------------------------


def _ensure_socket(client: Any, title: str, relative_path: str) -> str:
    slug = title.lower().replace(" ", "-")
    known = {s["slug"] for s in client.iterate("components/interfaces/")}
    if slug not in known:
        client.post(
            "components/interfaces/",
            {"title": title, "kind": "Anything", "relative_path": relative_path},
        )
    return slug


def _ensure_algorithm(client: Any, image: str, command: list[str]) -> dict[str, Any]:
    slug = DOCTOR_ALGORITHM.lower().replace(" ", "-")
    found = client.get("algorithms/", slug=slug).get("results") or []
    value = _ensure_socket(client, *DOCTOR_INPUT)
    result = _ensure_socket(client, *DOCTOR_OUTPUT)
    algorithm = (
        found[0]
        if found
        else client.post(
            "algorithms/",
            {
                "title": DOCTOR_ALGORITHM,
                "description": "A CPU job that copies its input: run by `gantry doctor`",
                "interfaces": [{"inputs": [value], "outputs": [result]}],
                "requires_gpu_type": "",
                "requires_memory_gb": 4,
                "time_limit": 300,
            },
        )
    )
    client.post(
        "algorithms/images/",
        {"algorithm": algorithm["api_url"], "image": image, "command": command},
    )
    return dict(algorithm)


def cpu_job(
    client: Any,
    image: str,
    *,
    command: list[str] | None = None,
    timeout: float = 900.0,
    poll_seconds: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Finding:
    """Register the doctor's algorithm with ``image``, run one job, check its output."""
    name = "cpu job"
    nonce = str(uuid.uuid4())
    try:
        algorithm = _ensure_algorithm(client, image, command or DOCTOR_COMMAND)
        job = client.post(
            "algorithms/jobs/",
            {
                "algorithm": algorithm["api_url"],
                "inputs": [
                    {"interface": DOCTOR_INPUT[0].lower().replace(" ", "-"), "value": nonce}
                ],
            },
        )
        deadline = time.monotonic() + timeout
        while job["status"] not in TERMINAL and time.monotonic() < deadline:
            sleep(poll_seconds)
            job = client.get(f"algorithms/jobs/{job['pk']}/")
    except Exception as error:  # the API's own message, one line
        return Finding(name, False, f"The CPU job could not be run: {error}")
    if job["status"] not in TERMINAL:
        return Finding(
            name,
            False,
            f"The CPU job {job['pk']} is still '{job['status']}' after {timeout:.0f} s: check "
            "the CPU queue (gantry-cpu) in the Batch console, the EC2 quota for its instance "
            "types and the job's log stream",
        )
    if job["status"] != "Succeeded":
        return Finding(
            name,
            False,
            f"The CPU job {job['pk']} {job['status']}: {job.get('error_message') or 'no reason'}"
            " (see its stderr with `gantry jobs show`)",
        )
    outputs = {o["interface"]["slug"]: o.get("value") for o in job.get("outputs", [])}
    if outputs.get(DOCTOR_OUTPUT[0].lower().replace(" ", "-")) != nonce:
        return Finding(
            name, False, f"The CPU job {job['pk']} succeeded but its output is not its input"
        )
    return Finding(name, True, f"CPU job {job['pk']} Succeeded with the expected output")
