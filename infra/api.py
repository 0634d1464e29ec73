"""The HTTP API: API Gateway REST API (v1) with one Lambda proxy integration.

REST API rather than HTTP API (v2):
- WAF: only REST API stages can be associated with a WAFv2 web ACL (``gantry:wafAclArn``).
- Throttling: per-stage and per-method rate/burst limits, plus usage plans if ever needed.
- Request validation, resource policies and execution logging exist only on REST APIs.
- Cost: $3.50 vs $1.00 per million requests. At Gantry's volumes (a job is a handful of
  requests; 10,000 jobs/hour is ~2M requests/day, ~$7/day vs $2/day) the difference is small
  next to GPU time, and both cost $0 idle.

Routing: ``/api/v1/`` and ``/api/v1/{proxy+}`` (ANY) go to one function; routing, request
validation (pydantic, with the grand-challenge-style messages gcapi shows) and the response
shape live in the handler. No CORS: clients are gcapi, the CLI and curl, not browsers.

Auth: in the handler. It matches ``Authorization: Bearer <token>`` case-insensitively (gcapi
sends ``BEARER``), hashes the token and looks it up in the table. A token authorizer would add
a second function on the request path and could not express the unauthenticated routes
(``gcapi/`` version check) without per-method configuration the proxy route cannot carry.

Base URL: the function's ``GANTRY_API_BASE_URL`` is built from the REST API id, the region
and the stage name, not from ``api.url`` (which references the stage, whose deployment
depends on the function: a cycle). With ``gantry:domainName`` + ``gantry:certificateArn`` the
base URL is ``https://<domain>/api/v1/`` and a regional custom domain maps to the stage.
"""

from __future__ import annotations

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from infra.config import GantryConfig
from infra.nag import acknowledge

STAGE_NAME = "prod"
API_PREFIX = ("api", "v1")


class Api(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: GantryConfig,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=removal_policy,
        )
        self.rest_api = apigw.RestApi(
            self,
            "RestApi",
            rest_api_name="gantry",
            description="Gantry: grand-challenge compatible algorithm API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # The execute-api URL stays usable next to a custom domain (gcapi needs https only).
            disable_execute_api_endpoint=False,
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=STAGE_NAME,
                throttling_rate_limit=config.api_rate_limit,
                throttling_burst_limit=config.api_burst_limit,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=False,
                ),
            ),
        )
        self.domain: apigw.DomainName | None
        if config.domain_name:
            self.domain = apigw.DomainName(
                self,
                "Domain",
                domain_name=config.domain_name,
                certificate=acm.Certificate.from_certificate_arn(
                    self, "Certificate", config.certificate_arn
                ),
                endpoint_type=apigw.EndpointType.REGIONAL,
                security_policy=apigw.SecurityPolicy.TLS_1_2,
            )
            self.domain.add_base_path_mapping(self.rest_api, stage=self.rest_api.deployment_stage)
            self.base_url = f"https://{config.domain_name}/{'/'.join(API_PREFIX)}/"
        else:
            self.domain = None
            self.base_url = (
                f"https://{self.rest_api.rest_api_id}.execute-api.{Aws.REGION}.{Aws.URL_SUFFIX}"
                f"/{STAGE_NAME}/{'/'.join(API_PREFIX)}/"
            )
        if config.waf_acl_arn:
            wafv2.CfnWebACLAssociation(
                self,
                "Waf",
                resource_arn=self.rest_api.deployment_stage.stage_arn,
                web_acl_arn=config.waf_acl_arn,
            )
        else:
            acknowledge(
                self.rest_api,
                "AwsSolutions-APIG3",
                "A WAF web ACL costs $5/month plus rules, idle or not; associate an "
                "existing one with gantry:wafAclArn. Stage throttling bounds abuse meanwhile.",
            )
        self._acknowledge()

    def integrate(self, handler) -> None:
        """Route ``/api/v1/`` and everything under it to the handler (Lambda proxy)."""
        integration = apigw.LambdaIntegration(handler, proxy=True)
        resource = self.rest_api.root
        for part in API_PREFIX:
            resource = resource.add_resource(part)
        resource.add_method("ANY", integration)
        resource.add_proxy(default_integration=integration, any_method=True)

    def _acknowledge(self) -> None:
        acks = {
            "AwsSolutions-APIG2": "Requests are validated in the handler with pydantic so "
            "errors name the field in the grand-challenge shape gcapi expects; a gateway "
            "validator on a proxy route could only check parameter presence.",
            "AwsSolutions-APIG4": "Authorization is in the handler: bearer tokens are hashed "
            "and looked up in the table; gcapi/ (version check) is public by design.",
            "AwsSolutions-COG4": "Users authenticate with API tokens (grand-challenge style), "
            "not Cognito; tokens are created with 'gantry token create'.",
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]": "The account-level role API Gateway "
            "needs to write execution logs; AWS publishes no narrower policy.",
        }
        for rule, reason in acks.items():
            acknowledge(self.rest_api, rule, reason)
