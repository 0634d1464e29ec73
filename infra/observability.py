"""Alarms and a dashboard: the few signals that mean someone should look.

- Every dead-letter queue: any visible message (> 0) alarms. A DLQ message is an event the
  platform could not apply, so it is a bug or an outage, never routine.
- Failed-job rate: ``JobsFailed / (JobsFailed + JobsSucceeded)`` over an hour from the
  Powertools metrics (namespace ``Gantry``, dimension ``service=gantry``), only once at least
  ``MIN_JOBS`` finished, so one failed job on a quiet day does not page anyone.
- API 5XX: the handler turns user errors into 4XX; a 5XX is ours.
All alarms notify one SNS topic (subscribe an address with ``gantry:alarmEmail``). Missing
data is "not breaching": an idle platform is a healthy one.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Aws, Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.functions import METRICS_NAMESPACE, POWERTOOLS_SERVICE_NAME

DASHBOARD_PREFIX = "gantry-"
MIN_JOBS = 5
FAILED_RATE_PERCENT = 20
RATE_PERIOD = Duration.hours(1)


def job_metric(name: str) -> cw.Metric:
    return cw.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": POWERTOOLS_SERVICE_NAME},
        statistic="Sum",
        period=RATE_PERIOD,
    )


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        dead_letter_queues: Mapping[str, sqs.IQueue],
        functions: Mapping[str, lambda_.IFunction],
        rest_api: apigw.RestApi,
        alarm_email: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(self, "Alarms", display_name="Gantry alarms", enforce_ssl=True)
        # enforce_ssl gives the topic a policy of its own, which replaces SNS's default one:
        # without this statement CloudWatch may not publish and no alarm e-mail is sent.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "ArnLike": {
                        "aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:"
                        f"{Aws.ACCOUNT_ID}:alarm:*"
                    },
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                },
            )
        )
        if alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(alarm_email))
        action = cw_actions.SnsAction(self.topic)

        self.alarms: list[cw.Alarm] = []
        for name, queue in dead_letter_queues.items():
            alarm = queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(5), statistic="Maximum"
            ).create_alarm(
                self,
                f"Dlq-{name}",
                alarm_description=f"Messages in the {name} dead-letter queue",
                threshold=0,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            )
            self.alarms.append(alarm)

        failed, succeeded = job_metric("JobsFailed"), job_metric("JobsSucceeded")
        self.failed_rate = cw.MathExpression(
            expression=(
                f"IF((FILL(f,0)+FILL(s,0)) >= {MIN_JOBS}, 100*FILL(f,0)/(FILL(f,0)+FILL(s,0)), 0)"
            ),
            using_metrics={"f": failed, "s": succeeded},
            label="Failed jobs (%)",
            period=RATE_PERIOD,
        )
        self.alarms.append(
            self.failed_rate.create_alarm(
                self,
                "FailedJobRate",
                alarm_description=f"More than {FAILED_RATE_PERCENT}% of jobs failed in an hour",
                threshold=FAILED_RATE_PERCENT,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            )
        )
        self.alarms.append(
            rest_api.metric_server_error(period=Duration.minutes(5), statistic="Sum").create_alarm(
                self,
                "Api5xx",
                alarm_description="The API answered 5XX",
                threshold=5,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            )
        )
        for alarm in self.alarms:
            alarm.add_alarm_action(action)

        # Dashboards are global to the account: the region in the name lets deployments in
        # two regions of one account coexist.
        self.dashboard = cw.Dashboard(
            self, "Dashboard", dashboard_name=f"{DASHBOARD_PREFIX}{Aws.REGION}"
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Jobs finished",
                left=[failed, succeeded],
                right=[self.failed_rate],
                width=12,
            ),
            cw.GraphWidget(
                title="API",
                left=[rest_api.metric_count(), rest_api.metric_client_error()],
                right=[rest_api.metric_server_error(), rest_api.metric_latency(statistic="p90")],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Lambda errors",
                left=[fn.metric_errors(label=name) for name, fn in functions.items()],
                width=8,
            ),
            cw.GraphWidget(
                title="Lambda duration p90",
                left=[
                    fn.metric_duration(label=name, statistic="p90")
                    for name, fn in functions.items()
                ],
                width=8,
            ),
            cw.GraphWidget(
                title="Lambda throttles",
                left=[fn.metric_throttles(label=name) for name, fn in functions.items()],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Dead-letter queues",
                left=[
                    q.metric_approximate_number_of_messages_visible(label=n)
                    for n, q in dead_letter_queues.items()
                ],
                width=12,
            ),
            cw.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=12),
        )
