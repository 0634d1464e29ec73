"""The local stack's own parts: the HTTPS gateway, DynamoDB semantics of the embedded endpoint,
and the API behind it."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from werkzeug.test import EnvironBuilder

from gantry.algorithms import AlgorithmFields, AlgorithmImageFields, SocketSet
from gantry.interfaces import InterfaceFields
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.local.gateway import MAX_BODY_BYTES, ApiPool, gateway_app, proxy_event_from_environ
from gantry.local.stack import LocalStack
from gantry.services.jobs import JobCreate, JobInput, create_job
from gantry.settings import Settings
from gantry.store.table import ConditionFailed
from gantry.urls import Urls
from tests.waits import WAIT_SECONDS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "algorithms"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    name = f"gantry-local-{uuid.uuid4().hex[:8]}"
    local = LocalStack.start(
        Settings(table_name=name, bucket_name=name),
        state_dir=tmp_path_factory.mktemp("state"),
        serve_api=True,
        sweep_every=None,
    )
    yield local
    local.stop()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(
        verify=str(stack.state_dir / "tls" / "ca.pem"), timeout=WAIT_SECONDS
    ) as client:
        yield client


@pytest.fixture(scope="module")
def token(stack):
    return stack.ctx.store.users.create_token(f"user-{uuid.uuid4().hex[:6]}")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"BEARER {token}"}


# --- the gateway ---------------------------------------------------------------------------


def test_requests_become_api_gateway_proxy_events():
    environ = EnvironBuilder(
        method="POST",
        path="/api/v1/algorithms/jobs/",
        query_string="status=Failed&status=Succeeded&limit=5",
        headers={"Authorization": "Bearer t", "Host": "127.0.0.1:8443"},
        data=b"\x89PNG\x00binary",
        content_type="application/octet-stream",
    ).get_environ()
    event = proxy_event_from_environ(environ, b"\x89PNG\x00binary")
    assert event["httpMethod"] == "POST"
    assert event["path"] == "/api/v1/algorithms/jobs/"
    assert event["pathParameters"] == {"proxy": "algorithms/jobs/"}
    assert event["multiValueQueryStringParameters"]["status"] == ["Failed", "Succeeded"]
    assert event["queryStringParameters"]["limit"] == "5"
    assert event["headers"]["Authorization"] == "Bearer t"
    assert event["isBase64Encoded"] is True  # binary bodies travel base64, as on API Gateway


def test_the_api_answers_over_https_with_gcapi_exact_content_type(stack, http, token):
    response = http.get(stack.api_url + "gcapi/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert http.get(stack.api_url + "algorithms/").status_code == 401
    listed = http.get(stack.api_url + "algorithms/", headers=auth(token))
    assert listed.status_code == 200 and listed.json()["count"] == 0


def test_urls_the_api_hands_out_are_on_the_host_the_client_used(stack, http, token):
    created = http.post(
        stack.api_url + "uploads/", json={"filename": "case.mha"}, headers=auth(token)
    ).json()
    assert created["api_url"].startswith(stack.api_url)
    localhost = stack.api_url.replace("127.0.0.1", "localhost")
    again = http.get(localhost + f"uploads/{created['pk']}/", headers=auth(token)).json()
    assert again["api_url"].startswith(localhost)


def test_presigned_upload_and_download_urls_work_on_the_api_host(stack, http, token):
    upload = http.post(
        stack.api_url + "uploads/", json={"filename": "notes.txt"}, headers=auth(token)
    ).json()
    base = f"{stack.api_url}uploads/{upload['pk']}/{upload['s3_upload_id']}/"
    urls = http.patch(
        base + "generate-presigned-urls/", json={"part_numbers": [1]}, headers=auth(token)
    ).json()["presigned_urls"]
    host = httpx.URL(stack.api_url).netloc
    assert httpx.URL(urls["1"]).netloc == host and urls["1"].startswith("https://")
    put = http.put(urls["1"], content=b"hello over the gateway")
    assert put.status_code == 200
    done = http.patch(
        base + "complete-multipart-upload/",
        json={"parts": [{"ETag": put.headers["ETag"], "PartNumber": 1}]},
        headers=auth(token),
    )
    assert done.status_code == 200, done.text
    stored = stack.ctx.clients.s3.get_object(
        Bucket=stack.settings.bucket_name, Key=stack.ctx.store.uploads.get(upload["pk"]).key
    )
    assert stored["Body"].read() == b"hello over the gateway"


def test_an_oversized_body_is_refused_before_the_handler(stack, http, token):
    response = http.post(
        stack.api_url + "uploads/",
        content=b"x" * (MAX_BODY_BYTES + 1),
        headers={**auth(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_unknown_api_paths_get_the_api_404(stack, http, token):
    response = http.get(stack.api_url + "no-such-thing/", headers=auth(token))
    assert response.status_code == 404


# --- DynamoDB semantics ------------------------------------------------------------------------


def test_racing_conditional_writes_never_lose_an_update(stack):
    """The store's compare-and-set relies on DynamoDB rejecting a stale conditional write;
    the embedded endpoint serialises DynamoDB requests to keep that true."""
    table = stack.ctx.store.table
    pk = f"COUNTER#{uuid.uuid4().hex}"
    table.put(table.item(pk, "A", {"n": 0}, version=0))
    done = []

    def bump() -> None:
        for _ in range(20):
            try:
                table.update_doc(pk, lambda cur: ({"n": cur.doc["n"] + 1}, {}))
                done.append(1)
            except ConditionFailed:
                pass

    threads = [threading.Thread(target=bump) for _ in range(8)]
    # Switch threads as often as possible, so a check and its write interleave if they can.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(done) > 0
    assert table.get(pk).doc["n"] == len(done)


def _json_io_algorithm(stack: LocalStack):
    store = stack.ctx.store
    existing = store.sockets.get_many_by_slug(
        ["threshold", "bounding-box", "score", "shifted-bounding-box"]
    )
    for title, kind in (
        ("threshold", "Float"),
        ("bounding-box", "2D bounding box"),
        ("score", "Float"),
        ("shifted-bounding-box", "2D bounding box"),
    ):
        if title not in existing:
            store.sockets.create(
                InterfaceFields(title=title, kind=kind, relative_path=f"{title}.json"),
                creator="alice",
            )
    algorithm = store.algorithms.create(
        AlgorithmFields(
            title=f"json-io {uuid.uuid4().hex[:6]}",
            interfaces=[
                SocketSet(
                    inputs=["threshold", "bounding-box"], outputs=["score", "shifted-bounding-box"]
                )
            ],
        ),
        creator="alice",
    )
    store.algorithms.create_image(
        algorithm,
        AlgorithmImageFields(
            image="local",
            command=[sys.executable, "main.py"],
            workdir=str(EXAMPLES / "json-io"),
        ),
        creator="alice",
    )
    return algorithm


def _wait_until_finished(stack: LocalStack, pk: str, timeout: float = WAIT_SECONDS) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.ctx.store.jobs.get(pk)
        if job.status.is_terminal:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {pk} did not finish")


def test_recovery_gives_interrupted_jobs_a_new_attempt(stack):
    """A job that was running when the stack stopped runs again as a new attempt on start."""
    user = stack.ctx.store.users.ensure_user("alice")
    algorithm = _json_io_algorithm(stack)
    box = {
        "type": "2D bounding box",
        "version": {"major": 1, "minor": 0},
        "corners": [[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]],
    }
    body = JobCreate(
        algorithm=algorithm.pk,
        inputs=[
            JobInput(interface="threshold", value=2.5),
            JobInput(interface="bounding-box", value=box),
        ],
    )
    job = create_job(stack.ctx, user, body, Urls("https://api.gantry.test/api/v1/"))
    first = _wait_until_finished(stack, job.pk)
    assert first.status is JobStatus.SUCCESS
    # What a stop in the middle of the run leaves behind: Executing, no outputs yet.
    stack.ctx.store.jobs.update(
        job.pk,
        lambda j: j.model_copy(
            update={"status": JobStatus.EXECUTING, "outputs": [], "completed_at": None}
        ),
    )
    assert job.pk in stack.recover()
    again = _wait_until_finished(stack, job.pk)
    assert again.status is JobStatus.SUCCESS, again.error_message
    assert again.attempt == first.attempt + 1
    assert {v.socket for v in again.outputs} == {"score", "shifted-bounding-box"}


def test_queues_allow_exactly_the_bucket_and_the_job_event_rules_to_send(stack):
    """A real account refuses bucket notifications to a queue whose policy does not allow
    them; `gantry local up --endpoint-url aws` provisions the same queues there."""
    from gantry import resources

    sqs = stack.ctx.clients.sqs
    bucket_arn = f"arn:aws:s3:::{stack.settings.bucket_name}"
    allowed = {}
    for name, url in stack.queues.items():
        policy = json.loads(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"][
                "Policy"
            ]
        )
        allowed[name] = {
            (s["Principal"]["Service"], s["Condition"]["ArnEquals"]["aws:SourceArn"])
            for s in policy["Statement"]
        }
    rule_arn, runs_rule_arn = (
        stack.ctx.clients.events.describe_rule(
            Name=name, EventBusName=stack.settings.event_bus_name
        )["Arn"]
        for name in (resources.DROPBOX_JOBS_RULE, resources.ARCHIVE_RUN_JOBS_RULE)
    )
    assert allowed == {
        resources.DEFAULT_UPLOADS_QUEUE: {("s3.amazonaws.com", bucket_arn)},
        resources.DEFAULT_DROPBOX_QUEUE: {
            ("s3.amazonaws.com", bucket_arn),
            ("events.amazonaws.com", rule_arn),
        },
        resources.DEFAULT_ARCHIVE_RUNS_QUEUE: {("events.amazonaws.com", runs_rule_arn)},
    }


def test_recovery_resumes_an_interrupted_image_import(stack, tmp_path):
    """An import that was Started when the stack stopped is queued again on start and ends."""
    from gantry.algorithms import ImportStatus
    from gantry.services import uploads
    from gantry.uploads import CompletedPart, CompleteUpload, UploadCreate
    from tests.image_builder import ImageSpec, directory, file, write_archive

    ctx = stack.ctx
    user = ctx.store.users.ensure_user("alice")
    algorithm = _json_io_algorithm(stack)
    layer = [directory("bin"), file("bin/algorithm", b"x", mode=0o755)]
    archive = write_archive(
        tmp_path / "image.tar",
        ImageSpec(layers=[layer], entrypoint=["/bin/algorithm"], user="1000"),
    )
    upload = uploads.create(ctx, user, UploadCreate(filename="image.tar"))
    part = ctx.clients.s3.upload_part(
        Bucket=ctx.settings.bucket_name,
        Key=upload.key,
        UploadId=upload.s3_upload_id,
        PartNumber=1,
        Body=archive.read_bytes(),
    )
    upload = uploads.complete(
        ctx, upload, CompleteUpload(parts=[CompletedPart(ETag=part["ETag"], PartNumber=1)])
    )
    # What a stop in the middle of the import leaves behind: Started, its message gone.
    image = ctx.store.algorithms.create_image(
        algorithm,
        None,
        creator="alice",
        image="upload",
        user_upload=upload.pk,
        import_status=ImportStatus.STARTED,
        is_desired_version=False,
    )

    stack.recover()

    assert image.pk in stack.resumed_imports
    deadline = time.monotonic() + WAIT_SECONDS
    ended = (ImportStatus.COMPLETED, ImportStatus.FAILED)
    while (found := ctx.store.algorithms.get_image(image.pk)).import_status not in ended:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    # This module's stack lives in a folder only its owner may enter, so the image's USER
    # cannot reach the store: the import ends saying so (it completes where it can).
    assert found.import_status is ImportStatus.COMPLETED or "cannot" in found.status_message
    assert found.sha256 is not None and found.is_manifest_valid is True


def test_recovery_backfills_what_an_older_version_saved(stack):
    """A start brings records of an older version up to date before resuming work: here a
    finished job stored without its algorithm's and everyone's listings."""
    from gantry.store import keys
    from tests.integration.test_backfill import _old_job

    algorithm = _json_io_algorithm(stack)
    image = stack.ctx.store.algorithms.desired_image(algorithm.pk)
    job = _old_job(stack.ctx, algorithm.pk, image.pk, JobStatus.SUCCESS)
    shared = stack.ctx.store.jobs.all_of(keys.jobs_of_algorithm_all(algorithm.pk), shared=True)
    assert shared == []
    stack.recover()
    assert stack.backfilled.get("job listings", 0) >= 2
    shared = stack.ctx.store.jobs.all_of(keys.jobs_of_algorithm_all(algorithm.pk), shared=True)
    assert [j.pk for j in shared] == [job.pk]


def test_the_gateway_drops_headers_meant_for_the_local_runner_only():
    seen: dict[str, str] = {}

    def aws(environ, start_response):
        seen.update({k: v for k, v in environ.items() if k.startswith("HTTP_")})
        start_response("200 OK", [])
        return [b""]

    app = gateway_app(ApiPool(None), aws, signer=lambda: ("local", "local"))
    # A presigned URL of the stack's, as the API hands out (only those pass the gateway).
    url = boto3.client(
        "s3",
        endpoint_url="https://127.0.0.1:8443",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    ).generate_presigned_url("put_object", Params={"Bucket": "bucket", "Key": "key"})
    query = url.partition("?")[2]
    environ = {
        "PATH_INFO": "/bucket/key",
        "RAW_URI": "/bucket/key?" + query,
        "QUERY_STRING": query,
        "HTTP_HOST": "127.0.0.1:8443",
        "REQUEST_METHOD": "PUT",
        "HTTP_X_GANTRY_LOCAL_FILE": "/etc/shadow",
        "HTTP_X_AMZ_META_NAME": "kept",
    }
    app(environ, lambda *a: None)
    assert "HTTP_X_GANTRY_LOCAL_FILE" not in seen
    assert seen["HTTP_X_AMZ_META_NAME"] == "kept"
