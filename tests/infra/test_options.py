"""The optional switches: destroy on delete, spot, domain, WAF, SageMaker, unprivileged runner."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match, Template

from tests.infra.conftest import ALL_OPTIONS, Synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(options_synth: Synth) -> Template:
    return Template.from_json(options_synth.template)


def test_destroy_on_delete_removes_data(options_synth: Synth) -> None:
    for kind in ("AWS::DynamoDB::Table", "AWS::S3::Bucket"):
        for name, resource in options_synth.resources(kind).items():
            assert resource.get("DeletionPolicy") == "Delete", name
    table = options_synth.one("AWS::DynamoDB::Table")["Properties"]
    assert not table.get("DeletionProtectionEnabled")


def test_spot_environment_is_tried_first(options_synth: Synth) -> None:
    envs = options_synth.resources("AWS::Batch::ComputeEnvironment")
    spot = [n for n, e in envs.items() if e["Properties"]["ComputeResources"]["Type"] == "SPOT"]
    assert len(spot) == 1
    gpu_queue = next(
        q["Properties"]
        for q in options_synth.resources("AWS::Batch::JobQueue").values()
        if q["Properties"]["JobQueueName"] == "gantry-gpu"
    )
    order = sorted(gpu_queue["ComputeEnvironmentOrder"], key=lambda o: o["Order"])
    assert order[0]["ComputeEnvironment"]["Fn::GetAtt"][0] == spot[0]
    assert len(order) == 2


def test_custom_domain_sets_the_base_url(template: Template, options_synth: Synth) -> None:
    domain = ALL_OPTIONS["gantry:domainName"]
    template.has_resource_properties(
        "AWS::ApiGateway::DomainName",
        {"DomainName": domain, "SecurityPolicy": "TLS_1_2"},
    )
    assert options_synth.template["Outputs"]["ApiBaseUrl"]["Value"] == f"https://{domain}/api/v1/"
    for fn in options_synth.resources("AWS::Lambda::Function").values():
        env = fn["Properties"].get("Environment", {}).get("Variables", {})
        if "GANTRY_API_BASE_URL" in env:
            assert env["GANTRY_API_BASE_URL"] == f"https://{domain}/api/v1/"
            assert env["GANTRY_COMPUTE_BACKEND"] == "sagemaker"
            assert env["GANTRY_SAGEMAKER_SANDBOX"] == "auto"
            assert env["GANTRY_BIOIMAGEIO_IMAGE"] == ALL_OPTIONS["gantry:bioimageioImage"]
            assert env["GANTRY_BIOIMAGEIO_GPU_IMAGE"] == ALL_OPTIONS["gantry:bioimageioGpuImage"]


def test_waf_alarm_email_and_reserved_concurrency(template: Template) -> None:
    template.has_resource_properties(
        "AWS::WAFv2::WebACLAssociation", {"WebACLArn": ALL_OPTIONS["gantry:wafAclArn"]}
    )
    template.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "email", "Endpoint": ALL_OPTIONS["gantry:alarmEmail"]},
    )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {"Handler": "lambdas.on_job_event.handler", "ReservedConcurrentExecutions": 20},
    )
    template.has_resource_properties(
        "AWS::Lambda::Function", {"Handler": "lambdas.api.app.handler", "Layers": Match.any_value()}
    )


def test_opting_out_of_the_privileged_runner_relaxes_the_sandbox(options_synth: Synth) -> None:
    # Unprivileged, bwrap cannot build the sandbox: "required" would fail every job, so the
    # runner falls back to an unsandboxed run ("auto") and records it in the result.
    from gantry.pipeline.import_job import DEFINITION_NAME as IMPORTER

    for definition, container in options_synth.runner_containers().items():
        assert container.get("Privileged") is not True, definition
        if definition != IMPORTER:  # Gantry's own import code: no sandbox, no algorithm
            assert {"Name": "GANTRY_SANDBOX", "Value": "auto"} in container["Environment"]


def test_a_destroyable_stack_lets_cloudformation_empty_the_image_repository(
    options_synth: Synth,
) -> None:
    """A destroyable stack's repository has no policy denying deletions: CloudFormation
    empties it (EmptyOnDelete) with its own role when the stack is deleted."""
    [repository] = options_synth.resources("AWS::ECR::Repository").values()
    assert repository["Properties"]["EmptyOnDelete"] is True
    statements = (repository["Properties"].get("RepositoryPolicyText") or {}).get("Statement", [])
    assert not [s for s in statements if s["Effect"] == "Deny"]
