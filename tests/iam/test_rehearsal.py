"""IAM rehearsal: every AWS call each deployed principal makes, judged by its own policies.

The platform runs its real code paths on moto with the names a deployment has: the settings
are each function's environment from the synthesized template, the Batch job definitions are
the template's. Every call is recorded (tests/iam/calls.py) and attributed to the principal
that would make it in AWS: the function whose handler runs, the runner under the Batch job
role or under the SageMaker role. Each call is then evaluated against that principal's policy
statements in the template (tests/iam/evaluate.py); a call they do not allow fails the test
with the principal, action and resource. The import function's push goes over ECR's OCI
distribution API, not boto3: each of its HTTP requests is recorded as the ECR action IAM
checks for it (``calls.registry_requests``), against a real registry on loopback.

What this cannot see: resource policies (bucket, queue, topic, repository and key policies), service
control policies and permission boundaries; what AWS services do with their own service
roles (SageMaker pulling the image, the ECS agent with the execution role); and calls the
code would make only on paths no scenario here drives.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from gantry import resources, timeutil
from gantry.context import Context
from gantry.provision import ensure_data
from gantry.resources import upload_key
from gantry.settings import Settings
from tests.conftest import sqs_event
from tests.iam.calls import Call, Recorder, recording, recording_registry, to_requests
from tests.iam.evaluate import allowed
from tests.iam.template import ACCOUNT, REGION, Deployment

pytestmark = pytest.mark.slow

HANDLERS = {
    "api": "lambdas.api.app.handler",
    "on_upload": "lambdas.on_upload.handler",
    "on_import": "lambdas.on_import.handler",
    "on_dropbox": "lambdas.on_dropbox.handler",
    "on_archive_run": "lambdas.on_archive_run.handler",
    "on_job_event": "lambdas.on_job_event.handler",
    "sweeper": "lambdas.sweeper.handler",
    "job_credentials": "lambdas.job_credentials.handler",
}
# Functions whose jobs on_upload provisions from the queue, as their handlers wire it.
QUEUED = {"api", "on_archive_run"}
RUNNER_ON_BATCH = "runner (Batch job role)"
RUNNER_ON_SAGEMAKER = "runner (SageMaker role)"
# The runner after its claim: a session of the job data role, limited by its session policy.
RUNNER_SESSION = "runner (job data session)"
# An image import handed over to a Batch job on the CPU queue (gantry.pipeline.import_job).
IMPORT_JOB = "import job (Batch job role)"
ALICE = "alice"
# The algorithm: writes a score and a PDF report.
ALGORITHM = (
    "import pathlib; out = pathlib.Path('/output'); "
    "(out / 'score.json').write_text('0.75'); "
    "(out / 'report.pdf').write_bytes(b'%PDF-1.4\\n% report\\n')"
)


@dataclass
class Rehearsal:
    deployment: Deployment
    recorder: Recorder

    def principal_statements(self, principal: str) -> list[dict[str, Any]]:
        if principal in HANDLERS:
            role = self.deployment.role_of_function(HANDLERS[principal])
        elif principal == RUNNER_ON_BATCH:
            role = self.deployment.job_role(Settings.model_construct().batch_job_definition)
        elif principal == IMPORT_JOB:
            from gantry.pipeline.import_job import DEFINITION_NAME

            role = self.deployment.job_role(DEFINITION_NAME)
        elif principal == RUNNER_ON_SAGEMAKER:
            [role] = self.deployment.roles_assumed_by("sagemaker.amazonaws.com")
        elif principal == RUNNER_SESSION:
            environment = self.deployment.function_environment(HANDLERS["job_credentials"])
            role = self.deployment.role_by_arn(environment["GANTRY_JOB_DATA_ROLE_ARN"])
        else:
            raise KeyError(principal)
        return self.deployment.statements(role)

    def denied(self) -> list[str]:
        found: list[str] = []
        statements: dict[str, list[dict[str, Any]]] = {}
        for call in self.recorder.calls:
            if call.principal not in statements:
                statements[call.principal] = self.principal_statements(call.principal)
            for request in call.requests:
                if not allowed(statements[call.principal], request) or (
                    call.session_policy and not allowed(call.session_policy, request)
                ):
                    found.append(_describe(call, request))
        return sorted(set(found))


def _describe(call: Call, request: Any) -> str:
    how = " (presigned URL)" if call.presigned else ""
    context = f" with {dict(request.context)}" if request.context else ""
    return (
        f"{call.principal}: {call.service}.{call.operation}{how} needs {request.action} on "
        f"{request.resource}{context}"
    )


def deployed_settings(deployment: Deployment, handler: str, **changes: Any) -> Settings:
    environment = deployment.function_environment(handler)
    fields = {
        name.removeprefix("GANTRY_").lower(): value
        for name, value in environment.items()
        if name.startswith("GANTRY_")
    }
    return Settings(**{**fields, **changes})


# --- The account as the stack leaves it -----------------------------------------------------


def _camel(value: Any, *, keep: bool = False) -> Any:
    """CloudFormation's PascalCase properties as the Batch API's camelCase."""
    if isinstance(value, list):
        return [_camel(v) for v in value]
    if not isinstance(value, dict) or keep:
        return value
    return {k[0].lower() + k[1:]: _camel(v, keep=k == "Options") for k, v in value.items()}


def create_account(deployment: Deployment, ctx: Context) -> None:
    """What ``cdk deploy`` creates that the code paths call: table, bucket, queues, bus,
    the Batch queues and the template's job definitions, the roles they name."""
    ensure_data(ctx.clients, ctx.settings)
    sqs, iam, batch = ctx.clients.sqs, ctx.clients.client("iam"), ctx.clients.batch
    for logical_id, resource in deployment.resources.items():
        kind = resource["Type"]
        if kind == "AWS::SQS::Queue":
            sqs.create_queue(QueueName=deployment.physical_name(logical_id))
        elif kind == "AWS::IAM::Role":
            iam.create_role(
                RoleName=deployment.physical_name(logical_id), AssumeRolePolicyDocument="{}"
            )
    ctx.clients.events.create_event_bus(Name=ctx.settings.event_bus_name)
    service_role = iam.create_role(RoleName="rehearsal-batch", AssumeRolePolicyDocument="{}")
    environment = batch.create_compute_environment(
        computeEnvironmentName="gantry-rehearsal",
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=service_role["Role"]["Arn"],
    )["computeEnvironmentArn"]
    for queue in (ctx.settings.batch_job_queue_gpu, ctx.settings.batch_job_queue_cpu):
        batch.create_job_queue(
            jobQueueName=queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
        )
    for resource in deployment.resources.values():
        if resource["Type"] == "AWS::Batch::JobDefinition":
            props = _camel(deployment.resolve(resource["Properties"]))
            props.pop("tags", None)
            batch.register_job_definition(**props)


