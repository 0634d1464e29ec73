"""Event wiring: what invokes each function, and where undeliverable events go.

- Batch "Batch Job State Change" on the default bus, filtered to Gantry's two job queues and
  to job names starting with ``resources.COMPUTE_JOB_NAME_PREFIX``; SageMaker "Training Job
  State Change" filtered by the same name prefix. Both go to on_job_event.
  EventBridge -> Lambda is asynchronous, so there are two failure paths, each with a queue:
  the *rule target* retries delivery for up to 24 h and then dead-letters the event
  (``gantry-job-events-dlq``: the original event, re-puttable); the *function's* async
  invocation retries a failed handler twice and then sends the invocation record to its
  on-failure destination (``gantry-job-events-failed``). The sweeper reconciles from the
  backends anyway, so neither queue is the only copy of the truth.
- No reserved concurrency by default: a new account has only 10 concurrent executions and
  reserving any fails the deployment there; ``gantry:jobEventsReservedConcurrency`` sets it.
  The SQS sources instead cap their own concurrency (``gantry:sqsMaxConcurrency``), which
  reserves nothing.
- SQS (uploads/, dropbox/ notifications) -> on_upload / on_dropbox with
  ``reportBatchItemFailures``: one bad file is retried alone, then dead-lettered.
- The sweeper runs every 5 minutes; its target has a DLQ too (a missed sweep is harmless,
  the next one covers it, but a persistent delivery failure should be seen).
- The custom bus ``resources.DEFAULT_EVENT_BUS`` carries ``Gantry Job Succeeded/Failed``
  (source ``resources.EVENT_SOURCE``) for whoever wants to subscribe; drop-folder jobs
  (``resources.DROPBOX_JOBS_PATTERN``) are routed to the drop-folder queue, archive runs'
  jobs (``resources.ARCHIVE_RUN_JOBS_PATTERN``) to the archive-runs queue.
- SQS (archive-run pages) -> on_archive_run, as the notification queues.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from gantry import resources as r
from infra.compute import Compute
from infra.data import DataStore, dead_letter_queue
from infra.handlers import Handlers
from infra.nag import acknowledge

SWEEP_EVERY = Duration.minutes(5)
SQS_BATCH_SIZE = 10


class Events(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handlers: Handlers,
        data: DataStore,
        compute: Compute,
        bus: events.IEventBus,
        sqs_max_concurrency: int,
    ) -> None:
        super().__init__(scope, construct_id)
        job_events = handlers["on_job_event"]
        self.job_events_dlq = dead_letter_queue(
            self, "JobEventsDlq", queue_name=f"{r.DEFAULT_JOB_EVENTS_QUEUE}-dlq"
        )
        self.job_events_failed = dead_letter_queue(
            self, "JobEventsFailed", queue_name=f"{r.DEFAULT_JOB_EVENTS_QUEUE}-failed"
        )
        self.sweeper_dlq = dead_letter_queue(self, "SweeperDlq", queue_name="gantry-sweeper-dlq")
        for queue, role in (
            (self.job_events_dlq, "the dead-letter queue of the job-event rules' target"),
            (self.job_events_failed, "on_job_event's on-failure destination"),
            (self.sweeper_dlq, "the dead-letter queue of the sweep schedule's target"),
        ):
            acknowledge(
                queue,
                "AwsSolutions-SQS3",
                f"This queue is {role}: a DLQ itself (cdk-nag only recognises DLQs named in "
                "another queue's redrive policy).",
            )
        job_events.configure_async_invoke(
            retry_attempts=2,
            max_event_age=Duration.hours(6),
            on_failure=destinations.SqsDestination(self.job_events_failed),
        )
        target = targets.LambdaFunction(
            job_events,
            dead_letter_queue=self.job_events_dlq,
            retry_attempts=185,
            max_event_age=Duration.hours(24),
        )
        events.Rule(
            self,
            "BatchJobStateChange",
            description="Gantry's Batch jobs changed state",
            event_pattern=events.EventPattern(
                source=[r.BATCH_EVENT_SOURCE],
                detail_type=[r.BATCH_DETAIL_TYPE],
                detail={
                    "jobQueue": [compute.gpu_queue.job_queue_arn, compute.cpu_queue.job_queue_arn],
                    "jobName": [{"prefix": r.COMPUTE_JOB_NAME_PREFIX}],
                },
            ),
            targets=[target],
        )
        events.Rule(
            self,
            "SageMakerJobStateChange",
            description="Gantry's SageMaker training jobs changed state",
            event_pattern=events.EventPattern(
                source=[r.SAGEMAKER_EVENT_SOURCE],
                detail_type=[r.SAGEMAKER_DETAIL_TYPE],
                detail={"TrainingJobName": [{"prefix": r.COMPUTE_JOB_NAME_PREFIX}]},
            ),
            targets=[target],
        )
        events.Rule(
            self,
            "Sweep",
            description="Reconcile Gantry jobs with the compute backends",
            schedule=events.Schedule.rate(SWEEP_EVERY),
            targets=[
                targets.LambdaFunction(
                    handlers["sweeper"],
                    dead_letter_queue=self.sweeper_dlq,
                    retry_attempts=2,
                    # An older sweep is worthless once the next one is due.
                    max_event_age=SWEEP_EVERY,
                )
            ],
        )
        # Finished drop-folder jobs go back to the drop-folder queue, whose handler writes
        # their outputs and job.json under dropbox-results/.
        events.Rule(
            self,
            "DropboxJobEnded",
            description="Gantry's drop-folder jobs ended",
            event_bus=bus,
            event_pattern=_pattern(r.DROPBOX_JOBS_PATTERN),
            targets=[targets.SqsQueue(data.dropbox_queue, dead_letter_queue=data.dropbox_dlq)],
        )
        # Finished jobs of archive runs go to the archive-runs queue: outputs written back into
        # the items, and runs waiting for a free job slot go on.
        events.Rule(
            self,
            "ArchiveRunJobEnded",
            description="Gantry's archive-run jobs ended",
            event_bus=bus,
            event_pattern=_pattern(r.ARCHIVE_RUN_JOBS_PATTERN),
            targets=[
                targets.SqsQueue(data.archive_runs_queue, dead_letter_queue=data.archive_runs_dlq)
            ],
        )
        for name, queue in (
            ("on_upload", data.uploads_queue),
            ("on_dropbox", data.dropbox_queue),
            ("on_archive_run", data.archive_runs_queue),
        ):
            handlers[name].add_event_source(
                sources.SqsEventSource(
                    queue,
                    batch_size=SQS_BATCH_SIZE,
                    report_batch_item_failures=True,
                    max_concurrency=sqs_max_concurrency,
                )
            )

    @property
    def dead_letter_queues(self) -> dict[str, sqs.IQueue]:
        return {
            "job-events": self.job_events_dlq,
            "job-events-failed": self.job_events_failed,
            "sweeper": self.sweeper_dlq,
        }


def _pattern(pattern: dict[str, Any]) -> events.EventPattern:
    """One of ``gantry.resources``' event patterns (the local stack routes with the same
    dicts) as CDK takes it."""
    return events.EventPattern(
        source=pattern["source"], detail_type=pattern["detail-type"], detail=pattern["detail"]
    )


def job_event_bus(scope: Construct) -> events.EventBus:
    return events.EventBus(scope, "JobEventBus", event_bus_name=r.DEFAULT_EVENT_BUS)
