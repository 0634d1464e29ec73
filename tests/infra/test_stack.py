"""What the default deployment must be: checked on the synthesized template."""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from gantry import resources
from gantry.settings import Settings
from gantry.sitk_loader import ARCHIVE_ENV
from infra.packaging import POWERTOOLS_LAYERS
from tests.infra.conftest import Synth

pytestmark = pytest.mark.slow

RUNNER_COMMAND = [resources.RUNNER_BINARY_PATH, "invoke", "--file", "Ref::invocation"]
HANDLERS = {
    "lambdas.api.app.handler",
    "lambdas.on_job_event.handler",
    "lambdas.on_upload.handler",
    "lambdas.on_import.handler",
    "lambdas.on_dropbox.handler",
    "lambdas.on_archive_run.handler",
    "lambdas.sweeper.handler",
    "lambdas.job_credentials.handler",
}


@pytest.fixture(scope="module")
def template(default_synth: Synth) -> Template:
    return Template.from_json(default_synth.template)


def _statements(synth: Synth) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, policy in synth.resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            found.append((name, statement))
    return found


def _statements_of(synth: Synth, role: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in synth.resources("AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- Data ---------------------------------------------------------------------------------


def test_table_keys_gsis_ttl_pitr_on_demand(template: Template) -> None:
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "TableName": resources.DEFAULT_TABLE_NAME,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [
                {"AttributeName": resources.PARTITION_KEY, "KeyType": "HASH"},
                {"AttributeName": resources.SORT_KEY, "KeyType": "RANGE"},
            ],
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "TimeToLiveSpecification": {
                "AttributeName": resources.TTL_ATTRIBUTE,
                "Enabled": True,
            },
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": gsi.name,
                    "KeySchema": [
                        {"AttributeName": gsi.partition_key, "KeyType": "HASH"},
                        {"AttributeName": gsi.sort_key, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
                for gsi in resources.GLOBAL_INDEXES
            ],
        },
    )


def test_data_is_retained_by_default(default_synth: Synth) -> None:
    for kind in ("AWS::DynamoDB::Table", "AWS::S3::Bucket"):
        for name, resource in default_synth.resources(kind).items():
            # Kept on delete and replacement; removed if the deploy that made it rolls back,
            # so a failed first deploy can be run again (the table's name is fixed).
            assert resource.get("DeletionPolicy") == "RetainExceptOnCreate", name
            assert resource.get("UpdateReplacePolicy") == "Retain", name
            # Deletion protection would make that rollback fail.
            assert not resource["Properties"].get("DeletionProtectionEnabled"), name


def test_buckets_block_public_access_encrypt_and_deny_plain_http(default_synth: Synth) -> None:
    buckets = default_synth.resources("AWS::S3::Bucket")
    assert len(buckets) == 2  # data + access logs
    for resource in buckets.values():
        props = resource["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    policies = default_synth.resources("AWS::S3::BucketPolicy")
    assert len(policies) == 2
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in statements
        )


def test_data_bucket_versioned_with_lifecycle_and_access_logs(default_synth: Synth) -> None:
    data = [
        r["Properties"]
        for r in default_synth.resources("AWS::S3::Bucket").values()
        if "VersioningConfiguration" in r["Properties"]
    ]
    assert len(data) == 1
    props = data[0]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "DestinationBucketName" in props["LoggingConfiguration"]
    rules = {rule["Id"]: rule for rule in props["LifecycleConfiguration"]["Rules"]}
    assert rules["abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 1
    }
    assert rules["expire-uploads"]["Prefix"] == resources.PREFIX_UPLOADS
    assert rules["expire-io"]["Prefix"] == resources.PREFIX_IO
    assert rules["expire-noncurrent"]["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0


def test_s3_notifications_for_uploads_and_dropbox_prefixes(default_synth: Synth) -> None:
    notifications = default_synth.one("Custom::S3BucketNotifications")
    configs = notifications["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    prefixes = {
        rule["Value"]
        for config in configs
        for rule in config["Filter"]["Key"]["FilterRules"]
        if rule["Name"] == "prefix"
    }
    assert prefixes == {resources.PREFIX_UPLOADS, resources.PREFIX_DROPBOX}
    assert all(config["Events"] == ["s3:ObjectCreated:*"] for config in configs)


def test_every_queue_has_a_dlq_or_is_one(default_synth: Synth) -> None:
    queues = default_synth.resources("AWS::SQS::Queue")
    template = default_synth.template
    dlq_refs: set[str] = set()
    for resource in queues.values():
        redrive = resource["Properties"].get("RedrivePolicy")
        if redrive:
            dlq_refs.add(redrive["deadLetterTargetArn"]["Fn::GetAtt"][0])
            assert redrive["maxReceiveCount"] >= 1
    for rule in default_synth.resources("AWS::Events::Rule").values():
        for target in rule["Properties"].get("Targets", []):
            dlq_refs.add(target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0])
    for config in default_synth.resources("AWS::Lambda::EventInvokeConfig").values():
        destination = config["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]
        dlq_refs.add(destination["Fn::GetAtt"][0])
    for name, resource in queues.items():
        props = resource["Properties"]
        assert name in dlq_refs or "RedrivePolicy" in props, f"{name} has no DLQ"
        assert props.get("SqsManagedSseEnabled") is True, name
    assert template["Resources"]
    # Every queue that is a DLQ is alarmed on.
    alarmed = {
        dim["Value"]["Fn::GetAtt"][0]
        for alarm in default_synth.resources("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
        for dim in alarm["Properties"]["Dimensions"]
    }
    assert alarmed == dlq_refs


# --- Compute ------------------------------------------------------------------------------


def test_no_nat_gateway_and_no_interface_endpoints(
    template: Template, default_synth: Synth
) -> None:
    template.resource_count_is("AWS::EC2::NatGateway", 0)
    endpoints = default_synth.resources("AWS::EC2::VPCEndpoint")
    assert endpoints, "the free S3 gateway endpoint is expected"
    for endpoint in endpoints.values():
        assert endpoint["Properties"].get("VpcEndpointType", "Gateway") == "Gateway"
    for group in default_synth.resources("AWS::EC2::SecurityGroup").values():
        assert not group["Properties"].get("SecurityGroupIngress")
    template.resource_count_is("AWS::EC2::SecurityGroupIngress", 0)


def test_gpu_compute_is_gpu_only_and_scales_to_zero(default_synth: Synth) -> None:
    envs = default_synth.resources("AWS::Batch::ComputeEnvironment")
    gpu = [
        e["Properties"]["ComputeResources"]
        for e in envs.values()
        if e["Properties"]["ComputeResources"]["Ec2Configuration"][0]["ImageType"]
        == "ECS_AL2023_NVIDIA"
    ]
    assert len(gpu) == 1  # on-demand only unless gantry:spot
    for resources_ in gpu:
        assert resources_["InstanceTypes"]
        assert all(t.startswith("g4dn.") for t in resources_["InstanceTypes"])
        assert "optimal" not in resources_["InstanceTypes"]
    for env in envs.values():
        assert env["Properties"]["ComputeResources"]["MinvCpus"] == 0


def test_job_queues_and_capacity_time_limit(template: Template) -> None:
    settings = Settings.model_construct()
    template.has_resource_properties(
        "AWS::Batch::JobQueue",
        {
            "JobQueueName": settings.batch_job_queue_gpu,
            "JobStateTimeLimitActions": Match.array_with(
                [
                    Match.object_like(
                        {
                            "Action": "CANCEL",
                            "State": "RUNNABLE",
                            "Reason": "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
                        }
                    )
                ]
            ),
        },
    )
    template.has_resource_properties(
        "AWS::Batch::JobQueue", {"JobQueueName": settings.batch_job_queue_cpu}
    )


def test_runner_job_definition(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "JobDefinitionName": Settings.model_construct().batch_job_definition,
            "ContainerProperties": Match.object_like(
                {
                    "Command": RUNNER_COMMAND,
                    "ResourceRequirements": Match.array_with([{"Type": "GPU", "Value": "1"}]),
                    "JobRoleArn": Match.any_value(),
                    "ExecutionRoleArn": Match.any_value(),
                }
            ),
        },
    )


def test_retries_have_one_owner(default_synth: Synth) -> None:
    """The job callback starts a new attempt when a host fails; Batch retrying too would run
    a job up to max_attempts x Batch's attempts times."""
    for name, definition in default_synth.resources("AWS::Batch::JobDefinition").items():
        attempts = definition["Properties"].get("RetryStrategy", {}).get("Attempts", 1)
        assert attempts == 1, name


def test_job_memory_fits_the_instances_it_is_meant_for(default_synth: Synth) -> None:
    """ECS hands out less than the nominal memory: the GPU definition's 16 GB job fits a
    g4dn.xlarge (about 15.3 GiB for jobs)."""
    name = Settings.model_construct().batch_job_definition
    container = default_synth.runner_containers()[name]
    memory = next(r for r in container["ResourceRequirements"] if r["Type"] == "MEMORY")
    assert int(memory["Value"]) <= 15_360


def test_runner_is_privileged_and_must_sandbox_the_algorithm(default_synth: Synth) -> None:
    # No network for the algorithm: bwrap needs the privileged container on Batch, and the
    # runner must fail a job it cannot sandbox rather than run it with the network.
    from gantry.pipeline.import_job import DEFINITION_NAME as IMPORTER

    name = Settings.model_construct().batch_job_definition
    containers = default_synth.runner_containers()
    # The import job runs Gantry's own code on an archive it never unpacks: not privileged.
    assert containers.pop(IMPORTER).get("Privileged") in (None, False)
    assert set(containers) == {name, f"{name}-cpu"}
    for definition, container in containers.items():
        assert container["Privileged"] is True, definition
        assert {"Name": "GANTRY_SANDBOX", "Value": "required"} in container["Environment"]


def _role_policies(synth: Synth, role: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in synth.resources("AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_runner_roles_hold_no_job_data_only_the_claim(default_synth: Synth) -> None:
    roles = default_synth.resources("AWS::IAM::Role")
    credentials = next(
        f
        for f in default_synth.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("FunctionName") == resources.DEFAULT_JOB_CREDENTIALS_FUNCTION
    )
    function_arn = {"Fn::GetAtt": [_id_of(default_synth, credentials), "Arn"]}
    runner_roles = [
        name
        for name, role in roles.items()
        if role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
        in ({"Service": "ecs-tasks.amazonaws.com"}, {"Service": "sagemaker.amazonaws.com"})
        and "ExecutionRole" not in name
        # The import job runs Gantry's own code, not an algorithm's.
        and "ImportJobRole" not in name
    ]
    assert len(runner_roles) == 2
    for role in runner_roles:
        statements = _role_policies(default_synth, role)
        assert {
            "Action": "lambda:InvokeFunction",
            "Effect": "Allow",
            "Resource": function_arn,
        } in statements
        text = json.dumps(statements)
        for prefix in (resources.PREFIX_IO, resources.PREFIX_UPLOADS, resources.PREFIX_VALUES):
            assert f"/{prefix}" not in text, role


def test_job_data_role_is_assumed_by_the_credentials_function_only(
    default_synth: Synth,
) -> None:
    roles = default_synth.resources("AWS::IAM::Role")
    (data_role,) = [name for name in roles if "JobDataDataRole" in name]
    (trust,) = roles[data_role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    principal = json.dumps(trust["Principal"])
    assert "JobDataCredentialsRole" in principal and "Service" not in principal
    assert roles[data_role]["Properties"]["MaxSessionDuration"] == 3600
    text = json.dumps(_role_policies(default_synth, data_role))
    assert f"/{resources.PREFIX_IO}*" in text
    assert f"/{resources.PREFIX_VALUES}" not in text


def _id_of(synth: Synth, resource: dict[str, Any]) -> str:
    return next(k for k, v in synth.template["Resources"].items() if v is resource)


# --- IAM ----------------------------------------------------------------------------------


def test_no_wildcard_resource_or_action_on_s3_and_dynamodb(default_synth: Synth) -> None:
    for name, statement in _statements(default_synth):
        actions = _as_list(statement["Action"])
        data_actions = [a for a in actions if a.split(":")[0] in {"s3", "dynamodb"}]
        if not data_actions:
            continue
        assert "*" not in _as_list(statement["Resource"]), (name, statement)
        assert not any(a in {"s3:*", "dynamodb:*"} for a in data_actions), (name, statement)


def test_batch_control_scoped_to_gantry_queues_and_definitions(default_synth: Synth) -> None:
    submits = [
        s for _, s in _statements(default_synth) if "batch:SubmitJob" in _as_list(s["Action"])
    ]
    assert submits
    for statement in submits:
        for resource in _as_list(statement["Resource"]):
            assert resource != "*"


# --- Functions, API, events -----------------------------------------------------------------


def test_handlers_and_environment(default_synth: Synth) -> None:
    functions = {
        f["Properties"]["Handler"]: f["Properties"]
        for f in default_synth.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Handler", "").startswith("lambdas.")
    }
    assert set(functions) == HANDLERS
    fields = set(Settings.model_fields)
    for handler, props in functions.items():
        env = props["Environment"]["Variables"]
        assert env["POWERTOOLS_SERVICE_NAME"] and env["LOG_LEVEL"]
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "Gantry"
        for key in env:
            if key.startswith("GANTRY_"):
                assert key.removeprefix("GANTRY_").lower() in fields, (handler, key)
        for required in (
            "GANTRY_TABLE_NAME",
            "GANTRY_BUCKET_NAME",
            "GANTRY_API_BASE_URL",
            "GANTRY_REGION",
            "GANTRY_EVENT_BUS_NAME",
            "GANTRY_SAGEMAKER_ROLE_ARN",
            "GANTRY_BATCH_JOB_DEFINITION",
            "GANTRY_UPLOADS_QUEUE_URL",
            "GANTRY_JOB_CREDENTIALS_FUNCTION",
        ):
            assert required in env, (handler, required)
        assert env["GANTRY_SAGEMAKER_SANDBOX"] == "required"
        assert props["Architectures"] == ["arm64"]
        # The import function also carries the runner layer it appends to images.
        runner_layer = handler == "lambdas.on_import.handler"
        assert len(props["Layers"]) == 1 + runner_layer, "Powertools layer"
        layer = props["Layers"][0]["Fn::Join"][1][-1]
        # The layer of the functions' architecture, for the release the tests run.
        version = POWERTOOLS_LAYERS[importlib.metadata.version("aws-lambda-powertools")]
        assert layer.endswith(f":layer:AWSLambdaPowertoolsPythonV3-python313-arm64:{version}")


def test_only_the_imaging_functions_fetch_the_simpleitk_archive(default_synth: Synth) -> None:
    # The sweeper completes jobs as the callback does, image outputs included.
    imaging = {
        "lambdas.on_upload.handler",
        "lambdas.on_job_event.handler",
        "lambdas.sweeper.handler",
    }
    roles: dict[str, str] = {}
    for fn in default_synth.resources("AWS::Lambda::Function").values():
        props = fn["Properties"]
        env = props.get("Environment", {}).get("Variables", {})
        if props.get("Handler") not in HANDLERS:
            continue
        assert (ARCHIVE_ENV in env) == (props["Handler"] in imaging), props["Handler"]
        if ARCHIVE_ENV in env:
            uri = env[ARCHIVE_ENV]["Fn::Sub"]
            assert uri.startswith("s3://cdk-") and uri.endswith(".zip")
            roles[props["Role"]["Fn::GetAtt"][0]] = uri.rsplit("/", 1)[1]
    assert len(roles) == len(imaging)
    for role, key in roles.items():
        readable = [
            str(resource)
            for s in _statements_of(default_synth, role)
            if "s3:GetObject" in _as_list(s["Action"])
            for resource in _as_list(s["Resource"])
        ]
        # Exactly the archive's key in the asset bucket, not the whole bucket.
        assert any(f"/{key}" in r for r in readable), role
        assert not any("cdk-" in r and "/*" in r for r in readable), role


def test_api_proxy_routes_throttling_and_access_logs(default_synth: Synth) -> None:
    paths = {
        r["Properties"]["PathPart"]
        for r in default_synth.resources("AWS::ApiGateway::Resource").values()
    }
    assert paths == {"api", "v1", "{proxy+}"}
    stage = default_synth.one("AWS::ApiGateway::Stage")["Properties"]
    assert stage["AccessLogSetting"]["DestinationArn"]
    settings = stage["MethodSettings"][0]
    assert settings["ThrottlingRateLimit"] > 0 and settings["ThrottlingBurstLimit"] > 0
    outputs = default_synth.template["Outputs"]
    url = outputs["ApiBaseUrl"]["Value"]["Fn::Join"][1]
    assert url[-1].endswith("/api/v1/")


def test_job_state_rules(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": [resources.BATCH_EVENT_SOURCE],
                "detail-type": [resources.BATCH_DETAIL_TYPE],
                "detail": {
                    "jobQueue": [Match.any_value(), Match.any_value()],
                    "jobName": [{"prefix": resources.COMPUTE_JOB_NAME_PREFIX}],
                },
            },
            "Targets": [
                Match.object_like(
                    {
                        "DeadLetterConfig": Match.any_value(),
                        "RetryPolicy": {
                            "MaximumEventAgeInSeconds": 86400,
                            "MaximumRetryAttempts": 185,
                        },
                    }
                )
            ],
        },
    )
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": [resources.SAGEMAKER_EVENT_SOURCE],
                "detail-type": [resources.SAGEMAKER_DETAIL_TYPE],
                "detail": {"TrainingJobName": [{"prefix": resources.COMPUTE_JOB_NAME_PREFIX}]},
            },
        },
    )
    template.has_resource_properties("AWS::Events::Rule", {"ScheduleExpression": "rate(5 minutes)"})
    template.has_resource_properties("AWS::Events::EventBus", {"Name": resources.DEFAULT_EVENT_BUS})
    template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {"DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}}},
    )


