"""The S3 drop folder: S3 notifications (from moto's bucket notifications) become exactly one
job per drop; finished jobs' EventBridge events (via moto's rule -> SQS) write the results."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gantry import resources, timeutil
from gantry.context import Context
from gantry.images import Image, ImageFile, ImageType
from gantry.job_states import JobStatus
from gantry.jobs import SocketValue
from gantry.pipeline import dropbox
from gantry.pipeline.inputs import validate_pending_inputs
from gantry.store import keys
from lambdas.on_dropbox import process
from tests.conftest import sqs_event
from tests.integration.test_inputs_support import (
    RecordingCompute,
    make_algorithm,
    make_socket,
    read_key,
)

OWNER = "dropbox"


@pytest.fixture
def settings():
    """Roomy limits: these tests start many drops at once (tests/integration/
    test_dropbox_limits.py: drops over the limits wait)."""
    from gantry.settings import Settings

    return Settings(
        table_name="gantry-test",
        bucket_name="gantry-test-data",
        region="us-east-1",
        api_base_url="https://api.gantry.test/api/v1/",
        compute_backend="local",
        max_active_jobs_per_user=1000,
        max_active_jobs_per_algorithm=1000,
        max_active_jobs=1000,
    )


@pytest.fixture
def drop(ctx):
    """The drop-folder queue fed by the bucket's notifications and the job-event rule."""
    ctx.compute_backend = RecordingCompute()
    sqs = ctx.clients.sqs
    queue_url = sqs.create_queue(QueueName=resources.DEFAULT_DROPBOX_QUEUE)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    ctx.clients.s3.put_bucket_notification_configuration(
        Bucket=ctx.settings.bucket_name,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [{"Name": "prefix", "Value": resources.PREFIX_DROPBOX}]
                        }
                    },
                }
            ]
        },
    )
    events = ctx.clients.events
    events.create_event_bus(Name=ctx.settings.event_bus_name)
    events.put_rule(
        Name="dropbox-jobs",
        EventBusName=ctx.settings.event_bus_name,
        EventPattern=json.dumps(
            {"source": [resources.EVENT_SOURCE], "detail": {"source": ["dropbox"]}}
        ),
    )
    events.put_targets(
        Rule="dropbox-jobs",
        EventBusName=ctx.settings.event_bus_name,
        Targets=[{"Id": "queue", "Arn": arn}],
    )
    make_socket(ctx, "CT Image", "IMG", "images/ct")
    make_socket(ctx, "Seed", "POIN", "seed.json")
    make_socket(ctx, "Result", "JSON", "results.json")
    make_socket(ctx, "Report", "PDF", "report.pdf")
    make_socket(ctx, "Heat Map", "HMAP", "images/heat-map")
    make_algorithm(ctx, "Segmenter", ["ct-image"], ["result", "report", "heat-map"], users=[OWNER])
    make_algorithm(ctx, "Seeded", ["ct-image", "seed"], ["result"], users=[OWNER])
    make_algorithm(ctx, "Private", ["ct-image"], ["result"])
    return ctx, queue_url


def drain(ctx, queue_url: str) -> list[str]:
    bodies: list[str] = []
    while True:
        messages = ctx.clients.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            ctx.clients.sqs.delete_message(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"]
            )


def deliver(ctx, bodies: list[str]) -> list[str]:
    """Hand the bodies to the handler in SQS batches of 10; the failed message ids."""
    failed: list[str] = []
    for start in range(0, len(bodies), 10):
        response = process(
            ctx, sqs_event(bodies[start : start + 10], queue="gantry-dropbox", first=start)
        )
        failed += [item["itemIdentifier"] for item in response["batchItemFailures"]]
    return failed


def put(ctx, key: str, body: bytes) -> None:
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=key, Body=body)


def result_json(ctx, path: str) -> dict:
    return json.loads(read_key(ctx, f"{resources.PREFIX_DROPBOX_RESULTS}{path}"))


def dropbox_jobs(ctx):
    jobs, count = ctx.store.jobs.page_for(OWNER, offset=0, limit=1000)
    assert count == len(jobs)
    return jobs


def mha_bytes(tmp_path: Path) -> bytes:
    image = sitk.GetImageFromArray(np.ones((3, 4, 5), dtype=np.uint8))
    sitk.WriteImage(image, str(tmp_path / "x.mha"))
    return (tmp_path / "x.mha").read_bytes()


DROPS = 40  # moto copies the whole table for each item of a transaction: time grows as n²