def route_bus_to_queue(ctx: Context) -> str:
    """An SQS queue (the test's, not the stack's) that sees every Gantry job event."""
    sqs = ctx.clients.sqs
    url = sqs.create_queue(QueueName="rehearsal-job-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events = ctx.clients.events
    events.put_rule(
        Name="rehearsal",
        EventBusName=ctx.settings.event_bus_name,
        EventPattern=json.dumps({"source": [resources.EVENT_SOURCE]}),
    )
    events.put_targets(
        Rule="rehearsal",
        EventBusName=ctx.settings.event_bus_name,
        Targets=[{"Id": "q", "Arn": arn}],
    )
    return url


def drain(ctx: Context, url: str) -> list[str]:
    bodies: list[str] = []
    while messages := ctx.clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        for message in messages:
            bodies.append(message["Body"])
            ctx.clients.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


# --- The scenarios --------------------------------------------------------------------------


class Platform:
    """The deployed functions and the runner, each acting as its own principal."""

    def __init__(self, deployment: Deployment, recorder: Recorder, tmp: Path) -> None:
        from lambdas.api.app import create_app
        from tests.conftest import ApiClient

        self.deployment = deployment
        self.recorder = recorder
        self.tmp = tmp
        self.contexts = {
            # The API provisions through the queue, as lambdas.api.app.handler wires it.
            name: self._context(
                deployed_settings(deployment, handler), provision_on_queue=name in QUEUED
            )
            for name, handler in HANDLERS.items()
        }
        self.ctx = self.contexts["api"]
        create_account(deployment, self.ctx)
        self.events_url = route_bus_to_queue(self.ctx)
        self.token = self.ctx.store.users.create_token(ALICE)
        self.images = 0
        self.api = ApiClient(create_app(self.contexts["api"]), self.token)

    @staticmethod
    def _context(settings: Settings, *, provision_on_queue: bool = False) -> Context:
        from gantry.pipeline.wiring import install

        return install(Context.create(settings), provision_on_queue=provision_on_queue)

    def act(self, principal: str) -> contextlib.AbstractContextManager[None]:
        return self.recorder.acting_as(principal)

    # The API -------------------------------------------------------------------------------

    def call_api(self, method: str, path: str, body: Any = None) -> Any:
        with self.act("api"):
            status, payload, _ = self.api.request(method, path, body)
        assert status < 400, (method, path, status, payload)
        return payload

    def create_catalog(self) -> list[str]:
        """Sockets, an algorithm and its image, through the API; the algorithm's slug."""
        for title, kind, path in (
            ("Threshold", "Float", "threshold.json"),
            ("Score", "Float", "score.json"),
            ("Report", "PDF", "report.pdf"),
            ("Document", "PDF", "document.pdf"),
        ):
            self.call_api(
                "POST",
                "components/interfaces/",
                {"title": title, "kind": kind, "relative_path": path},
            )
        return [
            self._algorithm("Scorer", [["threshold"], ["document"]]),
            self._algorithm("Reader", [["document"]]),
        ]

    def _algorithm(self, title: str, inputs: list[list[str]]) -> str:
        algorithm = self.call_api(
            "POST",
            "algorithms/",
            {
                "title": title,
                "interfaces": [{"inputs": i, "outputs": ["score", "report"]} for i in inputs],
                "users": [self.ctx.settings.dropbox_owner],
            },
        )
        self.add_image(algorithm["slug"], ["/usr/bin/python3", "-c", ALGORITHM])
        return algorithm["slug"]

    def add_image(self, slug: str, command: list[str]) -> str:
        """A new image of the algorithm, the one its jobs use from now on; its pk."""
        self.images += 1
        repository = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/gantry-runner-images"
        image = self.call_api(
            "POST",
            "algorithms/images/",
            {"algorithm": slug, "image": f"{repository}:{slug}-{self.images}", "command": command},
        )
        return image["pk"]

    def create_job(self, slug: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """The API creates the job; on_upload checks or provisions it from the queue."""
        job = self.call_api("POST", "algorithms/jobs/", {"algorithm": slug, "inputs": inputs})
        self.deliver_uploads()
        return job

    def upload(self, filename: str, body: bytes) -> dict[str, Any]:
        """gcapi's multipart upload: create, presign a part, PUT it, list parts, complete."""
        upload = self.call_api("POST", "uploads/", {"filename": filename})
        base = f"uploads/{upload['pk']}/{upload['s3_upload_id']}"
        urls = self.call_api("PATCH", f"{base}/generate-presigned-urls/", {"part_numbers": [1]})
        assert urls["presigned_urls"]["1"]
        # The PUT itself goes to S3 with the API role's signature: what the URL allows.
        s3 = self.ctx.clients.s3
        part = s3.upload_part(
            Bucket=self.ctx.settings.bucket_name,
            Key=upload_key(ALICE, upload["pk"], filename),
            UploadId=upload["s3_upload_id"],
            PartNumber=1,
            Body=body,
        )
        self.call_api("GET", f"{base}/list-parts/")
        self.call_api(
            "PATCH",
            f"{base}/complete-multipart-upload/",
            {"parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        )
        return upload

    def import_image(self, slug: str, archive: Path) -> dict[str, Any]:
        """An editor's image upload: the API queues its import, the import function pushes
        it to the deployment's repository (a registry on loopback stands in for ECR's)."""
        upload = self.upload(archive.name, archive.read_bytes())
        image = self.call_api(
            "POST", "algorithms/images/", {"algorithm": slug, "user_upload": upload["api_url"]}
        )
        self.deliver_imports()
        return self.call_api("GET", f"algorithms/images/{image['pk']}/")

    def import_model(self, slug: str, tarball: bytes) -> dict[str, Any]:
        """An editor's model upload, imported by the import function."""
        upload = self.upload("model.tar.gz", tarball)
        model = self.call_api(
            "POST", "algorithms/models/", {"algorithm": slug, "user_upload": upload["api_url"]}
        )
        self.deliver_imports()
        return self.call_api("GET", f"algorithms/models/{model['pk']}/")

    def import_in_a_job(self, slug: str, archive: Path) -> dict[str, Any]:
        """An image upload larger than the import function takes: the function submits the
        import job on the CPU queue, whose container runs the import."""
        from gantry.pipeline import import_job

        ctx = self.contexts["on_import"]
        settings = ctx.settings
        assert settings.import_job_definition, "the stack deploys no import job"
        ctx.settings = settings.model_copy(update={"import_job_threshold_bytes": 0})
        try:
            handed = self.import_image(slug, archive)
        finally:
            ctx.settings = settings
        assert handed["import_status"] == "Queued", handed["status"]
        assert handed["status"].startswith(import_job.HANDED_OVER_PREFIX), handed["status"]
        with self.act(IMPORT_JOB):
            assert import_job.main([handed["pk"]], self.contexts[IMPORT_JOB]) == 0
        return self.call_api("GET", f"algorithms/images/{handed['pk']}/")

    def delete_image(self, pk: str) -> None:
        """The image's deletion from the repository, as its removal asks for it."""
        from gantry.oci.mutate import MEDIA_TYPE_OCI_MANIFEST
        from gantry.pipeline.registry_publisher import image_tag, queue_deletion

        ctx = self.contexts["on_import"]
        image = ctx.store.algorithms.get_image(pk)
        # What the push left in ECR (moto's ECR keeps no pushes over the registry API).
        ecr = ctx.clients.client("ecr")
        ecr.create_repository(repositoryName=ctx.settings.image_repository)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST})
        pushed = ecr.put_image(
            repositoryName=ctx.settings.image_repository,
            imageManifest=manifest,
            imageTag=image_tag(pk),
        )["image"]["imageId"]["imageDigest"]
        image = image.model_copy(update={"image": image.image.rpartition("@")[0] + "@" + pushed})
        with self.act("api"):
            assert queue_deletion(self.contexts["api"], image)
        self.deliver_imports()
        assert (
            ecr.describe_images(repositoryName=ctx.settings.image_repository)["imageDetails"] == []
        )

    def use_registry(self, url: str, runner_layer: Path) -> None:
        """The import function's publisher, as deployed, with ECR's endpoint replaced by
        ``url``; every registry request recorded as the ECR call it would be. The import job
        runs with the function's settings (its definition has the same environment)."""
        self.contexts[IMPORT_JOB] = self._context(
            deployed_settings(self.deployment, HANDLERS["on_import"], import_job_definition="")
        )
        for name in ("on_import", IMPORT_JOB):
            self._use_registry(self.contexts[name], url, runner_layer)

    def _use_registry(self, ctx: Context, url: str, runner_layer: Path) -> None:
        from gantry.oci.registry import Registry
        from gantry.pipeline.registry_publisher import ensure_publisher

        publisher = ensure_publisher(ctx)
        assert publisher is not None, "the import function's settings name no repository"

        def registry() -> Registry:
            token = Registry.ecr(ctx.clients.client("ecr"))  # as the function, through boto3
            local = Registry(url, token.username, token.password)
            return recording_registry(self.recorder, local)

        publisher.registry = registry
        publisher.runner_layer_path = runner_layer

    # Event-driven functions ----------------------------------------------------------------

    def deliver_imports(self) -> None:
        """The imports queue's messages to the import function."""
        from lambdas.on_import import process

        url = self.ctx.settings.imports_queue_url
        while bodies := drain(self.ctx, url):
            with self.act("on_import"):
                response = process(self.contexts["on_import"], sqs_event(bodies, queue="queue"))
            assert response["batchItemFailures"] == []

    def deliver_uploads(self) -> None:
        """The uploads queue's messages (S3 notifications, validate-inputs) to on_upload."""
        from lambdas.on_upload import process

        url = self.ctx.settings.uploads_queue_url
        while bodies := drain(self.ctx, url):
            with self.act("on_upload"):
                response = process(self.contexts["on_upload"], sqs_event(bodies, queue="queue"))
            assert response["batchItemFailures"] == []

    def s3_notification(self, key: str, size: int) -> str:
        return json.dumps(
            {
                "Records": [
                    {
                        "eventVersion": "2.1",
                        "eventSource": "aws:s3",
                        "awsRegion": REGION,
                        "eventTime": timeutil.iso(),
                        "eventName": "ObjectCreated:Put",
                        "s3": {
                            "bucket": {"name": self.ctx.settings.bucket_name},
                            "object": {"key": key, "size": size, "sequencer": "01"},
                        },
                    }
                ]
            }
        )

    def drop(self, slug: str, filename: str, body: bytes) -> None:
        from lambdas.on_dropbox import process

        key = f"{resources.PREFIX_DROPBOX}{slug}/case-1/{filename}"
        self.ctx.clients.s3.put_object(Bucket=self.ctx.settings.bucket_name, Key=key, Body=body)
        with self.act("on_dropbox"):
            response = process(
                self.contexts["on_dropbox"],
                sqs_event([self.s3_notification(key, len(body))], queue="queue"),
            )
        assert response["batchItemFailures"] == []

    def announce_to_dropbox(self) -> None:
        """The bus's Gantry job events, as the drop-folder rule delivers them."""
        from lambdas.on_dropbox import process

        bodies = drain(self.ctx, self.events_url)
        with self.act("on_dropbox"):
            response = process(self.contexts["on_dropbox"], sqs_event(bodies, queue="queue"))
        assert response["batchItemFailures"] == []

    def deliver_archive_runs(self) -> None:
        """The archive-runs queue (pages of a run) and the bus's job events, as the
        archive-run rule delivers them, to on_archive_run."""
        from lambdas.on_archive_run import process

        url = self.ctx.settings.archive_runs_queue_url
        while bodies := drain(self.ctx, url) + drain(self.ctx, self.events_url):
            with self.act("on_archive_run"):
                response = process(
                    self.contexts["on_archive_run"], sqs_event(bodies, queue="queue")
                )
            assert response["batchItemFailures"] == []

    def job(self, pk: str) -> Any:
        return self.ctx.store.jobs.get(pk)

    def run(self, pk: str, principal: str = RUNNER_ON_BATCH) -> None:
        """The runner of the job's current attempt, in-process, as the compute job starts it:
        its environment is the compute job's, its role ``principal``, its data access the
        session it claims from the credentials function."""
        from batch_runner import credentials
        from batch_runner.cli import main

        job = self.job(pk)
        uri = f"s3://{self.ctx.settings.bucket_name}/{resources.invocation_key(pk, job.attempt)}"
        root = Path(tempfile.mkdtemp(dir=self.tmp))
        root.chmod(0o755)
        real_invoker = credentials.lambda_invoker
        credentials.lambda_invoker = self._credentials_function
        try:
            with _environment(self.compute_environment(job)), self.act(principal):
                code = main(
                    [
                        "invoke",
                        "--file",
                        uri,
                        "--input-root",
                        str(root / "input"),
                        "--output-root",
                        str(root / "output"),
                        "--sandbox",
                        "required",
                        "--workdir",
                        str(root),
                        "--",
                        "/usr/bin/python3",
                        "-c",
                        ALGORITHM,
                    ]
                )
        finally:
            credentials.lambda_invoker = real_invoker
        assert code == 0

    def compute_environment(self, job: Any) -> dict[str, str]:
        """The environment the compute service gives the job's container."""
        ctx = self.contexts["api"]
        if ctx.settings.compute_backend == "sagemaker":
            # moto's DescribeTrainingJob leaves the environment out: the backend's request.
            image = ctx.store.algorithms.get_image(job.algorithm_image)
            uri = f"s3://{ctx.settings.bucket_name}/{resources.invocation_key(job.pk, job.attempt)}"
            return dict(ctx.compute.create_request(job, image, uri)["Environment"])
        [described] = self.ctx.clients.batch.describe_jobs(jobs=[job.compute_job_id])["jobs"]
        return {e["name"]: e["value"] for e in described["container"]["environment"]}

    def _credentials_function(self, function: str, region: str) -> Any:
        """Lambda's invoke of the credentials function (moto runs no Lambda code without
        Docker): the invoke is recorded as the runner's call, the handler's work as the
        function's, and what the runner does next as the session it was given."""
        from gantry.job_credentials import CredentialsRefused, CredentialsRequest, issue

        def invoke(payload: dict[str, Any]) -> dict[str, Any]:
            recorder = self.recorder
            arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
            requests = tuple(to_requests("lambda", "Invoke", {"FunctionName": arn}))
            recorder.record(Call(recorder.principal or "", "lambda", "Invoke", requests))
            with self.act("job_credentials"):
                try:
                    answer = issue(
                        self.contexts["job_credentials"], CredentialsRequest.model_validate(payload)
                    )
                except CredentialsRefused as error:
                    return {"error": str(error)}
            assumed = recorder.last("job_credentials", "AssumeRole")
            assert assumed.params is not None  # AssumeRole's are recorded
            policy = json.loads(assumed.params["Policy"])
            recorder.principal = RUNNER_SESSION
            recorder.session_policy = tuple(policy["Statement"])
            return answer

        return invoke

    def finish(self, pk: str, what: str = "succeeded") -> None:
        """The service's state-change event for the job's attempt, to on_job_event."""
        from lambdas.on_job_event import process
        from tests.integration.pipeline_support import SHAPES, compute_event

        job = self.job(pk)
        backend = self.contexts["on_job_event"].settings.compute_backend
        event = compute_event(
            SHAPES[backend][what],
            pk,
            job.attempt,
            job.compute_job_id,
            bucket=self.ctx.settings.bucket_name,
        )
        with self.act("on_job_event"):
            process(self.contexts["on_job_event"], event)

    def sweep(self, *, after_seconds: float) -> None:
        from gantry.pipeline.sweeper import sweep

        real_now = timeutil.now
        timeutil.now = lambda: real_now() + timedelta(seconds=after_seconds)
        try:
            with self.act("sweeper"):
                sweep(self.contexts["sweeper"])
        finally:
            timeutil.now = real_now

    def use_backend(self, backend: str) -> None:
        for name, handler in HANDLERS.items():
            # SageMaker cannot sandbox: the operator has allowed jobs without it.
            settings = deployed_settings(
                self.deployment, handler, compute_backend=backend, sagemaker_sandbox="auto"
            )
            self.contexts[name] = self._context(settings, provision_on_queue=name in QUEUED)
        self.api = type(self.api)(
            __import__("lambdas.api.app", fromlist=["create_app"]).create_app(self.contexts["api"]),
            self.token,
        )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _model_tarball() -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("weights.json")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"{}"))
    return buffer.getvalue()


