"""Whole jobs through the pipeline on the embedded local stack: API → provisioning → local
compute backend → real runner → callback → Succeeded/Failed, with the real example algorithms.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

from gantry import timeutil
from gantry.algorithms import AlgorithmFields, AlgorithmImageFields, SocketSet
from gantry.contract import new_signing_key
from gantry.interfaces import InterfaceFields
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.local.stack import LocalStack
from gantry.pipeline.provision import start_job
from gantry.services.jobs import JobCreate, JobInput, create_job
from gantry.settings import Settings
from gantry.urls import Urls
from tests.waits import WAIT_SECONDS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "algorithms"
URLS = Urls("https://api.gantry.test/api/v1/")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    local = LocalStack.start(
        Settings(table_name="gantry-pipeline", bucket_name="gantry-pipeline", local_workers=2)
    )
    user = local.ctx.store.users.ensure_user("alice")
    store = local.ctx.store
    for title, kind, path in (
        ("threshold", "Float", "threshold.json"),
        ("bounding-box", "2D bounding box", "bounding-box.json"),
        ("score", "Float", "score.json"),
        ("shifted-bounding-box", "2D bounding box", "shifted-bounding-box.json"),
    ):
        store.sockets.create(
            InterfaceFields(title=title, kind=kind, relative_path=path), creator="alice"
        )
    local.user = user
    yield local
    local.stop()


def _algorithm(stack: LocalStack, name: str, outputs: list[str], time_limit: int = 300):
    store = stack.ctx.store
    algorithm = store.algorithms.create(
        AlgorithmFields(
            title=f"{name} {time.monotonic_ns()}",
            interfaces=[SocketSet(inputs=["threshold", "bounding-box"], outputs=outputs)],
            time_limit=time_limit,
        ),
        creator="alice",
    )
    store.algorithms.create_image(
        algorithm,
        AlgorithmImageFields(
            image="local", command=[sys.executable, "main.py"], workdir=str(EXAMPLES / name)
        ),
        creator="alice",
    )
    return algorithm


BOX = {
    "type": "2D bounding box",
    "version": {"major": 1, "minor": 0},
    "corners": [[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]],
}


def _run(stack: LocalStack, algorithm, timeout: float = WAIT_SECONDS):
    body = JobCreate(
        algorithm=algorithm.pk,
        inputs=[
            JobInput(interface="threshold", value=2.5),
            JobInput(interface="bounding-box", value=BOX),
        ],
    )
    job = create_job(stack.ctx, stack.user, body, URLS)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = stack.ctx.store.jobs.get(job.pk)
        if current.status.is_terminal:
            return current
        time.sleep(0.1)
    raise AssertionError(f"job did not finish: {stack.ctx.store.jobs.get(job.pk).status.label}")


def test_json_algorithm_succeeds_with_validated_outputs(stack):
    algorithm = _algorithm(stack, "json-io", ["score", "shifted-bounding-box"])
    job = _run(stack, algorithm)
    assert job.status is JobStatus.SUCCESS, job.error_message
    outputs = {v.socket: v.value for v in job.outputs}
    assert outputs["score"] == 5.0
    assert [c[0] for c in outputs["shifted-bounding-box"]["corners"]] == [2.5, 12.5, 12.5, 2.5]
    assert job.exec_duration is not None and job.compute_job_id


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ("crash", "RuntimeError: model weights not found"),
        ("no-output", "Output file 'score.json' was not produced"),
        ("invalid-json", "The output file 'score.json' is not valid json"),
        ("symlink-escape", "Output 'passwd.txt' is a symbolic link, which is not allowed"),
    ],
)
def test_failing_algorithms_fail_the_job_with_a_reason(stack, example, message):
    algorithm = _algorithm(stack, example, ["score"])
    job = _run(stack, algorithm)
    assert job.status is JobStatus.FAILURE
    assert message in job.error_message


def test_an_algorithm_past_its_time_limit_fails_with_grand_challenges_message(stack):
    store = stack.ctx.store
    algorithm = _algorithm(stack, "timeout", ["score"])
    [image] = store.algorithms.images_of(algorithm.pk)
    # Algorithms allow 300 s at least; a job with a 2 s limit keeps the test short.
    moment = timeutil.iso()
    job = Job(
        pk=str(uuid.uuid4()),
        algorithm=algorithm.pk,
        algorithm_image=image.pk,
        creator="alice",
        status=JobStatus.PENDING,
        inputs=[],
        time_limit=2,
        signing_key=new_signing_key(),
        created=moment,
        modified=moment,
    )
    store.jobs.create(job, input_images=[])
    start_job(stack.ctx, job.pk)
    deadline = time.monotonic() + WAIT_SECONDS
    while not (done := store.jobs.get(job.pk)).status.is_terminal:
        assert time.monotonic() < deadline, done.status.label
        time.sleep(0.1)
    assert done.status is JobStatus.FAILURE
    assert done.error_message == "Time limit exceeded"


# Written the way grand-challenge's algorithm template reads its inputs.
READS_INPUTS_JSON = """
import json, os
entries = json.load(open("/input/inputs.json"))
by_socket = {e["socket"]["slug"]: e for e in entries}
by_interface = {e["interface"]["slug"]: e for e in entries}
threshold = by_socket["threshold"]
with open(os.path.join("/input", threshold["socket"]["relative_path"])) as handle:
    from_file = json.load(handle)
