"""The seven Lambda functions and exactly what each may touch.

| function       | trigger                          | table | S3 prefixes (read+write)          |
|----------------|----------------------------------|-------|-----------------------------------|
| api            | API Gateway proxy                | rw    | uploads values io dropbox-results |
| on_upload      | SQS (uploads/ notifications)     | rw    | uploads values io models          |
| on_import      | SQS (imports queue)              | rw    | uploads (read only), models;      |
|                |                                  |       | pushes to the image repository    |
| on_dropbox     | SQS (dropbox/ notifications)     | rw    | dropbox uploads values io         |
|                |                                  |       | dropbox-results models            |
| on_job_event   | EventBridge (Batch, SageMaker)   | rw    | io dropbox uploads values         |
|                |                                  |       | dropbox-results models            |
| sweeper        | schedule (rate 5 minutes)        | rw    | io dropbox uploads values         |
|                |                                  |       | dropbox-results models            |
| on_archive_run | SQS (archive-run pages, job ends)| rw    | io values                         |

Every function but on_import may control compute jobs (submit, describe, cancel; register
``gantry-runner*`` job definitions; pass the job roles): a job is submitted by whichever
at-least-once handler completes its inputs (API for ready values, on_upload after an upload
validates, on_dropbox for a dropped file, on_job_event for a retry attempt, the sweeper for a
stuck one). Whoever submits may also fail the job (a submission refused for good; the API also
cancels), so each of them may put ``Gantry Job …`` events: a lost "Gantry Job Failed" would
leave a drop folder without its result file. The drop folder copies dropped files to
``uploads/`` (the upload records jobs are made from). The sweeper finishes jobs the callback
missed, outputs and images included, and restarts jobs whose inputs live under ``values/``: it
has the callback's prefixes and its imaging code package. The IAM rehearsal (tests/iam) checks
these grants against the calls the code makes. Functions that create jobs (api, on_dropbox,
on_upload, the sweeper: it reconciles the drop folder and resends lost validations) may send
"validate-inputs" messages to the uploads queue, which on_upload consumes next to the S3
notifications. The API sends "import-image", "import-model" and "import-bioimageio" messages
to the imports queue, which on_import consumes: it imports model tarballs into ``models/`` (a
registered bioimage.io package becomes its algorithm's model there too); whoever provisions a
job copies its model from there into the job's ``io/`` prefix, the only one its runner's
credentials reach. Archive runs: the API queues a run's first page of items, on_archive_run
makes that page's jobs (queued for on_upload to provision, as the API's are) and queues the
next page, copies finished jobs' output files into the items (io/ to values/) and cancels the
unfinished jobs of a cancelled run; the sweeper resends the page of a run that waits for a job
slot or whose message was lost, and copies the outputs whose job-end event was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from gantry import resources as r
from infra.access import grant_prefixes, grant_table
from infra.compute import Compute
from infra.config import GantryConfig
from infra.functions import FunctionSpec, GantryFunction
from infra.packaging import LambdaCode

# What making a drop folder's jobs and finishing them touches: the dropped files, their
# copies as uploads, the jobs' values and io, the result files written back, the models that
# provisioning copies. on_dropbox makes those jobs; on_job_event and the sweeper finish them
# (and reconcile the drop folder through on_dropbox's code).
DROP_FOLDER_PREFIXES = (
    r.PREFIX_DROPBOX,
    r.PREFIX_UPLOADS,
    r.PREFIX_VALUES,
    r.PREFIX_IO,
    r.PREFIX_DROPBOX_RESULTS,
    r.PREFIX_MODELS,
)


@dataclass(frozen=True)
class Access:
    prefixes: tuple[str, ...]
    # Sends "validate-inputs" messages to the uploads queue (jobs whose inputs need checking).
    send_uploads: bool = False
    # Prefixes it only reads.
    reads: tuple[str, ...] = ()
    # Submits and ends compute jobs and announces them (every function that handles jobs).
    jobs: bool = True
    # Sends "import-image" messages to the imports queue (the API).
    send_imports: bool = False
    # Sends pages of archive runs to the archive-runs queue (starts or resumes a run).
    send_archive_runs: bool = False


SPECS: dict[str, tuple[FunctionSpec, Access]] = {
    "api": (
        FunctionSpec(
            name="api",
            handler="lambdas.api.app.handler",
            description="Gantry REST API (/api/v1/)",
            memory_mib=1024,
            timeout_seconds=29,
        ),
        Access(
            (r.PREFIX_UPLOADS, r.PREFIX_VALUES, r.PREFIX_IO, r.PREFIX_DROPBOX_RESULTS),
            send_uploads=True,
            send_imports=True,
            send_archive_runs=True,
        ),
    ),
    "on_upload": (
        FunctionSpec(
            name="on_upload",
            handler="lambdas.on_upload.handler",
            description="Validates completed uploads (reads image headers)",
            imaging=True,
            memory_mib=2048,
            timeout_seconds=120,
            ephemeral_mib=4096,
        ),
        Access(
            (r.PREFIX_UPLOADS, r.PREFIX_VALUES, r.PREFIX_IO, r.PREFIX_MODELS), send_uploads=True
        ),
    ),
    "on_import": (
        FunctionSpec(
            name="on_import",
            handler="lambdas.on_import.handler",
            description="Imports uploaded algorithm images (validates, adds the runner, "
            "pushes to ECR) and bioimage.io model packages",
            # Memory buys network and CPU (layers are hashed as they stream); the archive
            # streams from S3 to the registry, nothing of it is kept on disk. A bioimage.io
            # package is kept in /tmp while it is checked: the zip, unpacked, as a tarball.
            memory_mib=2048,
            timeout_seconds=900,
            ephemeral_mib=4096,
            bioimageio=True,
        ),
        # Reads uploads; pushes to the image repository (infra/image_import.py); stores
        # uploaded model tarballs and bioimage.io packages as algorithms' models (models/).
        Access((r.PREFIX_MODELS,), reads=(r.PREFIX_UPLOADS,), jobs=False),
    ),
    "on_dropbox": (
        FunctionSpec(
            name="on_dropbox",
            handler="lambdas.on_dropbox.handler",
            description="Turns files dropped under dropbox/<algorithm>/ into jobs",
            memory_mib=512,
            timeout_seconds=60,
        ),
        Access(DROP_FOLDER_PREFIXES, send_uploads=True),
    ),
    "on_job_event": (
        FunctionSpec(
            name="on_job_event",
            handler="lambdas.on_job_event.handler",
            description="Applies Batch/SageMaker state changes; parses and validates outputs",
            imaging=True,
            memory_mib=2048,
            timeout_seconds=120,
            ephemeral_mib=4096,
        ),
        # It also reconciles the drop folder (a drop whose notification was lost becomes its
        # job through on_dropbox's code) and resends lost validation messages.
        Access(
            DROP_FOLDER_PREFIXES,
            send_uploads=True,
        ),
    ),
    "sweeper": (
        FunctionSpec(
            name="sweeper",
            handler="lambdas.sweeper.handler",
            description="Reconciles jobs whose events were lost or that outlived their limit",
            # It completes jobs as the callback does, image outputs included.
            imaging=True,
            memory_mib=2048,
            timeout_seconds=240,
            ephemeral_mib=4096,
        ),
        # It also reconciles the drop folder (a drop whose notification was lost becomes its
        # job through on_dropbox's code) and resends lost validation messages.
        Access(
            DROP_FOLDER_PREFIXES,
            send_uploads=True,
            send_archive_runs=True,
        ),
    ),
    "on_archive_run": (
        FunctionSpec(
            name="on_archive_run",
            handler="lambdas.on_archive_run.handler",
            description="Makes the jobs of a page of an archive run; writes outputs back",
            memory_mib=512,
            timeout_seconds=120,
        ),
        Access((r.PREFIX_IO, r.PREFIX_VALUES), send_uploads=True, send_archive_runs=True),
    ),
}


class Handlers(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: GantryConfig,
        code: LambdaCode,
        environment: Mapping[str, str],
        table: dynamodb.ITable,
        bucket: s3.IBucket,
        bus: events.IEventBus,
        uploads_queue: sqs.IQueue,
        imports_queue: sqs.IQueue,
        archive_runs_queue: sqs.IQueue,
        compute: Compute,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.functions: dict[str, lambda_.Function] = {}
        for name, (spec, access) in SPECS.items():
            reserved = (
                config.job_events_reserved_concurrency or None if name == "on_job_event" else None
            )
            wrapper = GantryFunction(
                self,
                _pascal(name),
                spec=spec,
                code=code,
                environment=environment,
                log_level=config.log_level,
                log_retention_days=config.log_retention_days,
                removal_policy=removal_policy,
                reserved_concurrency=reserved,
            )
            fn = wrapper.function
            if spec.imaging:
                code.grant_simpleitk(fn)
            grant_table(fn, table, write=True)
            grant_prefixes(fn, bucket, read=access.reads, write=access.prefixes)
            if access.jobs:
                for statement in compute.control_statements():
                    fn.add_to_role_policy(statement)
                compute.acknowledge_control(wrapper)
                bus.grant_put_events_to(fn)
            if access.send_uploads:
                uploads_queue.grant_send_messages(fn)
            if access.send_imports:
                imports_queue.grant_send_messages(fn)
            if access.send_archive_runs:
                archive_runs_queue.grant_send_messages(fn)
            self.functions[name] = fn

    def __getitem__(self, name: str) -> lambda_.Function:
        return self.functions[name]


def _pascal(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))