def test_finished_drop_folder_jobs_reach_the_drop_folder_queue(default_synth: Synth) -> None:
    """Without this rule a dropped file runs but its results never appear."""
    rules = [
        rule["Properties"]
        for rule in default_synth.resources("AWS::Events::Rule").values()
        if rule["Properties"].get("EventPattern") == resources.DROPBOX_JOBS_PATTERN
    ]
    assert len(rules) == 1
    (rule,) = rules
    assert rule["EventBusName"] == {"Ref": _logical_id(default_synth, "AWS::Events::EventBus")}
    (target,) = rule["Targets"]
    queue_id = _logical_id(default_synth, "AWS::SQS::Queue", resources.DEFAULT_DROPBOX_QUEUE)
    assert target["Arn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    assert "DeadLetterConfig" in target


def test_finished_archive_run_jobs_reach_the_archive_runs_queue(default_synth: Synth) -> None:
    """Without this rule a run waiting for a job slot waits for the sweeper, and outputs are
    never written back into the items."""
    rules = [
        rule["Properties"]
        for rule in default_synth.resources("AWS::Events::Rule").values()
        if rule["Properties"].get("EventPattern") == resources.ARCHIVE_RUN_JOBS_PATTERN
    ]
    assert len(rules) == 1
    (target,) = rules[0]["Targets"]
    queue_id = _logical_id(default_synth, "AWS::SQS::Queue", resources.DEFAULT_ARCHIVE_RUNS_QUEUE)
    assert target["Arn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    assert "DeadLetterConfig" in target


def _logical_id(synth: Synth, kind: str, name: str | None = None) -> str:
    found = [
        logical_id
        for logical_id, resource in synth.resources(kind).items()
        if name is None or resource["Properties"].get("QueueName") == name
    ]
    assert len(found) == 1, found
    return found[0]


def test_sqs_sources_report_batch_item_failures(default_synth: Synth) -> None:
    mappings = default_synth.resources("AWS::Lambda::EventSourceMapping")
    assert len(mappings) == 4  # uploads, imports, drop folder, archive runs
    for mapping in mappings.values():
        assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["Properties"]["ScalingConfig"]["MaximumConcurrency"] >= 2


def test_every_function_may_announce_a_job_it_ends(default_synth: Synth) -> None:
    """Every function submits jobs and so may fail one (a refused submission)."""
    puts = [s for _, s in _statements(default_synth) if "events:PutEvents" in _as_list(s["Action"])]
    # All but the credentials function, which only hands out credentials, and the import
    # function, which handles no jobs.
    assert len(puts) == len(
        HANDLERS - {"lambdas.job_credentials.handler", "lambdas.on_import.handler"}
    )
    for statement in puts:
        assert statement["Resource"] != "*"


def test_failed_job_rate_alarm_and_dashboard(template: Template) -> None:
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Metrics": Match.array_with(
                [
                    Match.object_like(
                        {
                            "MetricStat": Match.object_like(
                                {
                                    "Metric": Match.object_like(
                                        {"Namespace": "Gantry", "MetricName": "JobsFailed"}
                                    )
                                }
                            )
                        }
                    )
                ]
            )
        },
    )
    template.resource_count_is("AWS::CloudWatch::Dashboard", 1)