@pytest.mark.slow
def test_each_drop_gives_exactly_one_job(drop) -> None:
    ctx, queue_url = drop
    for i in range(DROPS):
        put(ctx, f"dropbox/segmenter/case-{i:03d}/scan {i}.mha", f"image {i}".encode())
    bodies = drain(ctx, queue_url)
    assert len(bodies) == DROPS + 1  # the s3:TestEvent and one notification per object
    doubled = bodies * 2  # at least once: every notification delivered twice
    random.Random(7).shuffle(doubled)

    assert deliver(ctx, doubled) == []

    jobs = dropbox_jobs(ctx)
    assert len(jobs) == DROPS
    refs = sorted(job.source_ref for job in jobs)
    assert refs == [f"segmenter/case-{i:03d}" for i in range(DROPS)]
    assert {job.source for job in jobs} == {"dropbox"}
    assert {job.status for job in jobs} == {JobStatus.VALIDATING_INPUTS}
    # Each job's upload is a copy of its own dropped file.
    job = next(j for j in jobs if j.source_ref == "segmenter/case-007")
    upload = ctx.store.uploads.get(job.inputs[0].pending_uploads[0])
    assert upload.filename == "scan 7.mha" and upload.creator == OWNER
    assert read_key(ctx, upload.key) == b"image 7"


