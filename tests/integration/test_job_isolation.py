"""A job's runner reaches its own attempt's data and nothing else (gantry.job_credentials).

moto enforces IAM on S3 requests here: every S3 call below is signed with the credentials
under test and checked against the role's policies by moto's own evaluator. Two harness
patches make that enforcement complete enough (see ``enforced_s3``): moto does not apply the
session policy of an assumed-role session (it keeps it, but evaluates only the role's
policies), so the patch also evaluates that session policy with moto's ``IAMPolicy`` and
denies what it does not allow, as AWS intersects the two; and moto computes no resource ARN
for other services' requests, so those (DynamoDB, STS from the platform side) are not
enforced.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from batch_runner import cli, credentials
from gantry import resources, timeutil
from gantry.contract import new_signing_key, verify_result
from gantry.job_credentials import claim_token, claim_value, refresh_token
from gantry.job_states import JobStatus
from gantry.jobs import Job
from gantry.local.client import LambdaContextStub
from lambdas import job_credentials, runtime

ACCOUNT = "123456789012"
SYSTEM_PYTHON = "/usr/bin/python3"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "*"}
    ],
}


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _role(iam: Any, name: str, policy: str) -> str:
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))
    iam.put_role_policy(RoleName=name, PolicyName="access", PolicyDocument=policy)
    return str(arn["Role"]["Arn"])


def _session(credentials_: dict[str, Any]) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=credentials_["access_key"],
        aws_secret_access_key=credentials_["secret_key"],
        aws_session_token=credentials_["token"],
        region_name="us-east-1",
    )


@pytest.fixture
def enforced_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """From here on moto checks every S3 request against IAM, session policies included."""
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.access_control import IAMPolicy, IAMRequestBase, PermissionResult
    from moto.sts.models import sts_backends

    checked = IAMRequestBase.check_action_permitted

    def check_with_session_policy(self: Any, resource: str) -> None:
        checked(self, resource)
        key_id = getattr(self._access_key, "_access_key_id", None)
        for session in sts_backends[self.account_id]["aws"].assumed_roles:
            if session.access_key_id == key_id and session.policy:
                allowed = IAMPolicy(session.policy).is_action_permitted(self._action, resource)
                if allowed != PermissionResult.PERMITTED:
                    self._raise_access_denied()

    monkeypatch.setattr(IAMRequestBase, "check_action_permitted", check_with_session_policy)
    monkeypatch.setattr(
        ActionAuthenticatorMixin,
        "_authenticate_and_authorize_normal_action",
        lambda self, resource="*": None,
    )
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    yield


class Platform:
    """Two jobs with inputs in their io/ prefixes, the roles of the stack, the function."""

    def __init__(self, ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ctx = ctx
        self.bucket = ctx.settings.bucket_name
        iam = boto3.client("iam", region_name="us-east-1")
        io_objects = f"arn:aws:s3:::{self.bucket}/{resources.PREFIX_IO}*"
        # As in the stack: the data role holds io/, the job role only may call the function.
        data_role = _role(
            iam,
            "gantry-job-data",
            _policy(
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                    "Resource": io_objects,
                }
            ),
        )
        self.job_role = _role(
            iam,
            "gantry-job",
            _policy(
                {
                    "Effect": "Allow",
                    "Action": "lambda:InvokeFunction",
                    "Resource": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:"
                    + resources.DEFAULT_JOB_CREDENTIALS_FUNCTION,
                }
            ),
        )
        ctx.settings = ctx.settings.model_copy(update={"job_data_role_arn": data_role})
        monkeypatch.setattr(runtime, "_context", ctx)
        self.jobs = [self.job(), self.job()]
        s3 = ctx.clients.s3
        for job in self.jobs:
            s3.put_object(Bucket=self.bucket, Key=self.input_key(job), Body=b'{"case": 1}')
        s3.put_object(Bucket=self.bucket, Key="values/secret.json", Body=b"{}")

    def job(self, status: JobStatus = JobStatus.PROVISIONED) -> Job:
        moment = timeutil.iso()
        job = Job(
            pk=str(uuid.uuid4()),
            algorithm="a",
            algorithm_image="i",
            creator="alice",
            status=status,
            time_limit=300,
            signing_key=new_signing_key(),
            created=moment,
            modified=moment,
        )
        self.ctx.store.jobs.create(job, input_images=[])
        return job

    @staticmethod
    def input_key(job: Job) -> str:
        return f"{resources.io_input_prefix(job.pk, job.attempt)}case.json"

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The credentials function's real handler, as Lambda would call it."""
        return job_credentials.handler(payload, LambdaContextStub())

    def claim(self, job: Job) -> dict[str, Any]:
        return self.invoke({"job": job.pk, "attempt": job.attempt, "claim": claim_token(job)})

    def job_role_session(self) -> boto3.session.Session:
        sts = boto3.client("sts", region_name="us-east-1")
        response = sts.assume_role(RoleArn=self.job_role, RoleSessionName="task")
        c = response["Credentials"]
        return _session(
            {
                "access_key": c["AccessKeyId"],
                "secret_key": c["SecretAccessKey"],
                "token": c["SessionToken"],
            }
        )


