"""Deploy rehearsal: the synthesized template created in moto's CloudFormation (server mode),
then one drop-folder job driven through the deployed wiring to Succeeded.

The path: a file dropped under ``dropbox/<slug>/`` → the bucket's notification → the deployed
drop-folder queue → its event source mapping's function (on_dropbox) → the job waits for its
upload to be checked → "validate-inputs" on the deployed uploads queue → on_upload →
provisioning submits to the deployed CPU job queue with a copy of the deployed job definition →
the runner (the real one, in this process, with the container environment Batch holds for the
job) claims its credentials from the deployed credentials function and the job-data role →
a Batch state change matched by the deployed rule's pattern → its target (on_job_event) →
Succeeded → "Gantry Job Succeeded" on the deployed bus → the deployed rule → the drop-folder
queue → on_dropbox writes the results. ``tests/infra/moto_deploy.py`` says what the harness
does in AWS's place and which resources moto cannot create.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from moto.server import ThreadedMotoServer

from batch_runner import cli, credentials
from gantry.algorithms import AlgorithmFields, AlgorithmImageFields
from gantry.interfaces import InterfaceFields
from gantry.job_states import JobStatus
from gantry.resources import RUNNER_BINARY_PATH
from tests.infra.conftest import Synth, synthesize
from tests.infra.moto_deploy import NOT_CREATED, REMOVED, Deployed, deployed_stack
from tests.integration.pipeline_support import compute_event

pytestmark = [
    pytest.mark.slow,
    pytest.mark.long,
    # moto's CloudFormation warns for each resource type it skips; the test checks that list.
    pytest.mark.filterwarnings("ignore:Tried to parse"),
]
BATCH_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")

SYSTEM_PYTHON = "/usr/bin/python3"
SLUG = "rehearsal"
OWNER = "dropbox"
# The algorithm: reads the dropped JSON case, writes a score.
SCRIPT = (
    "import json, os; case = json.load(open(os.path.join(os.environ['INPUT_DIR'], 'case.json')));"
    "json.dump(case['size'] * 0.5, open(os.path.join(os.environ['OUTPUT_DIR'], 'score.json'), 'w'))"
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-rehearsal"))


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # One moto state per process: start from nothing; Batch places no container (no Docker).
    httpx.post(f"{url}/moto-api/reset", timeout=10)
    httpx.post(f"{url}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10)
    try:
        yield url
    finally:
        server.stop()


def _function_named(deployed: Deployed, handler: str) -> dict[str, Any]:
    functions = deployed.client("lambda").list_functions()["Functions"]
    return next(f for f in functions if f["Handler"] == handler)


def _register_algorithm(deployed: Deployed) -> None:
    """What an operator does through the API: the sockets, the algorithm, its image."""
    ctx = deployed.context_of(_function_named(deployed, "lambdas.api.app.handler"))
    store = ctx.store
    store.sockets.create(
        InterfaceFields(title="Case", kind="JSON", relative_path="case.json"), creator="alice"
    )
    store.sockets.create(
        InterfaceFields(title="Score", kind="FLT", relative_path="score.json"), creator="alice"
    )
    algorithm = store.algorithms.create(
        AlgorithmFields(
            title="Rehearsal",
            interfaces=[{"inputs": ["case"], "outputs": ["score"]}],
            users=[OWNER],
        ),
        creator="alice",
    )
    store.algorithms.create_image(
        algorithm,
        AlgorithmImageFields(
            image=f"{deployed.outputs['RunnerRepositoryUri']}:rehearsal",
            command=[SYSTEM_PYTHON, "-c", SCRIPT],
        ),
        creator="alice",
    )


def _run_batch_job(deployed: Deployed, job_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Batch host does: run the job's container command, here the real runner in this
    process, with exactly the environment Batch holds for the job."""
    (described,) = deployed.client("batch").describe_jobs(jobs=[job_id])["jobs"]
    container = described["container"]
    command = container["command"]
    assert command[0] == RUNNER_BINARY_PATH, command
    for item in container["environment"]:
        monkeypatch.setenv(item["name"], item["value"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", deployed.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # Lambda's Invoke runs code only in Docker under moto: the deployed function's handler.
    monkeypatch.setattr(
        credentials,
        "lambda_invoker",
        lambda function, region: lambda payload: deployed.invoke(function, payload),
    )
    root = Path(tempfile.mkdtemp(prefix="gantry-rehearsal-"))
    root.chmod(0o755)
    try:
        code = cli.main(
            [
                *command[1:],
                "--sandbox",
                "off",
                "--input-root",
                str(root / "input"),
                "--output-root",
                str(root / "output"),
            ]
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert code == cli.EXIT_OK


def _pump(deployed: Deployed) -> None:
    while deployed.poll_queues():
        pass


def test_template_deploys_and_a_dropped_case_succeeds_through_the_deployed_wiring(
    synth: Synth, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with deployed_stack(synth.template, endpoint) as deployed:
        assert deployed.stack["StackStatus"] == "CREATE_COMPLETE"
        # Exactly these are not created by moto; docs/deploy.md lists them with their cover.
        assert deployed.skipped == set(NOT_CREATED)
        assert set(REMOVED) <= {r["Type"] for r in synth.template["Resources"].values()}
        outputs = deployed.outputs
        for name in ("ApiBaseUrl", "TableName", "BucketName", "CpuJobQueue", "AlarmTopicArn"):
            assert outputs.get(name), name
        bucket = outputs["BucketName"]

        _register_algorithm(deployed)
        s3 = deployed.client("s3")
        s3.put_object(Bucket=bucket, Key=f"dropbox/{SLUG}/case1.json", Body=b'{"size": 7}')
        _pump(deployed)

        # One job on the CPU queue (moto moves it through Batch's states on its own).
        batch = deployed.client("batch")
        (summary,) = [
            found
            for status in BATCH_STATES
            for found in batch.list_jobs(jobQueue=outputs["CpuJobQueue"], jobStatus=status)[
                "jobSummaryList"
            ]
        ]
        job_pk, attempt = summary["jobName"].removeprefix("gantry-").rsplit("-", 1)
        _run_batch_job(deployed, summary["jobId"], monkeypatch)

        event = compute_event(
            "batch_succeeded.json", job_pk, int(attempt), summary["jobId"], bucket=bucket
        )
        (described,) = batch.describe_jobs(jobs=[summary["jobId"]])["jobs"]
        event["detail"]["jobQueue"] = described["jobQueue"]
        assert deployed.deliver(event), "no deployed rule matched the Batch state change"
        _pump(deployed)

        ctx = deployed.context_of(_function_named(deployed, "lambdas.on_job_event.handler"))
        job = ctx.store.jobs.get(job_pk)
        assert job.status is JobStatus.SUCCESS, job.error_message
        score = s3.get_object(Bucket=bucket, Key=f"dropbox-results/{SLUG}/case1/score.json")
        assert json.loads(score["Body"].read()) == 3.5
        handlers = {deployed.function(name)["Handler"] for name in deployed.invocations}
        assert handlers == {
            "lambdas.on_dropbox.handler",
            "lambdas.on_upload.handler",
            "lambdas.job_credentials.handler",
            "lambdas.on_job_event.handler",
        }


def test_doctor_reads_the_deployed_stack_and_names_what_to_fix(synth: Synth, endpoint: str) -> None:
    from typer.testing import CliRunner

    from gantry.cli import app

    with deployed_stack(synth.template, endpoint):
        result = CliRunner().invoke(
            app,
            [
                "doctor",
                "--endpoint-url",
                endpoint,
                "--region",
                "us-east-1",
                "--api-url",
                "https://127.0.0.1:9/api/v1/",
                "--skip-job",
            ],
        )
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert lines[0] == "✓ stack: Gantry is CREATE_COMPLETE with all its outputs"
    assert lines[1].startswith("✗ api: The API at https://127.0.0.1:9/api/v1/gcapi/ did not")
    # moto has no EC2 quotas: read from the deployed GPU environment, reported as unreadable.
    assert lines[2].startswith("✗ gpu quota: EC2 quota 'Running On-Demand G and VT instances'")
    assert "at least 4 vCPUs are needed for one g4dn.xlarge" in lines[2]
    # moto creates neither the alarms nor the topic's policy.
    assert "✗ alarms: Stack Gantry has no alarms: deploy it again" in lines
    assert any(line.startswith("✗ alarms: The alarm topic's policy") for line in lines)
    assert "! cpu job: skipped (--skip-job)" in lines
    assert lines[-1].endswith("check(s) failed")