box = by_interface["bounding-box"]
with open(os.path.join("/input", box["interface"]["relative_path"])) as handle:
    box_from_file = json.load(handle)
report = {
    "slugs": sorted(by_socket),
    "keys": sorted(entries[0]),
    "file_matches_value": from_file == threshold["value"] and box_from_file == box["value"],
}
json.dump(report, open("/output/report.json", "w"))
json.dump(from_file * 2, open("/output/score.json", "w"))
"""


def test_inputs_json_is_the_apis_job_inputs_and_each_file_is_at_its_path(stack):
    import json
    import shutil
    import tempfile

    from gantry import shapes
    from gantry.services import catalog

    folder = Path(tempfile.mkdtemp(prefix="gantry-inputs-json-"))
    folder.chmod(0o755)
    (folder / "main.py").write_text(READS_INPUTS_JSON)
    (folder / "main.py").chmod(0o644)
    store = stack.ctx.store
    algorithm = store.algorithms.create(
        AlgorithmFields(
            title=f"inputs-json {time.monotonic_ns()}",
            interfaces=[SocketSet(inputs=["threshold", "bounding-box"], outputs=["score"])],
        ),
        creator="alice",
    )
    store.algorithms.create_image(
        algorithm,
        AlgorithmImageFields(
            image="local", command=[sys.executable, "main.py"], workdir=str(folder)
        ),
        creator="alice",
    )
    try:
        job = _run(stack, algorithm)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert job.status is JobStatus.SUCCESS, job.error_message
    assert {v.socket: v.value for v in job.outputs}["score"] == 5.0
    # The file the algorithm read is, object for object, the API's job inputs.
    s3 = stack.ctx.clients.s3
    bucket = stack.ctx.settings.bucket_name
    key = f"io/{job.pk}/{job.attempt}/input/inputs.json"
    stored = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert [v["socket"]["slug"] for v in stored] == ["threshold", "bounding-box"]
    assert stored[0]["value"] == 2.5 and stored[1]["value"] == BOX
    assert sorted(stored[0]) == ["file", "image", "interface", "pk", "socket", "value"]
    assert stored[0]["socket"] == stored[0]["interface"]
    assert stored[0]["socket"]["relative_path"] == "threshold.json"
    sockets = catalog.sockets_of(stack.ctx, [algorithm])
    urls = Urls(stack.ctx.settings.api_base_url or "https://localhost/api/v1/")
    assert stored == shapes.job(job, sockets, urls)["inputs"]
