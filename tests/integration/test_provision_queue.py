"""Creating a job through the API answers at once: the uploads queue's handler provisions.

Provisioning copies every input (a study may be gigabytes) and submits to the compute
service, which must not happen within API Gateway's 29 s.
"""

from __future__ import annotations

import json

from gantry.job_states import JobStatus
from gantry.pipeline.wiring import install
from lambdas.api.app import create_app
from lambdas.on_upload import process
from tests.conftest import ApiClient, sqs_event
from tests.integration.test_inputs_support import RecordingCompute, make_algorithm, make_socket


def test_the_api_queues_a_ready_job_and_on_upload_provisions_it(ctx, alice_token) -> None:
    queue_url = ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"uploads_queue_url": queue_url})
    compute = ctx.compute_backend = RecordingCompute()
    make_socket(ctx, "Threshold", "Float", "threshold.json")
    make_socket(ctx, "Score", "Float", "score.json")
    algorithm = make_algorithm(ctx, "Scorer", ["threshold"], ["score"])
    # As the API Lambda wires itself (lambdas.api.app.handler).
    api = ApiClient(create_app(install(ctx, provision_on_queue=True)), alice_token)

    status, created, _ = api.post(
        "algorithms/jobs/",
        {"algorithm": algorithm.pk, "inputs": [{"interface": "threshold", "value": 2.5}]},
    )

    assert status == 201, created
    assert created["status"] == "Queued"
    assert compute.submitted == []  # nothing copied or submitted on the request's path
    messages = ctx.clients.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
    bodies = [m["Body"] for m in messages["Messages"]]
    # The wire shape deployed queues hold.
    assert [json.loads(b) for b in bodies] == [{"gantry": "start-job", "job": created["pk"]}]

    # Delivered twice (at least once): provisioned once.
    assert process(ctx, sqs_event(bodies * 2))["batchItemFailures"] == []
    assert compute.submitted == [created["pk"]]
    assert ctx.store.jobs.get(created["pk"]).status is JobStatus.PROVISIONED