def drive(platform: Platform) -> None:
    """Every path a deployed job can take, each step by the principal that takes it."""
    slug, single_input = platform.create_catalog()

    # An editor uploads an algorithm image: the API queues the import, the import function
    # reads the archive from S3 and pushes it, with the runner layer, to the repository.
    from tests.image_builder import write_archive
    from tests.integration.test_image_import import spec

    archive = write_archive(platform.tmp / "algorithm.tar.gz", spec(), compression="gzip")
    imported = platform.import_image(slug, archive)
    assert imported["import_status"] == "Completed", imported["status"]
    # Removed again: the API queues the deletion, the import function deletes it in ECR.
    platform.delete_image(imported["pk"])

    # A bioimage.io model package: the API creates the algorithm, the import function reads
    # the upload, validates it and stores it as the algorithm's model (models/).
    from tests.bioimageio_support import build_package

    package = build_package(platform.tmp / "cells")
    importer = platform.contexts["on_import"]
    # What -c gantry:bioimageioImage=<runtime image in the repository> sets.
    runtime = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/gantry@sha256:{'b' * 64}"
    importer.settings = importer.settings.model_copy(update={"bioimageio_image": runtime})
    upload = platform.upload("cells.zip", package.zip_path.read_bytes())
    platform.deliver_uploads()
    created = platform.call_api(
        "POST", "algorithms/", {"title": "Cells", "bioimageio_package": upload["api_url"]}
    )
    platform.deliver_imports()
    registered = platform.call_api("GET", f"algorithms/{created['pk']}/")["bioimageio"]
    assert registered["import_status"] == "Completed", registered

    # A larger archive: the import function hands it to the import job on the CPU queue.
    big = write_archive(platform.tmp / "large.tar", spec(cmd=["--large"]))
    imported = platform.import_in_a_job(slug, big)
    assert imported["import_status"] == "Completed", imported["status"]

    # A model tarball: the API queues its import, the import function copies it to models/.
    model = platform.import_model(slug, _model_tarball())
    assert model["import_status"] == "Completed", model["status"]

    # A job with a value input: the API queues it, on_upload provisions, Batch runs, the
    # callback finishes it.
    job = platform.create_job(slug, [{"interface": "threshold", "value": 2.5}])
    platform.run(job["pk"])
    platform.finish(job["pk"])
    assert platform.job(job["pk"]).status.label == "Succeeded", platform.job(
        job["pk"]
    ).error_message
    platform.call_api("GET", f"algorithms/jobs/{job['pk']}/")

    # A host failure: the callback starts a new attempt, whose events were all lost; the
    # sweeper finds it finished (the runner's result) and completes it.
    job = platform.create_job(slug, [{"interface": "threshold", "value": 1.0}])
    platform.finish(job["pk"], "host")
    platform.run(job["pk"])
    platform.sweep(after_seconds=platform.job(job["pk"]).time_limit + 86_400)

    # A file input uploaded with gcapi's multipart upload, checked by on_upload.
    upload = platform.upload("report.pdf", b"%PDF-1.4\n% input\n")
    platform.deliver_uploads()
    job = platform.create_job(
        slug, [{"interface": "document", "upload_session": None, "user_upload": upload["api_url"]}]
    )
    platform.deliver_uploads()
    platform.run(job["pk"])
    platform.finish(job["pk"])

    # An upload that is not what its interface needs: on_upload fails the job.
    upload = platform.upload("broken.pdf", b"not a PDF")
    platform.deliver_uploads()
    job = platform.create_job(
        slug, [{"interface": "document", "upload_session": None, "user_upload": upload["api_url"]}]
    )
    platform.deliver_uploads()
    assert platform.job(job["pk"]).status.label == "Failed"

    # The drop folder: a dropped file becomes a job; its result file is written when it ends.
    drain(platform.ctx, platform.events_url)
    platform.drop(single_input, "document.pdf", b"%PDF-1.4\n% dropped\n")
    platform.deliver_uploads()
    [dropped] = [j for j in platform.ctx.store.jobs.page_for("dropbox", offset=0, limit=10)[0]]
    platform.run(dropped.pk)
    platform.finish(dropped.pk)
    platform.announce_to_dropbox()

    # An archive run: the API starts it, on_archive_run makes a job per item (on_upload
    # provisions them), and writes the outputs back into the items when the jobs end.
    archive = platform.call_api("POST", "archives/", {"title": "Cases"})
    for value in (1.5, 2.5):
        platform.call_api(
            "POST",
            "archives/items/",
            {"archive": archive["pk"], "values": [{"interface": "threshold", "value": value}]},
        )
    drain(platform.ctx, platform.events_url)
    run = platform.call_api(
        "POST", f"algorithms/{slug}/archive-runs/", {"archive": archive["pk"], "write_back": True}
    )
    platform.deliver_archive_runs()
    platform.deliver_uploads()
    records = list(platform.ctx.store.archive_runs.records(run["pk"]))
    assert len(records) == 2
    for record in records:
        platform.run(record["job"])
        platform.finish(record["job"])
    platform.deliver_archive_runs()
    item = platform.ctx.store.archives.get_item(records[0]["item"])
    assert {v.socket for v in item.values} == {"threshold", "score", "report"}
    platform.call_api("GET", f"algorithms/{slug}/archive-runs/{run['pk']}/")

    # SageMaker: the API starts a training job, the runner runs under the SageMaker role.
    platform.use_backend("sagemaker")
    job = platform.create_job(slug, [{"interface": "threshold", "value": 3.5}])
    platform.run(job["pk"], RUNNER_ON_SAGEMAKER)
    platform.finish(job["pk"])
    # A job SageMaker cannot start: provisioning fails it at once (and announces it).
    long_command = platform.add_image(slug, ["/usr/bin/python3", "-c", "#" * 600])
    job = platform.create_job(slug, [{"interface": "threshold", "value": 4.5}])
    assert platform.job(job["pk"]).algorithm_image == long_command
    assert platform.job(job["pk"]).status.label == "Failed"


