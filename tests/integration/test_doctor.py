"""``gantry doctor``'s checks against moto and the local stack; the command itself against the
stack deployed into moto is in tests/infra/test_deploy_rehearsal.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from gantry import doctor
from gantry.commands.client import GantryClient, _ssl_context
from gantry.commands.local import connection_for
from tests.conftest import serve_local_stack

REGION = "us-east-1"
TOPIC_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": "sns:Publish",
            "Resource": "TOPIC",
        }
    ],
}


def _alarm(cloudwatch, name: str, actions: list[str]) -> None:
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        MetricName="NumberOfMessagesVisible",
        Namespace="AWS/SQS",
        Statistic="Maximum",
        Period=300,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="GreaterThanThreshold",
        AlarmActions=actions,
    )


def test_alarms_that_cannot_reach_their_topic_say_what_to_fix(aws) -> None:
    sns = boto3.client("sns", region_name=REGION)
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    topic = sns.create_topic(Name="Gantry-Alarms")["TopicArn"]
    _alarm(cloudwatch, "Gantry-DlqUploads-1", [topic])
    _alarm(cloudwatch, "Gantry-Api5xx-2", [])
    _alarm(cloudwatch, "Other-Stack-Alarm", [])

    findings = doctor.alarms_reach_topic(cloudwatch, sns, "Gantry", topic)
    failed = [f.message for f in findings if f.failed]
    assert len(failed) == 2, findings
    assert failed[0].startswith("1 alarm(s) do not notify") and "Gantry-Api5xx-2" in failed[0]
    assert "does not let CloudWatch publish" in failed[1]
    assert any(f.warning and "Nobody is subscribed" in f.message for f in findings)

    cloudwatch.put_metric_alarm(
        AlarmName="Gantry-Api5xx-2",
        MetricName="5XXError",
        Namespace="AWS/ApiGateway",
        Statistic="Sum",
        Period=300,
        EvaluationPeriods=1,
        Threshold=5,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        AlarmActions=[topic],
    )
    policy = json.dumps(TOPIC_POLICY).replace("TOPIC", topic)
    sns.set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=policy)
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint="arn:aws:sqs:us-east-1:1:q")
    findings = doctor.alarms_reach_topic(cloudwatch, sns, "Gantry", topic)
    assert [f.ok for f in findings] == [True], findings
    assert findings[0].message.startswith("2 alarms notify the topic")


def test_gpu_quota_verdicts() -> None:
    args = ("Running On-Demand G and VT instances", "L-DB2E81BA", "eu-west-1")
    none = doctor.quota_finding(*args, 0, 4, 64, "g4dn.xlarge")
    assert none.failed
    assert none.message == (
        "EC2 quota 'Running On-Demand G and VT instances' is 0 vCPUs in eu-west-1, less than "
        "one g4dn.xlarge (4 vCPUs): request at least 4 in Service Quotas (ec2 L-DB2E81BA); "
        "until then GPU jobs wait RUNNABLE and are cancelled"
    )
    few = doctor.quota_finding(*args, 8, 4, 64, "g4dn.xlarge")
    assert few.warning and not few.failed and "at most 2 GPU jobs at once" in few.message
    assert doctor.quota_finding(*args, 64, 4, 64, "g4dn.xlarge").ok


def test_gpu_quota_that_cannot_be_read_is_a_failure_not_a_pass(aws) -> None:
    from gantry.settings import Settings
    from tests.integration.pipeline_support import create_batch_resources

    batch = boto3.client("batch", region_name=REGION)
    create_batch_resources(boto3.client("iam", region_name=REGION), batch, Settings())
    findings = doctor.gpu_quota(
        batch,
        boto3.client("ec2", region_name=REGION),
        boto3.client("service-quotas", region_name=REGION),
        Settings().batch_job_queue_gpu,
        REGION,
    )
    assert findings and all(f.failed for f in findings), findings


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    state_dir = tmp_path_factory.mktemp("doctor-state")
    stack = serve_local_stack("gantry-doctor", state_dir)
    try:
        yield stack, state_dir
    finally:
        stack.stop()


def test_api_check_and_the_cpu_job_against_the_local_stack(local_stack) -> None:
    stack, state_dir = local_stack
    token = stack.ctx.store.users.create_token("operator", is_admin=True)
    connection = connection_for(stack, token, state_dir)
    verify = _ssl_context(connection.ca_file)
    assert doctor.api_reachable(connection.api_url, verify=verify).ok
    unreachable = doctor.api_reachable("https://127.0.0.1:9/api/v1/", timeout=2)
    assert unreachable.failed and unreachable.message.startswith(
        "The API at https://127.0.0.1:9/api/v1/gcapi/ did not answer"
    )
    with GantryClient(connection) as client:
        finding = doctor.cpu_job(client, "local", timeout=120, poll_seconds=0.5)
        assert finding.ok, finding.message
        # A second run reuses the algorithm and its sockets.
        assert doctor.cpu_job(client, "local", timeout=120, poll_seconds=0.5).ok
        broken = doctor.cpu_job(
            client, "local", command=["/bin/sh", "-c", "exit 3"], timeout=120, poll_seconds=0.5
        )
    assert broken.failed and " Failed: " in broken.message, broken.message


def test_the_doctors_token_is_an_admin_token_that_expires(ctx) -> None:
    from gantry.commands.doctor import DOCTOR_USER, _doctor_token

    token = _doctor_token(ctx.settings.table_name, REGION, None)
    user = ctx.store.users.user_for_token(token)
    assert user is not None and user.username == DOCTOR_USER and user.is_admin
    (info,) = ctx.store.users.tokens_page(DOCTOR_USER, offset=0, limit=10)[0]
    assert info.expires