def test_cloudwatch_may_publish_alarms_to_the_topic(default_synth: Synth) -> None:
    """The topic's own policy (TLS only) replaces SNS's default: it must let CloudWatch in."""
    [policy] = default_synth.resources("AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    publish = [
        s
        for s in statements
        if s["Effect"] == "Allow"
        and s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
        and "sns:Publish" in _as_list(s["Action"])
    ]
    assert len(publish) == 1
    assert publish[0]["Condition"]["StringEquals"] == {
        "aws:SourceAccount": {"Ref": "AWS::AccountId"}
    }


def test_two_regions_of_one_account_have_their_own_dashboard(default_synth: Synth) -> None:
    dashboard = default_synth.one("AWS::CloudWatch::Dashboard")["Properties"]["DashboardName"]
    assert {"Ref": "AWS::Region"} in dashboard["Fn::Join"][1]


def test_the_runner_knows_its_region(default_synth: Synth) -> None:
    for name, container in default_synth.runner_containers().items():
        environment = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert environment["AWS_REGION"] == {"Ref": "AWS::Region"}, name


# --- Algorithm image import -----------------------------------------------------------------


def _function(synth: Synth, handler: str) -> dict[str, Any]:
    [props] = [
        f["Properties"]
        for f in synth.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Handler") == handler
    ]
    return props