@pytest.fixture
def platform(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> Platform:
    return Platform(ctx, monkeypatch)


def _denied(call: Any, **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as error:
        return error.response["Error"]["Code"] == "AccessDenied"
    return False


def test_credentials_reach_their_own_attempt_only(platform: Platform, enforced_s3: None) -> None:
    mine, other = platform.jobs
    answer = platform.claim(mine)
    assert answer["signing_key"] == mine.signing_key
    s3 = _session(answer["credentials"]).client("s3")
    bucket = platform.bucket

    assert s3.get_object(Bucket=bucket, Key=platform.input_key(mine))["Body"].read()
    own_output = f"{resources.io_output_prefix(mine.pk, 1)}result.json"
    s3.put_object(Bucket=bucket, Key=own_output, Body=b"{}")

    assert _denied(s3.get_object, Bucket=bucket, Key=platform.input_key(other))
    assert _denied(
        s3.put_object,
        Bucket=bucket,
        Key=resources.result_key(resources.io_output_prefix(other.pk, 1)),
        Body=b"{}",
    )
    # The next attempt of the same job is another prefix, and other data is out of reach.
    assert _denied(s3.put_object, Bucket=bucket, Key=f"io/{mine.pk}/2/input/x", Body=b"")
    assert _denied(s3.get_object, Bucket=bucket, Key="values/secret.json")
    assert _denied(s3.list_objects_v2, Bucket=bucket, Prefix=resources.PREFIX_IO)


def test_the_job_role_itself_reads_no_job_data(platform: Platform, enforced_s3: None) -> None:
    s3 = platform.job_role_session().client("s3")
    for job in platform.jobs:
        assert _denied(s3.get_object, Bucket=platform.bucket, Key=platform.input_key(job))


def test_a_claim_is_redeemed_once_and_refreshed_with_its_own_token(platform: Platform) -> None:
    job, other = platform.jobs
    first = platform.claim(job)
    assert "credentials" in first
    assert platform.claim(job) == {
        "error": "The job's credentials cannot be issued: the claim was already redeemed"
    }
    # Another job's claim token, a wrong attempt or a made-up job get nothing.
    stolen = {"job": job.pk, "attempt": 1, "claim": claim_token(other)}
    assert "credentials" not in platform.invoke(stolen)
    assert "credentials" not in platform.invoke({**stolen, "attempt": 2})
    assert "credentials" not in platform.invoke({**stolen, "job": str(uuid.uuid4())})
    assert "credentials" not in platform.invoke({"job": job.pk, "attempt": 1})

    renewal = {"job": job.pk, "attempt": 1, "refresh": first["refresh"]}
    renewed = platform.invoke(renewal)
    assert renewed["credentials"]["access_key"] != first["credentials"]["access_key"]
    assert "signing_key" not in renewed
    # The refresh token is no claim, and the claim token no refresh token.
    assert "credentials" not in platform.invoke({**renewal, "refresh": claim_token(job)})
    assert "credentials" not in platform.invoke(
        {"job": other.pk, "attempt": 1, "refresh": refresh_token(other)}
    )

    platform.ctx.store.jobs.transition(job.pk, attempt=1, status=JobStatus.SUCCESS)
    assert platform.invoke(renewal) == {
        "error": "The job's credentials cannot be issued: the attempt is not running"
    }


@contextlib.contextmanager
def _as_platform() -> Iterator[None]:
    """A block in which S3 calls with the platform's own credentials are not checked."""
    from moto import settings as moto_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 10**9)
        yield


def _run_runner(
    platform: Platform, job: Job, input_keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, Any]:
    """The runner's command line as the job definition runs it; the verified result."""
    bucket = platform.bucket
    output_prefix = resources.io_output_prefix(job.pk, 1)
    invocation = {
        "pk": job.pk,
        "inputs": [
            {"relative_path": "case.json", "bucket_name": bucket, "bucket_key": key}
            for key in input_keys
        ],
        "output_bucket_name": bucket,
        "output_prefix": output_prefix,
        "timeout": 60,
    }
    invocation_key = resources.invocation_key(job.pk, 1)
    with _as_platform():  # the provisioner writes the invocation
        platform.ctx.clients.s3.put_object(
            Bucket=bucket, Key=invocation_key, Body=json.dumps(invocation).encode()
        )
    monkeypatch.setenv(resources.ENV_CREDENTIALS_FUNCTION, "gantry-job-credentials")
    monkeypatch.setenv(resources.ENV_JOB_CLAIM, claim_value(job))
    monkeypatch.delenv(resources.ENV_SIGNING_KEY, raising=False)
    monkeypatch.setattr(credentials, "lambda_invoker", lambda function, region: platform.invoke)
    root = Path(tempfile.mkdtemp(prefix="gantry-isolation-test-"))
    root.chmod(0o755)
    copy = (
        "import os, shutil; shutil.copy(os.path.join(os.environ['INPUT_DIR'], 'case.json'), "
        "os.path.join(os.environ['OUTPUT_DIR'], 'copy.json'))"
    )
    try:
        code = cli.main(
            [
                "invoke",
                "--file",
                f"s3://{bucket}/{invocation_key}",
                "--sandbox",
                "off",
                "--input-root",
                str(root / "input"),
                "--output-root",
                str(root / "output"),
                "--",
                SYSTEM_PYTHON,
                "-c",
                copy,
            ]
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with _as_platform():  # on_job_event reads the result
        stored = platform.ctx.clients.s3.get_object(
            Bucket=bucket, Key=resources.result_key(output_prefix)
        )
        result = verify_result(
            body=stored["Body"].read(),
            signature_hex=stored["Metadata"].get(resources.SIGNATURE_METADATA_KEY),
            key_hex=job.signing_key,
            expected_pk=job.pk,
        )
    return code, result


def test_runner_claims_its_credentials_and_signs_with_the_key_it_was_given(
    platform: Platform, enforced_s3: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = platform.jobs
    code, result = _run_runner(platform, job, [platform.input_key(job)], monkeypatch)
    assert code == cli.EXIT_OK
    assert result.return_code == 0, result.user_safe_error_message
    with _as_platform():
        copied = platform.ctx.clients.s3.get_object(
            Bucket=platform.bucket, Key=f"{resources.io_output_prefix(job.pk, 1)}copy.json"
        )
        assert copied["Body"].read() == b'{"case": 1}'


def test_runner_given_another_jobs_input_cannot_read_it(
    platform: Platform, enforced_s3: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, other = platform.jobs
    code, result = _run_runner(platform, job, [platform.input_key(other)], monkeypatch)
    # The runner still writes its signed result: the job fails with a reason.
    assert code == cli.EXIT_OK
    assert result.return_code != 0
    assert result.user_safe_error_message
    assert result.outputs == []


def test_session_policy_judged_by_the_iam_rehearsals_evaluator() -> None:
    """The same verdicts from the evaluator tests/iam applies to every recorded call."""
    from gantry.job_credentials import session_policy
    from tests.iam.evaluate import Request, allowed

    bucket = "arn:aws:s3:::gantry-data"
    statements = session_policy(bucket, "job-a", 2)["Statement"]

    def may(action: str, key: str) -> bool:
        return allowed(statements, Request(action=action, resource=f"{bucket}/{key}"))

    assert may("s3:GetObject", "io/job-a/2/input/case.json")
    assert may("s3:PutObject", "io/job-a/2/output/.sagemaker_shim/inference_result.json")
    assert not may("s3:GetObject", "io/job-b/2/input/case.json")
    assert not may("s3:PutObject", "io/job-a/1/output/score.json")
    assert not may("s3:GetObject", "io/job-a/20/input/case.json")
    assert not may("s3:DeleteObject", "io/job-a/2/input/case.json")
    assert not may("s3:GetObject", "values/job-a/score.json")