@pytest.fixture(scope="module")
def rehearsal(default_synth: Any, tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    from gantry.oci.local_registry import local_registry
    from tests.infra.conftest import runner_layer_stand_in
    from tests.integration.test_oci_push import _ensure_registry

    _ensure_registry()
    deployment = Deployment(default_synth.template)
    tmp = tmp_path_factory.mktemp("rehearsal")
    with (
        local_registry(tmp / "registry") as registry_url,
        mock_aws(config={"batch": {"use_docker": False}}),
        recording() as recorder,
    ):
        platform = Platform(deployment, recorder, tmp)
        platform.use_registry(registry_url, runner_layer_stand_in(tmp / "runner"))
        drive(platform)
    return Rehearsal(deployment, recorder)


def test_every_principal_was_rehearsed(rehearsal: Rehearsal) -> None:
    assert rehearsal.recorder.principals() == {
        *HANDLERS,
        RUNNER_ON_BATCH,
        RUNNER_ON_SAGEMAKER,
        RUNNER_SESSION,
        IMPORT_JOB,
    }


def test_every_call_is_one_the_rehearsal_can_judge(rehearsal: Rehearsal) -> None:
    assert rehearsal.recorder.unknown == []


def test_the_import_pushed_through_ecrs_api(rehearsal: Rehearsal) -> None:
    """The push's calls were recorded as the ECR actions they are, by the import function."""
    actions = {
        request.action
        for call in rehearsal.recorder.calls
        if call.principal == "on_import" and call.service == "ecr"
        for request in call.requests
    }
    assert {
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:InitiateLayerUpload",
        "ecr:UploadLayerPart",
        "ecr:CompleteLayerUpload",
        "ecr:PutImage",
        "ecr:BatchGetImage",
        "ecr:BatchDeleteImage",
    } <= actions


def test_every_call_is_allowed_by_its_principals_policies(rehearsal: Rehearsal) -> None:
    denied = rehearsal.denied()
    assert not denied, "calls the deployed policies deny:\n" + "\n".join(denied)