def test_the_import_function_gets_the_whole_lambda_time_and_its_own_queue(
    default_synth: Synth,
) -> None:
    props = _function(default_synth, "lambdas.on_import.handler")
    assert props["Timeout"] == 900
    [queue_id] = [
        k
        for k, q in default_synth.resources("AWS::SQS::Queue").items()
        if q["Properties"].get("QueueName") == resources.DEFAULT_IMPORTS_QUEUE
    ]
    queue = default_synth.template["Resources"][queue_id]["Properties"]
    # Lambda's advice for SQS sources: visibility at least 6x the function's timeout.
    assert queue["VisibilityTimeout"] == 6 * 900
    assert "RedrivePolicy" in queue
    [mapping] = [
        m["Properties"]
        for m in default_synth.resources("AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["EventSourceArn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    ]
    assert mapping["BatchSize"] == 1
    # The runner layer reaches the function as a Lambda layer (under /opt).
    assert any("Ref" in layer for layer in props["Layers"])
    assert default_synth.resources("AWS::Lambda::LayerVersion")
    # Every function may send imports there; the API does.
    env = _function(default_synth, "lambdas.api.app.handler")["Environment"]["Variables"]
    assert env["GANTRY_IMPORTS_QUEUE_URL"] == {"Ref": queue_id}
    assert env["GANTRY_IMAGE_REPOSITORY"] == {"Ref": _repository_id(default_synth)}


def _repository_id(synth: Synth) -> str:
    [repository_id] = synth.resources("AWS::ECR::Repository")
    return repository_id


def test_only_the_import_function_may_push_and_only_to_the_image_repository(
    default_synth: Synth,
) -> None:
    from infra.image_import import DELETE_ACTIONS, PUSH_ACTIONS

    import_role = _function(default_synth, "lambdas.on_import.handler")["Role"]["Fn::GetAtt"][0]
    job_role = _import_job(default_synth)["JobRoleArn"]["Fn::GetAtt"][0]
    repository_arn = {"Fn::GetAtt": [_repository_id(default_synth), "Arn"]}
    writes = {"ecr:PutImage", "ecr:InitiateLayerUpload", "ecr:BatchDeleteImage"}
    for name, statement in _statements(default_synth):
        actions = set(_as_list(statement["Action"]))
        if actions & writes:
            policy = default_synth.template["Resources"][name]["Properties"]
            # The import function, and the import job it hands large imports to (which
            # pushes but never deletes).
            assert policy["Roles"] in ([{"Ref": import_role}], [{"Ref": job_role}]), name
            assert statement["Resource"] == repository_arn
            if policy["Roles"] == [{"Ref": job_role}]:
                assert "ecr:BatchDeleteImage" not in actions
    statements = _statements_of(default_synth, import_role)
    granted = {
        action
        for s in statements
        if s.get("Resource") == repository_arn
        for action in _as_list(s["Action"])
    }
    assert granted == {*PUSH_ACTIONS, *DELETE_ACTIONS}
    assert any(
        s["Action"] == "ecr:GetAuthorizationToken" and s["Resource"] == "*" for s in statements
    )
    # It handles no algorithm jobs: no SageMaker or events rights, and of Batch only the
    # submission of the import job; it reads uploads/ and writes only models/ (model imports,
    # and a registered bioimage.io package becomes its algorithm's model).
    actions = {a for s in statements for a in _as_list(s["Action"])}
    assert not {a for a in actions if a.startswith(("sagemaker:", "events:"))}
    assert {a for a in actions if a.startswith("batch:")} == {"batch:SubmitJob"}
    puts = [s for s in statements if "s3:PutObject" in _as_list(s["Action"])]
    assert puts
    for put in puts:
        for resource in _as_list(put["Resource"]):
            assert json.dumps(resource).endswith('/models/*"]]}'), resource


def _import_job(synth: Synth) -> dict[str, Any]:
    from gantry.pipeline.import_job import DEFINITION_NAME

    return synth.runner_containers()[DEFINITION_NAME]


def test_large_imports_run_as_a_job_on_the_cpu_queue(default_synth: Synth) -> None:
    from gantry.pipeline.import_job import COMMAND, DEFINITION_NAME
    from tests.infra.conftest import IMPORTER_IMAGE

    container = _import_job(default_synth)
    assert container["Image"] == IMPORTER_IMAGE
    assert container["Command"] == list(COMMAND)
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    # The import code's settings, as the function has them.
    api = _function(default_synth, "lambdas.api.app.handler")["Environment"]["Variables"]
    for name in ("GANTRY_TABLE_NAME", "GANTRY_BUCKET_NAME", "GANTRY_IMAGE_REPOSITORY"):
        assert environment[name] == api[name], name
    function = _function(default_synth, "lambdas.on_import.handler")
    assert function["Environment"]["Variables"]["GANTRY_IMPORT_JOB_DEFINITION"] == DEFINITION_NAME
    import_role = function["Role"]["Fn::GetAtt"][0]
    [submit] = [
        s for s in _statements_of(default_synth, import_role) if s["Action"] == "batch:SubmitJob"
    ]
    # The CPU queue and the import job's definition, nothing else.
    cpu_queue = [
        k
        for k, q in default_synth.resources("AWS::Batch::JobQueue").items()
        if q["Properties"]["JobQueueName"] == Settings.model_construct().batch_job_queue_cpu
    ]
    text = json.dumps(submit["Resource"])
    assert cpu_queue[0] in text
    assert f"job-definition/{DEFINITION_NAME}*" in text
    assert len(submit["Resource"]) == 2


def test_the_repository_keeps_every_tagged_image_and_only_the_import_function_deletes(
    default_synth: Synth,
) -> None:
    repository = default_synth.template["Resources"][_repository_id(default_synth)]["Properties"]
    assert repository["ImageTagMutability"] == "IMMUTABLE"
    rules = json.loads(repository["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    # Only untagged manifests expire; no rule selects a tagged (imported) image.
    assert [rule["selection"]["tagStatus"] for rule in rules] == ["untagged"]
    import_role = _function(default_synth, "lambdas.on_import.handler")["Role"]["Fn::GetAtt"][0]
    [deny] = [s for s in repository["RepositoryPolicyText"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == {"AWS": "*"}
    assert deny["Action"] == "ecr:BatchDeleteImage"
    assert deny["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": [import_role, "Arn"]}}
    }
