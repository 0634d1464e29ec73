"""File and JSON-as-file inputs: extension and content checks, server-side copies, inline JSON;
and the upload queue's handler."""

from __future__ import annotations

import json

import pytest

from gantry.job_states import JobStatus
from gantry.pipeline.inputs import validate_pending_inputs
from gantry.services.jobs import JobInput
from lambdas.on_upload import process
from tests.conftest import sqs_event
from tests.integration.test_inputs_support import (
    RecordingCompute,
    make_algorithm,
    make_socket,
    new_job,
    put_upload,
    read_key,
)

PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
ZIP_EMPTY = b"PK\x05\x06" + b"\x00" * 18


@pytest.fixture
def setup(ctx):
    ctx.compute_backend = RecordingCompute()
    make_socket(ctx, "Report", "PDF", "report.pdf")
    make_socket(ctx, "Table", "CSV", "table.csv")
    make_socket(ctx, "Archive", "ZIP", "archive.zip")
    make_socket(ctx, "Tree", "NEWCK", "tree.newick")
    make_socket(ctx, "Seed", "POIN", "seed.json")  # kept in the database
    make_socket(ctx, "Landmarks", "MPOI", "landmarks.json")  # large: kept as a file
    make_socket(ctx, "Result", "JSON", "results.json")
    algorithms = {
        slug: make_algorithm(ctx, f"Uses {slug}", [slug], ["result"])
        for slug in ("report", "table", "archive", "tree", "seed", "landmarks")
    }
    return ctx, algorithms


def run(ctx, algorithm, slug: str, filename: str, body: bytes):
    upload = put_upload(ctx, filename, body)
    job = new_job(ctx, algorithm, [JobInput(interface=slug, user_upload=upload.pk)])
    assert job.status is JobStatus.VALIDATING_INPUTS
    validate_pending_inputs(ctx, job.pk)
    return ctx.store.jobs.get(job.pk)


@pytest.mark.parametrize(
    ("slug", "filename", "body"),
    [
        ("report", "report.pdf", PDF),
        ("table", "table.csv", "a,b\n1,é\n".encode()),
        ("archive", "bundle.zip", ZIP_EMPTY),
        ("tree", "tree.nwk", b"((A,B),C);\n"),
    ],
)
def test_valid_file_is_copied(setup, slug, filename, body) -> None:
    ctx, algorithms = setup
    done = run(ctx, algorithms[slug], slug, filename, body)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    value = done.inputs[0]
    assert value.pending_upload is None
    assert value.file == f"values/{done.pk}/{value.pk}/{filename}"
    assert read_key(ctx, value.file) == body


@pytest.mark.parametrize(
    ("slug", "filename", "body", "message"),
    [
        ("report", "report.pdf", b"<html>not a pdf</html>", "it does not start with %PDF"),
        ("archive", "bundle.zip", b"\x1f\x8b\x08 gzip", "it is not a ZIP archive"),
        ("table", "table.csv", b"a,b\n\xff\xfe\n", "it is not UTF-8 text"),
        ("table", "table.csv", b"a,b\n\x00\x01", "it is binary"),
        ("tree", "tree.nwk", b"((A,B),C)\n", "ends with ';'"),
        ("report", "report.pdf", b"", "is empty"),
    ],
)
def test_wrong_content_fails_the_job(setup, slug, filename, body, message) -> None:
    ctx, algorithms = setup
    done = run(ctx, algorithms[slug], slug, filename, body)
    assert done.status is JobStatus.FAILURE
    assert done.error_message.startswith(f"Input '{slug}': the file '{filename}'")
    assert message in done.error_message
    assert message in done.detailed_error_message[slug]
    assert ctx.compute.submitted == []


def test_json_file_kept_in_database_becomes_inline_value(setup) -> None:
    ctx, algorithms = setup
    point = {"type": "Point", "point": [1.0, 2.0, 3.0], "version": {"major": 1, "minor": 0}}
    done = run(ctx, algorithms["seed"], "seed", "seed.json", json.dumps(point).encode())
    assert done.status is JobStatus.PROVISIONED, done.error_message
    assert done.inputs[0].value == point and done.inputs[0].file is None


def test_large_json_kind_is_kept_as_file(setup) -> None:
    ctx, algorithms = setup
    points = {
        "type": "Multiple points",
        "points": [{"point": [i, i, i]} for i in range(100)],
        "version": {"major": 1, "minor": 0},
    }
    body = json.dumps(points).encode()
    done = run(ctx, algorithms["landmarks"], "landmarks", "points.json", body)
    assert done.status is JobStatus.PROVISIONED, done.error_message
    value = done.inputs[0]
    assert value.value is None and read_key(ctx, value.file) == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"type": "Point", "point": [NaN, 1, 2], "version": {"major": 1, "minor": 0}}',
            "NaN is not allowed",
        ),
        (b"{not json", "is not valid JSON"),
        (b'{"type": "Point", "point": [1, 2]}', "does not match the interface"),
    ],
)
def test_invalid_json_file_fails_the_job(setup, body, message) -> None:
    ctx, algorithms = setup
    done = run(ctx, algorithms["seed"], "seed", "seed.json", body)
    assert done.status is JobStatus.FAILURE
    assert done.error_message.startswith("Input 'seed': the file 'seed.json'")
    assert message in done.error_message


def test_upload_handler_reports_only_the_bad_record(setup) -> None:
    ctx, algorithms = setup
    good = put_upload(ctx, "report.pdf", PDF)
    bad = put_upload(ctx, "fake.pdf", b"nope")
    job_ok = new_job(ctx, algorithms["report"], [JobInput(interface="report", user_upload=good.pk)])
    job_bad = new_job(ctx, algorithms["report"], [JobInput(interface="report", user_upload=bad.pk)])
    # The upload's S3 notification (moto's shape: key form-encoded), with a stale size.
    ctx.store.uploads.update(good.pk, lambda u: u.model_copy(update={"size": None}))
    s3_note = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:CompleteMultipartUpload",
                "s3": {
                    "bucket": {"name": ctx.settings.bucket_name},
                    "object": {"key": good.key.replace("/", "%2F"), "size": len(PDF)},
                },
            }
        ]
    }
    response = process(
        ctx,
        sqs_event(
            [
                json.dumps({"gantry": "validate-inputs", "job": job_ok.pk}),
                json.dumps({"gantry": "validate-inputs", "job": job_bad.pk}),
                json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}),
                json.dumps(s3_note),
                "not json at all",
            ]
        ),
    )
    # The user's bad PDF is handled (job failed); only the unreadable message is retried.
    assert response == {"batchItemFailures": [{"itemIdentifier": "m4"}]}
    assert ctx.store.jobs.get(job_ok.pk).status is JobStatus.PROVISIONED
    assert ctx.store.jobs.get(job_bad.pk).status is JobStatus.FAILURE
    assert ctx.store.uploads.get(good.pk).size == len(PDF)
