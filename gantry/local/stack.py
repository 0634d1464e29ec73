"""The embedded local stack: moto's server as the AWS endpoint, the same handlers as AWS.

Resources are created from gantry.resources / gantry.provision (the CDK stacks read the same
definitions). Events are delivered like on AWS: S3 notifications and Gantry job events reach
SQS queues that a dispatcher thread feeds to the handlers; the local compute backend's
Batch-shaped state changes go straight into the callback handler.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gantry import resources
from gantry.context import Context
from gantry.provision import ensure_data
from gantry.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class LocalStack:
    settings: Settings
    ctx: Context
    server: Any = None
    queues: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(
        cls, settings: Settings | None = None, *, port: int = 0, **backend_options: Any
    ) -> LocalStack:
        from moto.server import ThreadedMotoServer

        # The embedded endpoint accepts any credentials; boto3 insists on having some.
        for name, value in (("AWS_ACCESS_KEY_ID", "local"), ("AWS_SECRET_ACCESS_KEY", "local")):
            os.environ.setdefault(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        host, real_port = server.get_host_and_port()
        base = settings or Settings()
        settings = base.model_copy(
            update={
                "endpoint_url": f"http://{host}:{real_port}",
                "compute_backend": "local",
            }
        )
        stack = cls(settings=settings, ctx=Context.create(settings), server=server)
        stack._provision(backend_options)
        return stack

    # --- resources ------------------------------------------------------------------------

    def _provision(self, backend_options: dict[str, Any]) -> None:
        from gantry.compute.local import LocalBackend
        from gantry.pipeline import wiring

        clients = self.ctx.clients
        ensure_data(clients, self.settings)
        for name in (resources.DEFAULT_UPLOADS_QUEUE, resources.DEFAULT_JOB_EVENTS_QUEUE):
            self.queues[name] = clients.sqs.create_queue(QueueName=name)["QueueUrl"]
        self.settings = self.settings.model_copy(
            update={"uploads_queue_url": self.queues[resources.DEFAULT_UPLOADS_QUEUE]}
        )
        self.ctx.settings = self.settings
        self._route_job_events()
        self.ctx.compute_backend = LocalBackend(
            self.settings, on_event=self._on_compute_event, **backend_options
        )
        wiring.install(self.ctx)

    def _route_job_events(self) -> None:
        events = self.ctx.clients.events
        with contextlib.suppress(events.exceptions.ResourceAlreadyExistsException):
            events.create_event_bus(Name=self.settings.event_bus_name)
        queue_url = self.queues[resources.DEFAULT_JOB_EVENTS_QUEUE]
        arn = self.ctx.clients.sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        events.put_rule(
            Name="gantry-job-ended",
            EventBusName=self.settings.event_bus_name,
            EventPattern=json.dumps(
                {
                    "source": [resources.EVENT_SOURCE],
                    "detail-type": [
                        resources.DETAIL_TYPE_JOB_SUCCEEDED,
                        resources.DETAIL_TYPE_JOB_FAILED,
                    ],
                }
            ),
        )
        events.put_targets(
            Rule="gantry-job-ended",
            EventBusName=self.settings.event_bus_name,
            Targets=[{"Id": "job-events", "Arn": arn}],
        )

    # --- event delivery -------------------------------------------------------------------

    def _on_compute_event(self, event: dict[str, Any]) -> None:
        from lambdas.on_job_event import process

        try:
            process(self.ctx, event)
        except Exception:
            logger.exception("callback failed for %s", event.get("detail", {}).get("jobName"))

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
            messages = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
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

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        backend = self.ctx.compute_backend
        if backend is not None and hasattr(backend, "shutdown"):
            backend.shutdown(wait=True)
        if self.server is not None:
            self.server.stop()


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
