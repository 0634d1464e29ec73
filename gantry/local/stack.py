"""The embedded local stack: the same handlers as AWS, on one machine.

The AWS endpoint is moto's server on loopback (or any AWS-compatible endpoint given as
``endpoint_url``). Resources come from gantry.resources / gantry.provision, the definitions
the CDK stacks read. Events travel as on AWS: S3 notifications reach SQS queues whose
messages a dispatcher feeds to the upload, drop-folder and archive-run handlers (partial-batch
responses honoured), Gantry's job events reach the drop-folder and archive-run queues through
EventBridge rules, the
local compute backend's Batch-shaped state changes go into the callback handler, and the
sweeper runs on a timer. Optionally an HTTPS gateway serves the API handler, and a state
directory keeps everything across restarts: every write the endpoint acknowledges is on disk
before its response (``gantry.local.durable``), and the work queue messages carried is
re-derived from that state on start (``recover``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gantry import resources, timeutil
from gantry.context import Context
from gantry.contract import LOCAL_INCOMING_ENV
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.local.connection import image_store_dir
from gantry.provision import ensure_data
from gantry.settings import Settings

logger = logging.getLogger(__name__)
QUEUES = (
    resources.DEFAULT_UPLOADS_QUEUE,
    resources.DEFAULT_DROPBOX_QUEUE,
    resources.DEFAULT_ARCHIVE_RUNS_QUEUE,
)
# Job-event rules on the job bus: (rule, pattern, target queue).
JOB_EVENT_RULES = (
    (resources.DROPBOX_JOBS_RULE, resources.DROPBOX_JOBS_PATTERN, resources.DEFAULT_DROPBOX_QUEUE),
    (
        resources.ARCHIVE_RUN_JOBS_RULE,
        resources.ARCHIVE_RUN_JOBS_PATTERN,
        resources.DEFAULT_ARCHIVE_RUNS_QUEUE,
    ),
)
# As on AWS: a message a handler failed on comes back after this many seconds.
VISIBILITY_TIMEOUT = "30"
SWEEP_EVERY_SECONDS = 60.0
DATA_DIR = "data"


@dataclass
class LocalStack:
    settings: Settings
    ctx: Context
    endpoint: Any = None  # EmbeddedAws, when the stack runs its own endpoint
    gateway: Any = None  # Gateway, when it serves the HTTPS API
    state_dir: Path | None = None
    queues: dict[str, str] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    reconciled: Any = None  # DropSweep of the start, when the stack recovered its state
    backfilled: dict[str, int] = field(default_factory=dict)  # what the start's backfill added
    resumed_imports: list[str] = field(default_factory=list)  # image imports re-queued
    registry: Any = None  # gantry.local.images.LocalRegistry, when the stack stores images
    _exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stopping: bool = False

    @classmethod
    def start(
        cls,
        settings: Settings | None = None,
        *,
        port: int = 0,
        endpoint_url: str | None = None,
        embedded: bool | None = None,
        state_dir: Path | None = None,
        serve_api: bool = False,
        api_port: int = 0,
        dispatch: bool = True,
        sweep_every: float | None = SWEEP_EVERY_SECONDS,
        registry: str = "auto",
        **backend_options: Any,
    ) -> LocalStack:
        """Start the stack. ``port`` is the embedded endpoint's, ``api_port`` the gateway's.
        ``registry``: where imported images go (``gantry.local.images.REGISTRY_CHOICES``).
        Without the embedded endpoint (``embedded=False``, implied by ``endpoint_url``) the
        stack uses ``endpoint_url``, or boto3's own resolution (a real account) when None."""
        from gantry.local.endpoint import EmbeddedAws

        if embedded is None:
            embedded = endpoint_url is None
        # The embedded endpoint accepts any credentials; boto3 insists on having some.
        if embedded:
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.setdefault(name, "local")
        data_dir = state_dir / DATA_DIR if state_dir is not None else None
        endpoint = EmbeddedAws(port=port, data_dir=data_dir).start() if embedded else None
        gateway = None
        if serve_api:
            from gantry.local.gateway import Gateway
            from gantry.local.tls import ensure_certificates

            tls_dir = (state_dir or Path(".gantry")) / "tls"
            gateway = Gateway(ensure_certificates(tls_dir), port=api_port)
        updates: dict[str, Any] = {
            "endpoint_url": endpoint.url if endpoint else endpoint_url,
            "compute_backend": "local",
        }
        if gateway is not None and endpoint is not None:
            # Clients reach the embedded S3 through the gateway, on the API's https host.
            updates["presign_endpoint_url"] = gateway.base_url
        settings = (settings or Settings()).model_copy(update=updates)
        ctx = Context.create(settings)
        # Every drop-folder handler of an earlier run of this machine's stack is gone.
        ctx.claims_orphaned_before = int(time.time())
        stack = cls(
            settings=settings,
            ctx=ctx,
            endpoint=endpoint,
            gateway=gateway,
            state_dir=state_dir,
        )
        try:
            stack._provision(backend_options, registry)
            if state_dir is not None and endpoint is not None:
                stack._restore(state_dir)
            stack.recovered = stack.recover()
            if gateway is not None:
                stack._serve_api()
            if dispatch:
                stack._dispatch()
                _preload_imaging()
            if sweep_every:
                stack._every(sweep_every, stack.sweep, "sweeper")
        except BaseException:
            stack.stop()
            raise
        return stack

    # --- resources ------------------------------------------------------------------------

    def _provision(self, backend_options: dict[str, Any], registry: str) -> None:
        from gantry.compute.local import LocalBackend
        from gantry.oci import ImageStore
        from gantry.pipeline import wiring

        clients = self.ctx.clients
        ensure_data(clients, self.settings)
        for name in QUEUES:
            self.queues[name] = clients.sqs.create_queue(
                QueueName=name, Attributes={"VisibilityTimeout": VISIBILITY_TIMEOUT}
            )["QueueUrl"]
        self.settings = self.settings.model_copy(
            update={
                "uploads_queue_url": self.queues[resources.DEFAULT_UPLOADS_QUEUE],
                "archive_runs_queue_url": self.queues[resources.DEFAULT_ARCHIVE_RUNS_QUEUE],
            }
        )
        self.ctx.settings = self.settings
        rule_arns = self._route_job_events()
        self._allow_senders(rule_arns)
        self._route_notifications()
        if self.state_dir is not None:
            # OCI images registered with this stack are unpacked here (gantry.oci).
            store = ImageStore(image_store_dir(self.state_dir))
            for leftover in store.remove_leftovers():
                logger.info("removed %s, left by an interrupted image unpack", leftover)
            backend_options.setdefault("image_store", store.root)
        if backend_options.get("image_store"):
            backend_options["registry"] = self._open_registry(registry)
        durable = self.endpoint.store if self.endpoint is not None else None
        if durable is not None:
            # Runners hand their outputs to the durable endpoint as files (one machine only).
            extra_env = dict(backend_options.get("extra_env") or {})
            extra_env[LOCAL_INCOMING_ENV] = str(durable.incoming)
            backend_options["extra_env"] = extra_env
        self.ctx.compute_backend = LocalBackend(
            self.settings, on_event=self._on_compute_event, **backend_options
        )
        # The warm runner imports while the stack finishes starting, not on the first job.
        self.ctx.compute_backend.warm_up()
        wiring.install(self.ctx)

    def _open_registry(self, choice: str) -> Any:
        """Imports push to the stack's registry; jobs pull from it (gantry.local.images)."""
        import tempfile

        from gantry.local.images import open_registry, runner_layer
        from gantry.pipeline.image_import import registry_publisher, registry_remover

        if self.state_dir is not None:
            root = self.state_dir / "registry"
        else:
            root = Path(tempfile.mkdtemp(prefix="gantry-registry-"))
            self._exits.callback(_remove_tree, root)
        self.registry = open_registry(choice, root, self._exits)
        logger.info("image registry: %s", self.registry.describe())
        runner = runner_layer(root)
        self.ctx.image_publisher = registry_publisher(self.registry.registry, runner)
        self.ctx.image_remover = registry_remover(self.registry.registry)
        return self.registry.registry

    def _queue_arn(self, name: str) -> str:
        return self.ctx.clients.sqs.get_queue_attributes(
            QueueUrl=self.queues[name], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]

    def _route_notifications(self) -> None:
        self.ctx.clients.s3.put_bucket_notification_configuration(
            Bucket=self.settings.bucket_name,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": self._queue_arn(queue),
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                    }
                    for prefix, queue in resources.BUCKET_NOTIFICATIONS
                ]
            },
        )

    def _allow_senders(self, rule_arns: dict[str, str]) -> None:
        """Queue policies that let the bucket (and the job-event rules) send messages: a real
        account refuses notifications to a queue that does not allow them."""
        bucket_arn = f"arn:aws:s3:::{self.settings.bucket_name}"
        senders: dict[str, list[tuple[str, str]]] = {name: [] for name in QUEUES}
        for _prefix, queue in resources.BUCKET_NOTIFICATIONS:
            senders[queue].append(("s3.amazonaws.com", bucket_arn))
        for queue, rule_arn in rule_arns.items():
            senders[queue].append(("events.amazonaws.com", rule_arn))
        for name, allowed in senders.items():
            arn = self._queue_arn(name)
            statements = [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": service},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": source}},
                }
                for service, source in allowed
            ]
            policy = {"Version": "2012-10-17", "Statement": statements}
            self.ctx.clients.sqs.set_queue_attributes(
                QueueUrl=self.queues[name], Attributes={"Policy": json.dumps(policy)}
            )

    def _route_job_events(self) -> dict[str, str]:
        """The drop-folder and archive-run rules on the job bus; their ARNs by queue."""
        events = self.ctx.clients.events
        with contextlib.suppress(events.exceptions.ResourceAlreadyExistsException):
            events.create_event_bus(Name=self.settings.event_bus_name)
        arns = {}
        for rule, pattern, queue in JOB_EVENT_RULES:
            arns[queue] = str(
                events.put_rule(
                    Name=rule,
                    EventBusName=self.settings.event_bus_name,
                    EventPattern=json.dumps(pattern),
                )["RuleArn"]
            )
            events.put_targets(
                Rule=rule,
                EventBusName=self.settings.event_bus_name,
                Targets=[{"Id": queue, "Arn": self._queue_arn(queue)}],
            )
        return arns

    # --- state ----------------------------------------------------------------------------

    def _restore(self, state_dir: Path) -> None:
        from gantry.local.snapshot import migrate

        # Older versions saved a snapshot every 10 s; its content moves into the store once.
        migrate(state_dir / "state", self.endpoint.store, self.settings)
        items, objects = self.endpoint.restore()
        logger.info("restored %s items and %s objects", items, objects)

    def recover(self) -> list[str]:
        """Re-derive the work after a (re)start from the state alone: the queue messages and
        local compute jobs it was waiting on did not survive. Unfinished jobs resume (returns
        their pks); drops that never became jobs become theirs, and finished drop-folder jobs
        without results get them (``reconcile_drops``, with the same claim as the queue).
        First, records an older version saved get the lists and counters added since
        (``gantry.store.backfill``): unfinished jobs must hold their slots before they end."""
        from gantry.pipeline.dropbox import reconcile_drops
        from gantry.store.backfill import backfill

        self.backfilled = backfill(self.ctx.store.table)
        if self.backfilled:
            logger.info("backfilled %s", self.backfilled)
        from gantry.pipeline.provision import start_job
        from gantry.pipeline.wiring import validate_inputs_message

        jobs = self.ctx.store.jobs
        resumed = []
        for job in list(jobs.iter_active_modified_before(timeutil.iso())):
            if job.status is JobStatus.VALIDATING_INPUTS:
                self.ctx.clients.sqs.send_message(
                    QueueUrl=self.settings.uploads_queue_url,
                    MessageBody=validate_inputs_message(job.pk),
                )
            elif (
                job.status in (JobStatus.PENDING, JobStatus.RETRY)
                or jobs.requeue(job.pk, attempt=job.attempt) is not None
            ):
                start_job(self.ctx, job.pk)
            resumed.append(job.pk)
        # Before the queues are read: no handler of this process holds a claim yet, and those
        # of the previous one are gone.
        self.reconciled = reconcile_drops(self.ctx, orphaned=True)
        self.resumed_imports = self._resume_imports()
        # Archive runs still making jobs (or waiting for a slot): their page message is gone.
        from gantry.pipeline.archive_runs import resume_waiting

        resume_waiting(self.ctx, stale_before=timeutil.iso())
        return resumed

    def _resume_imports(self) -> list[str]:
        """Image imports the previous process queued or started: their messages are gone."""
        from gantry.algorithms import ImportStatus
        from gantry.pipeline.wiring import import_image_message

        unfinished = (ImportStatus.QUEUED, ImportStatus.STARTED, ImportStatus.RE_QUEUED)
        resumed: list[str] = []
        offset = 0
        while True:
            algorithms, count = self.ctx.store.algorithms.page_all(offset=offset, limit=100)
            for algorithm in algorithms:
                for image in self.ctx.store.algorithms.images_of(algorithm.pk):
                    if image.user_upload and image.import_status in unfinished:
                        self.ctx.clients.sqs.send_message(
                            QueueUrl=self.settings.uploads_queue_url,
                            MessageBody=import_image_message(image.pk),
                        )
                        resumed.append(image.pk)
            offset += len(algorithms)
            if not algorithms or offset >= count:
                return resumed

    # --- API ------------------------------------------------------------------------------

    def _serve_api(self) -> None:
        from gantry.local.gateway import ApiPool, gateway_app

        aws = self.endpoint.app if self.endpoint is not None else None
        signer = self.ctx.clients.presign_credentials
        self.gateway.start(gateway_app(ApiPool(self.ctx), aws, signer=signer))

    @property
    def api_url(self) -> str:
        if self.gateway is None:
            raise RuntimeError("the stack was started without the HTTPS API")
        return str(self.gateway.api_url)

    # --- event delivery -------------------------------------------------------------------

    def _on_compute_event(self, event: dict[str, Any]) -> None:
        from lambdas.on_job_event import metrics, process

        if self._stopping:
            return  # jobs stopped by a shutdown resume on the next start (``recover``)
        try:
            process(self.ctx, event)
        except Exception:
            logger.exception("callback failed for %s", event.get("detail", {}).get("jobName"))
        finally:
            # On Lambda the handler flushes these to CloudWatch; here they have nowhere to go
            # and Powertools would print them to stdout every 100 jobs.
            metrics.clear_metrics()

    def _dispatch(self) -> None:
        # The queue handlers import Powertools' batch utility on their first batch, the API its
        # event handler on its first request. The two share modules; when two threads import
        # them at once, Python breaks the lock cycle by handing one thread a module that is
        # still initialising, and that import fails (ImportError: partially initialized
        # module). Imported here, before any poller starts.
        import aws_lambda_powertools.event_handler
        import aws_lambda_powertools.utilities.batch  # noqa: F401

        from gantry.pipeline import wiring
        from lambdas import on_archive_run, on_dropbox, on_upload

        self.subscribe(
            resources.DEFAULT_UPLOADS_QUEUE, lambda event: on_upload.process(self.ctx, event)
        )
        self.subscribe(
            resources.DEFAULT_DROPBOX_QUEUE, lambda event: on_dropbox.process(self.ctx, event)
        )
        # As on AWS, a page's jobs are provisioned from the uploads queue, not by the handler
        # that makes a hundred of them.
        runs_ctx = dataclasses.replace(self.ctx, job_listeners=[wiring.on_job_created_queued])
        self.subscribe(
            resources.DEFAULT_ARCHIVE_RUNS_QUEUE,
            lambda event: on_archive_run.process(runs_ctx, event),
        )

    def subscribe(self, queue: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Feed the SQS ``queue`` to ``handler`` (an SQS-batch Lambda handler) in a thread."""
        thread = threading.Thread(
            target=self._poll, args=(self.queues[queue], handler), daemon=True, name=f"sqs-{queue}"
        )
        thread.start()
        self._threads.append(thread)

    def _poll(self, queue_url: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        sqs = self.ctx.clients.sqs
        while not self._stop.is_set():
            try:
                messages = sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
                ).get("Messages", [])
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("receiving from %s failed", queue_url)
                self._stop.wait(1)
                continue
            if not messages:
                continue
            event = {"Records": [_sqs_record(m, queue_url) for m in messages]}
            try:
                response = handler(event) or {}
            except Exception:
                logger.exception("handler failed on %s messages", len(messages))
                continue  # the messages come back after their visibility timeout
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            for message in messages:
                if message["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def sweep(self) -> None:
        from gantry.pipeline.sweeper import sweep

        # Locally the sweep is the only other path for a drop: a minute is long enough for
        # the queue to have handled a drop first.
        sweep(self.ctx, drop_settle_seconds=SWEEP_EVERY_SECONDS)

    def _every(self, seconds: float, action: Callable[[], None], name: str) -> None:
        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    action()
                except Exception:
                    logger.exception("%s failed", name)

        thread = threading.Thread(target=loop, daemon=True, name=f"gantry-{name}")
        thread.start()
        self._threads.append(thread)

    # --- views ----------------------------------------------------------------------------

    def recent_jobs(self, limit: int = 20) -> list[Job]:
        """The newest jobs of every user (a scan: fine for a local table)."""
        from boto3.dynamodb.conditions import Attr

        from gantry.store.keys import job
        from gantry.store.table import MAIN_SK

        table = self.ctx.clients.dynamodb_resource.Table(self.settings.table_name)
        condition = Attr(resources.PARTITION_KEY).begins_with(job("")) & Attr(
            resources.SORT_KEY
        ).eq(MAIN_SK)
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"FilterExpression": condition}
        while True:
            page = table.scan(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        jobs = [Job.model_validate(json.loads(item["doc"])) for item in items]
        return sorted(jobs, key=lambda j: j.created, reverse=True)[:limit]

    # --- shutdown -------------------------------------------------------------------------

    def stop(self, *, drain: bool = True) -> None:
        """Stop; ``drain`` lets running jobs finish first, otherwise they are stopped and
        resume (as a new attempt) on the next start with the same state directory."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        backend = self.ctx.compute_backend
        if not drain:
            self._stopping = True
        if backend is not None and hasattr(backend, "shutdown"):
            backend.shutdown(wait=drain)
        if self.gateway is not None:
            self.gateway.stop()
        if self.endpoint is not None:
            self.endpoint.stop()
        self._exits.close()


def _preload_imaging() -> None:
    """Import SimpleITK in the background: the first uploaded image's check would otherwise
    wait for it (about 1 s on a busy machine, mostly reading its 260 MB library from disk).
    The stack is one long-lived process; a Lambda's cold path is not concerned."""

    def load() -> None:
        from gantry.sitk_loader import ensure_simpleitk

        try:
            ensure_simpleitk()
            import SimpleITK  # noqa: F401
        except Exception as error:  # the first image check reports it, as it always has
            logger.debug("SimpleITK not preloaded: %s", error)

    threading.Thread(target=load, daemon=True, name="gantry-preload").start()


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _sqs_record(message: dict[str, Any], queue_url: str) -> dict[str, Any]:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:000000000000:{queue_url.rsplit('/', 1)[-1]}",
        "awsRegion": "us-east-1",
    }
