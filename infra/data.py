"""The data layer: one bucket, one table, and the queues S3 notifications land in.

Bucket decisions
- Encryption: SSE-S3. Every reader (Lambda, Batch job role, SageMaker role, presigned-URL
  clients) works without KMS grants, and it costs nothing; SSE-KMS would add a key
  ($1/month) and per-request KMS charges on every image read, for no control Gantry uses.
- Versioning: on, with non-current versions expired after ``noncurrentVersionsExpireDays``.
  ``values/`` holds the only copy of user data the table points at; a buggy delete or
  overwrite is recoverable for that window, and the extra storage is bounded by it.
- Lifecycle: abort incomplete multipart uploads after a day (gcapi uploads parts directly),
  expire ``uploads/`` (raw uploads are copied to ``values/`` once validated) and ``io/``
  (per-attempt job scratch: inputs, outputs, result file) after N days.
- Server access logs go to a separate log bucket (which itself does not log: that would
  recurse); VPC flow logs go there too.
- No CORS: gcapi and the CLI are not browsers.

Table: on-demand (no idle cost), PITR, TTL on ``resources.TTL_ATTRIBUTE``, the GSIs of
``resources.GLOBAL_INDEXES`` projecting ALL (list pages are served from the index alone).

Retained unless ``gantry:destroyOnDelete=true``: losing the table or bucket to a mistaken
``cdk destroy`` is not recoverable. The policy is RetainExceptOnCreate: kept on delete and
replacement, but removed when the deployment that created it rolls back, so a failed first
deploy can simply be run again (a retained ``gantry`` table would block it: its name is
fixed). No DynamoDB deletion protection for the same reason: it would make that rollback
fail; the retain policy already keeps stack operations from deleting the table.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from gantry import resources
from infra.config import GantryConfig
from infra.nag import acknowledge

# A message that failed this many times goes to the DLQ; the handlers are idempotent, so a
# few redeliveries are harmless and cover throttling and transient S3/DynamoDB errors.
MAX_RECEIVE_COUNT = 5
DLQ_RETENTION = Duration.days(14)
NOTIFICATIONS_HANDLER_ID = "BucketNotificationsHandler050a0587b7544547bf325f094a3db834"
DEFAULT_VISIBILITY = Duration.seconds(30)
DEFAULT_RETENTION = Duration.days(4)


def secure_queue(
    scope: Construct,
    construct_id: str,
    *,
    queue_name: str,
    visibility_timeout: Duration = DEFAULT_VISIBILITY,
    dead_letter: sqs.IQueue | None = None,
    retention: Duration = DEFAULT_RETENTION,
) -> sqs.Queue:
    """SQS-managed encryption, TLS only, optional DLQ: what every Gantry queue needs."""
    return sqs.Queue(
        scope,
        construct_id,
        queue_name=queue_name,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        visibility_timeout=visibility_timeout,
        retention_period=retention,
        dead_letter_queue=(
            sqs.DeadLetterQueue(queue=dead_letter, max_receive_count=MAX_RECEIVE_COUNT)
            if dead_letter is not None
            else None
        ),
    )


def dead_letter_queue(scope: Construct, construct_id: str, *, queue_name: str) -> sqs.Queue:
    return secure_queue(scope, construct_id, queue_name=queue_name, retention=DLQ_RETENTION)


def queue_with_dlq(
    scope: Construct, name: str, *, queue_name: str, visibility_timeout: Duration
) -> tuple[sqs.Queue, sqs.Queue]:
    """A handler's queue (construct ``<name>Queue``) and its dead-letter queue (``<name>Dlq``,
    named ``<queue_name>-dlq``), where a message goes after MAX_RECEIVE_COUNT failures."""
    dlq = dead_letter_queue(scope, f"{name}Dlq", queue_name=f"{queue_name}-dlq")
    queue = secure_queue(
        scope,
        f"{name}Queue",
        queue_name=queue_name,
        visibility_timeout=visibility_timeout,
        dead_letter=dlq,
    )
    return queue, dlq


class DataStore(Construct):
    """Bucket, log bucket, table, the uploads/dropbox notification queues, the imports queue
    and the archive-runs queue."""

    # Visibility timeout of the notification queues: 6x the consuming function's timeout, as
    # Lambda's SQS poller recommends, so a batch is not redelivered while still being worked.
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: GantryConfig,
        uploads_visibility: Duration,
        dropbox_visibility: Duration,
        imports_visibility: Duration,
        archive_runs_visibility: Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        removal = (
            RemovalPolicy.DESTROY
            if config.destroy_on_delete
            else RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE
        )
        auto_delete = config.destroy_on_delete

        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal,
            auto_delete_objects=auto_delete,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-logs",
                    expiration=Duration.days(config.access_logs_expire_days),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )
        acknowledge(
            self.log_bucket,
            "AwsSolutions-S1",
            "This is the access-log bucket; logging it into itself would recurse.",
        )

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="data-bucket/",
            removal_policy=removal,
            auto_delete_objects=auto_delete,
            lifecycle_rules=self._lifecycle(config),
        )

        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=resources.DEFAULT_TABLE_NAME,
            partition_key=dynamodb.Attribute(
                name=resources.PARTITION_KEY, type=dynamodb.AttributeType.STRING
            ),
            sort_key=dynamodb.Attribute(
                name=resources.SORT_KEY, type=dynamodb.AttributeType.STRING
            ),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=resources.TTL_ATTRIBUTE,
            removal_policy=removal,
        )
        for gsi in resources.GLOBAL_INDEXES:
            self.table.add_global_secondary_index(
                index_name=gsi.name,
                partition_key=dynamodb.Attribute(
                    name=gsi.partition_key, type=dynamodb.AttributeType.STRING
                ),
                sort_key=dynamodb.Attribute(name=gsi.sort_key, type=dynamodb.AttributeType.STRING),
                projection_type=dynamodb.ProjectionType.ALL,
            )

        # S3 -> SQS -> Lambda (rather than S3 -> Lambda): the queue absorbs bursts (a drop
        # folder of 10,000 files), gives partial-batch retries and a DLQ to inspect.
        self.uploads_queue, self.uploads_dlq = queue_with_dlq(
            self,
            "Uploads",
            queue_name=resources.DEFAULT_UPLOADS_QUEUE,
            visibility_timeout=uploads_visibility,
        )
        self.dropbox_queue, self.dropbox_dlq = queue_with_dlq(
            self,
            "Dropbox",
            queue_name=resources.DEFAULT_DROPBOX_QUEUE,
            visibility_timeout=dropbox_visibility,
        )
        # Algorithm image imports: one message per uploaded archive, for the import function
        # (minutes per message, hence a queue of its own).
        self.imports_queue, self.imports_dlq = queue_with_dlq(
            self,
            "Imports",
            queue_name=resources.DEFAULT_IMPORTS_QUEUE,
            visibility_timeout=imports_visibility,
        )
        # Archive runs: a page of an archive's items per message (gantry.pipeline.archive_runs).
        self.archive_runs_queue, self.archive_runs_dlq = queue_with_dlq(
            self,
            "ArchiveRuns",
            queue_name=resources.DEFAULT_ARCHIVE_RUNS_QUEUE,
            visibility_timeout=archive_runs_visibility,
        )
        queues = {
            resources.DEFAULT_UPLOADS_QUEUE: self.uploads_queue,
            resources.DEFAULT_DROPBOX_QUEUE: self.dropbox_queue,
        }
        for prefix, queue_name in resources.BUCKET_NOTIFICATIONS:
            queue = queues[queue_name]
            self.bucket.add_event_notification(
                s3.EventType.OBJECT_CREATED,
                s3n.SqsDestination(queue),
                s3.NotificationKeyFilter(prefix=prefix),
            )

        # CDK applies notifications through one singleton custom resource per stack.
        handler = Stack.of(self).node.try_find_child(NOTIFICATIONS_HANDLER_ID)
        if handler is not None:
            acknowledge(
                handler,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole]",
                "CDK's bucket-notification custom resource; it runs only during deployments.",
            )
            acknowledge(
                handler,
                "AwsSolutions-IAM5[Resource::*]",
                "CDK's bucket-notification custom resource needs s3:PutBucketNotification; "
                "it runs only during deployments.",
            )

    @staticmethod
    def _lifecycle(config: GantryConfig) -> list[s3.LifecycleRule]:
        return [
            s3.LifecycleRule(
                id="abort-incomplete-multipart",
                abort_incomplete_multipart_upload_after=Duration.days(1),
            ),
            s3.LifecycleRule(
                id="expire-uploads",
                prefix=resources.PREFIX_UPLOADS,
                expiration=Duration.days(config.uploads_expire_days),
            ),
            s3.LifecycleRule(
                id="expire-io",
                prefix=resources.PREFIX_IO,
                expiration=Duration.days(config.io_expire_days),
            ),
            s3.LifecycleRule(
                id="expire-noncurrent",
                noncurrent_version_expiration=Duration.days(config.noncurrent_versions_expire_days),
                expired_object_delete_marker=True,
            ),
        ]

    @property
    def dead_letter_queues(self) -> dict[str, sqs.IQueue]:
        return {
            "uploads": self.uploads_dlq,
            "dropbox": self.dropbox_dlq,
            "imports": self.imports_dlq,
            "archive-runs": self.archive_runs_dlq,
        }