def test_file_directly_under_the_algorithm_is_a_case(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/lung.nii.gz", b"data")
    assert deliver(ctx, drain(ctx, queue_url)) == []
    [job] = dropbox_jobs(ctx)
    assert job.source_ref == "segmenter/lung"


def test_unknown_algorithm_writes_error(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/no-such-algo/case-1/scan.mha", b"data")
    assert deliver(ctx, drain(ctx, queue_url)) == []
    error = result_json(ctx, "no-such-algo/case-1/error.json")
    assert error == {"reason": "Unknown algorithm 'no-such-algo'"}
    assert dropbox_jobs(ctx) == []


def test_algorithm_closed_to_the_drop_folder_writes_error(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/private/case-1/scan.mha", b"data")
    assert deliver(ctx, drain(ctx, queue_url)) == []
    assert "add the user 'dropbox'" in result_json(ctx, "private/case-1/error.json")["reason"]
    assert dropbox_jobs(ctx) == []


def test_wrong_file_type_writes_error(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-1/notes.txt", b"hello")
    assert deliver(ctx, drain(ctx, queue_url)) == []
    reason = result_json(ctx, "segmenter/case-1/error.json")["reason"]
    assert "'notes.txt' is not a valid Image file" in reason
    assert dropbox_jobs(ctx) == []


POINT = {"type": "Point", "point": [1, 2, 3], "version": {"major": 1, "minor": 0}}
MANIFEST = {"ct-image": "scan.mha", "seed": "seed.json"}


@pytest.mark.parametrize("manifest_first", [True, False])
def test_case_with_inputs_json_starts_once_complete(drop, manifest_first) -> None:
    ctx, queue_url = drop
    folder = "dropbox/seeded/patient-1/"
    files = [("scan.mha", b"image"), ("seed.json", json.dumps(POINT).encode())]
    manifest = ("inputs.json", json.dumps(MANIFEST).encode())
    order = [manifest, *files] if manifest_first else [*files, manifest]
    for name, body in order[:-1]:
        put(ctx, folder + name, body)
        assert deliver(ctx, drain(ctx, queue_url)) == []
        assert dropbox_jobs(ctx) == []  # not complete yet: no job, no error
    put(ctx, folder + order[-1][0], order[-1][1])
    last = drain(ctx, queue_url)
    assert deliver(ctx, last * 2) == []
    # Every event of the case again, in any order: still one job.
    [job] = dropbox_jobs(ctx)
    assert job.source_ref == "seeded/patient-1"
    assert sorted(v.socket for v in job.inputs) == ["ct-image", "seed"]
    seed = next(v for v in job.inputs if v.socket == "seed")
    assert ctx.store.uploads.get(seed.pending_upload).filename == "seed.json"


def test_case_missing_an_input_writes_error(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/seeded/p2/seed.json", json.dumps(POINT).encode())
    put(ctx, "dropbox/seeded/p2/inputs.json", json.dumps({"seed": "seed.json"}).encode())
    assert deliver(ctx, drain(ctx, queue_url)) == []
    reason = result_json(ctx, "seeded/p2/error.json")["reason"]
    assert "do not match any of this algorithm's interfaces" in reason
    assert dropbox_jobs(ctx) == []


def test_bad_inputs_json_writes_error(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/seeded/p3/inputs.json", b"{nope")
    assert deliver(ctx, drain(ctx, queue_url)) == []
    assert "inputs.json is not valid JSON" in result_json(ctx, "seeded/p3/error.json")["reason"]


def test_finished_job_writes_results(drop, tmp_path: Path) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-9/scan.mha", mha_bytes(tmp_path))
    assert deliver(ctx, drain(ctx, queue_url)) == []
    [job] = dropbox_jobs(ctx)
    validate_pending_inputs(ctx, job.pk)
    assert ctx.store.jobs.get(job.pk).status is JobStatus.PROVISIONED

    bucket = ctx.settings.bucket_name
    report_key = f"values/{job.pk}/101/report.pdf"
    put(ctx, report_key, b"%PDF-1.4 report")
    image_key = "values/images/out-image/heat.mha"
    put(ctx, image_key, b"heat map bytes")
    ctx.store.images.put(
        Image(
            pk="out-image",
            name="heat.mha",
            owner=OWNER,
            created=timeutil.iso(),
            files=[
                ImageFile(pk="f1", key=image_key, image_type=ImageType.MHD, filename="heat.mha")
            ],
        )
    )
    outputs = [
        SocketValue(pk=100, socket="result", value={"score": 0.9}),
        SocketValue(pk=101, socket="report", file=report_key),
        SocketValue(pk=102, socket="heat-map", image="out-image"),
    ]
    from gantry.pipeline.lifecycle import publish

    done = ctx.store.jobs.transition(
        job.pk,
        attempt=job.attempt,
        status=JobStatus.SUCCESS,
        changes={"outputs": outputs, "exec_duration": 12.5, "invoke_duration": 13.0},
    )
    publish(ctx, done)
    events = drain(ctx, queue_url)
    assert len(events) == 1
    assert deliver(ctx, events * 2) == []  # a repeated event rewrites the same results

    base = "segmenter/case-9/"
    assert result_json(ctx, base + "results.json") == {"score": 0.9}
    assert read_key(ctx, "dropbox-results/" + base + "report.pdf") == b"%PDF-1.4 report"
    assert read_key(ctx, "dropbox-results/" + base + "images/heat-map/heat.mha") == (
        b"heat map bytes"
    )
    summary = result_json(ctx, base + "job.json")
    assert summary["status"] == "Succeeded" and summary["job"] == job.pk
    assert summary["exec_duration"] == 12.5 and summary["error_message"] == ""
    assert sorted(o["socket"] for o in summary["outputs"]) == ["heat-map", "report", "result"]
    listed = ctx.clients.s3.list_objects_v2(Bucket=bucket, Prefix="dropbox-results/")
    assert "error.json" not in {o["Key"].rsplit("/", 1)[-1] for o in listed["Contents"]}


def test_unreadable_dropped_image_ends_in_error_json(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/bad-case/scan.mha", b"not an image")
    assert deliver(ctx, drain(ctx, queue_url)) == []
    [job] = dropbox_jobs(ctx)
    validate_pending_inputs(ctx, job.pk)  # fails the job and announces it
    assert deliver(ctx, drain(ctx, queue_url)) == []
    error = result_json(ctx, "segmenter/bad-case/error.json")
    assert "the file 'scan.mha' is not a readable image" in error["reason"]
    assert error["job"] == job.pk
    assert result_json(ctx, "segmenter/bad-case/job.json")["status"] == "Failed"


def test_events_of_other_jobs_are_ignored(drop) -> None:
    ctx, _ = drop
    event = {
        "source": "gantry",
        "detail-type": resources.DETAIL_TYPE_JOB_SUCCEEDED,
        "detail": {
            "job": "x",
            "status": "Succeeded",
            "source": "api",
            "source_ref": None,
            "outputs": [],
        },
    }
    assert deliver(ctx, [json.dumps(event)]) == []
    listed = ctx.clients.s3.list_objects_v2(
        Bucket=ctx.settings.bucket_name, Prefix="dropbox-results/"
    )
    assert listed.get("KeyCount", 0) == 0


def test_claim_is_exclusive_until_completed_or_expired(drop) -> None:
    ctx, _ = drop
    key = dropbox._claim_key("bucket/dropbox/a/b/c.mha#etag#seq")
    assert dropbox._claim(ctx, key, "identity") == (True, None)
    # A concurrent duplicate must not make a second job: it is retried later.
    with pytest.raises(dropbox.ClaimBusy):
        dropbox._claim(ctx, key, "identity")
    # A crashed handler's lease is taken over after it expires.
    ctx.store.table.set_attributes(key, {"lease_until": int(time.time()) - 1})
    assert dropbox._claim(ctx, key, "identity") == (True, None)
    dropbox._complete_claim(ctx, key, job_pk="job-1")
    assert dropbox._claim(ctx, key, "identity") == (False, "job-1")


def test_claim_with_a_recorded_job_is_not_made_again(drop) -> None:
    ctx, _ = drop
    key = dropbox._claim_key("another drop")
    assert dropbox._claim(ctx, key, "another drop") == (True, None)
    ctx.store.table.set_attributes(key, {"job_pk": "job-2"})  # made, then the handler stopped
    assert dropbox._claim(ctx, key, "another drop") == (False, "job-2")


def test_busy_duplicate_is_retried_not_dropped(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-b/scan.mha", b"data")
    bodies = drain(ctx, queue_url)  # the s3:TestEvent, then the object's notification
    position = next(i for i, b in enumerate(bodies) if "Records" in json.loads(b))
    [event] = dropbox.s3_object_events(json.loads(bodies[position]))
    head = ctx.clients.s3.head_object(Bucket=event.bucket, Key=event.key)
    identity = dropbox._object_identity(event.bucket, event.key, head)
    dropbox._claim(ctx, dropbox._claim_key(identity), identity)  # another handler holds it
    assert deliver(ctx, bodies) == [f"m{position}"]
    assert dropbox_jobs(ctx) == []


def test_a_handler_crashing_right_after_it_made_the_job_leaves_one_job(drop, monkeypatch) -> None:
    """The crash lands between storing the job and anything else (the pipeline has not heard
    of it, the claim does not name it); the event comes back after the lease ran out, and the
    handler taking over finds the job made and hands it to the pipeline."""
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-c/scan.mha", b"data")
    bodies = drain(ctx, queue_url)

    def crash(*args, **kwargs):
        raise RuntimeError("the handler died")

    with monkeypatch.context() as patched:
        patched.setattr(Context, "job_created", crash)
        assert len(deliver(ctx, bodies)) == 1  # the notification's record failed
    [made] = dropbox_jobs(ctx)

    claim = next(
        i
        for i in ctx.clients.dynamodb.scan(TableName=ctx.settings.table_name)["Items"]
        if i["PK"]["S"].startswith(keys.idempotency("dropbox#"))
    )
    ctx.store.table.set_attributes(claim["PK"]["S"], {"lease_until": int(time.time()) - 1})
    heard: list[str] = []
    ctx.job_listeners.append(lambda _ctx, job, _catalog: heard.append(job.pk))
    assert deliver(ctx, bodies) == []

    [job] = dropbox_jobs(ctx)
    assert job.pk == made.pk and job.source_ref == "segmenter/case-c"
    assert heard == [made.pk]  # the pipeline hears of the job after all
    assert dropbox._claim(ctx, claim["PK"]["S"], "") == (False, made.pk)


# --- reconciling sweep ----------------------------------------------------------------------


def test_a_drop_whose_notification_was_lost_becomes_one_job(drop) -> None:
    """One notification deleted from the queue, one moved to a dead-letter queue and one
    delivered late, after the sweep: each drop still ends with exactly one job."""
    ctx, queue_url = drop
    for case in ("lost", "dead-lettered", "late"):
        put(ctx, f"dropbox/segmenter/case-{case}/scan.mha", b"data")
    bodies = [b for b in drain(ctx, queue_url) if "Records" in json.loads(b)]
    assert len(bodies) == 3  # every notification taken off the queue, none handled
    dlq = ctx.clients.sqs.create_queue(QueueName="gantry-dropbox-dlq")["QueueUrl"]
    late = next(b for b in bodies if "case-late" in b)
    ctx.clients.sqs.send_message(QueueUrl=dlq, MessageBody=next(b for b in bodies if "dead" in b))

    swept = dropbox.reconcile_drops(ctx)
    assert len(swept.started) == 3
    assert deliver(ctx, [late]) == []  # the queue delivers one after all: no second job
    assert dropbox.reconcile_drops(ctx).started == []  # nor on the next sweep

    jobs = dropbox_jobs(ctx)
    assert sorted(j.source_ref for j in jobs) == [
        "segmenter/case-dead-lettered",
        "segmenter/case-late",
        "segmenter/case-lost",
    ]
    assert sorted(j.pk for j in jobs) == sorted(swept.started)


def test_the_aws_sweeper_turns_a_dead_lettered_drop_into_one_job(drop) -> None:
    """On AWS the scheduled sweeper does it: a notification that ended in the dead-letter
    queue still gives its drop one job, and redriving that message later makes no other."""
    from gantry.pipeline.sweeper import sweep

    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-dlq/scan.mha", b"data")
    [body] = [b for b in drain(ctx, queue_url) if "Records" in json.loads(b)]
    dlq = ctx.clients.sqs.create_queue(QueueName="gantry-dropbox-dlq")["QueueUrl"]
    ctx.clients.sqs.send_message(QueueUrl=dlq, MessageBody=body)

    report = sweep(ctx, drop_settle_seconds=0)
    [job] = dropbox_jobs(ctx)
    assert report.drops_started == [job.pk] and job.source_ref == "segmenter/case-dlq"
    [redriven] = drain(ctx, dlq)
    assert deliver(ctx, [redriven]) == []
    assert sweep(ctx, drop_settle_seconds=0).drops_started == []
    assert [j.pk for j in dropbox_jobs(ctx)] == [job.pk]


def test_the_sweep_leaves_young_drops_to_their_notification(drop) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-young/scan.mha", b"data")
    assert dropbox.reconcile_drops(ctx, settle_seconds=600).started == []
    assert deliver(ctx, drain(ctx, queue_url)) == []
    assert len(dropbox_jobs(ctx)) == 1
    assert dropbox.reconcile_drops(ctx).started == []  # the notification's job counts


def test_the_sweep_writes_results_whose_announcement_was_lost(drop, tmp_path: Path) -> None:
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-quiet/scan.mha", mha_bytes(tmp_path))
    assert deliver(ctx, drain(ctx, queue_url)) == []
    [job] = dropbox_jobs(ctx)
    outputs = [SocketValue(pk=100, socket="result", value={"score": 0.5})]
    ctx.store.jobs.transition(
        job.pk, attempt=job.attempt, status=JobStatus.SUCCESS, changes={"outputs": outputs}
    )  # and the "Gantry Job Succeeded" event never came

    swept = dropbox.reconcile_drops(ctx)
    assert swept.started == [] and swept.announced == [job.pk]
    assert result_json(ctx, "segmenter/case-quiet/results.json") == {"score": 0.5}
    assert result_json(ctx, "segmenter/case-quiet/job.json")["status"] == "Succeeded"
    assert dropbox.reconcile_drops(ctx).announced == []  # written once


def test_after_a_crash_the_sweep_takes_over_claims_left_in_progress(drop) -> None:
    """A handler claimed the drop and died before making the job; on the restart of the one
    machine nobody else can hold the claim, so the sweep does not wait for its lease."""
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-held/scan.mha", b"data")
    drain(ctx, queue_url)
    key = "dropbox/segmenter/case-held/scan.mha"
    head = ctx.clients.s3.head_object(Bucket=ctx.settings.bucket_name, Key=key)
    identity = dropbox._object_identity(ctx.settings.bucket_name, key, head)
    assert dropbox._claim(ctx, dropbox._claim_key(identity), identity) == (True, None)

    assert dropbox.reconcile_drops(ctx).busy == 1  # on AWS: wait for the lease
    swept = dropbox.reconcile_drops(ctx, orphaned=True)
    assert len(swept.started) == 1
    assert [j.source_ref for j in dropbox_jobs(ctx)] == ["segmenter/case-held"]


def test_a_claim_of_an_earlier_run_is_taken_over_by_any_later_handler(drop) -> None:
    """On one machine a claim taken before the stack started belongs to a run that crashed:
    the drops that waited for a slot (or a redelivered message) make the job at once instead
    of waiting for the claim's lease."""
    ctx, queue_url = drop
    put(ctx, "dropbox/segmenter/case-old/scan.mha", b"data")
    drain(ctx, queue_url)
    key = "dropbox/segmenter/case-old/scan.mha"
    head = ctx.clients.s3.head_object(Bucket=ctx.settings.bucket_name, Key=key)
    identity = dropbox._object_identity(ctx.settings.bucket_name, key, head)
    assert dropbox._claim(ctx, dropbox._claim_key(identity), identity) == (True, None)
    assert dropbox.reconcile_drops(ctx).busy == 1  # the holder may still be running

    ctx.claims_orphaned_before = int(time.time()) + 1  # the stack (re)started after the claim
    swept = dropbox.reconcile_drops(ctx)
    assert swept.busy == 0 and len(swept.started) == 1
    assert [j.source_ref for j in dropbox_jobs(ctx)] == ["segmenter/case-old"]
    assert dropbox.reconcile_drops(ctx).started == []  # one job, whoever asks again
