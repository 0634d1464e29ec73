"""POST algorithms/models/ with a user upload: the model tarball is imported by the upload
handler (moto S3/SQS/DynamoDB), hashed while it streams, checked with the runner's rule, and
the newest becomes the model the algorithm's next jobs run with."""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Any

import pytest

from gantry.pipeline.model_import import import_model
from gantry.services import algorithm_models
from lambdas import on_upload
from tests.conftest import sqs_event


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


MODEL_A = tarball({"weights.json": b'{"weight": 2}'})
MODEL_B = tarball({"weights.json": b'{"weight": 3}'})


@pytest.fixture
def platform(ctx, api) -> dict[str, Any]:
    queue_url = ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"uploads_queue_url": queue_url})
    for title, kind, path in [("Number", "Integer", "number.json"), ("Result", "Float", "r.json")]:
        status, body, _ = api.post(
            "components/interfaces/", {"title": title, "kind": kind, "relative_path": path}
        )
        assert status == 201, body
    status, algorithm, _ = api.post(
        "algorithms/",
        {
            "title": "Weighted",
            "interfaces": [{"inputs": ["number"], "outputs": ["result"]}],
            "users": ["bob"],
        },
    )
    assert status == 201, algorithm
    status, image, _ = api.post(
        "algorithms/images/",
        {"algorithm": algorithm["pk"], "image": "local", "command": ["run"], "sha256": "a" * 64},
    )
    assert status == 201, image
    return algorithm


def upload(ctx, api, body: bytes, filename: str = "model.tar.gz") -> dict:
    """A completed user upload of ``body`` through the multipart API (one part)."""
    status, created, _ = api.post("uploads/", {"filename": filename})
    assert status == 201, created
    part = ctx.clients.s3.upload_part(
        Bucket=ctx.settings.bucket_name,
        Key=created["key"],
        UploadId=created["s3_upload_id"],
        PartNumber=1,
        Body=body,
    )
    status, done, _ = api.patch(
        f"uploads/{created['pk']}/{created['s3_upload_id']}/complete-multipart-upload/",
        {"parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    assert status == 200, done
    return done


def drain(ctx) -> int:
    """Hand every message of the uploads queue to the upload handler; how many there were."""
    sqs = ctx.clients.sqs
    handled = 0
    while messages := sqs.receive_message(
        QueueUrl=ctx.settings.uploads_queue_url, MaxNumberOfMessages=10
    ).get("Messages", []):
        response = on_upload.process(ctx, sqs_event([m["Body"] for m in messages]))
        assert response["batchItemFailures"] == []
        for m in messages:
            sqs.delete_message(
                QueueUrl=ctx.settings.uploads_queue_url, ReceiptHandle=m["ReceiptHandle"]
            )
        handled += len(messages)
    return handled


def post_model(ctx, api, algorithm: dict, body: bytes, **extra: Any) -> dict:
    done = upload(ctx, api, body)
    status, model, _ = api.post(
        "algorithms/models/",
        {"algorithm": algorithm["api_url"], "user_upload": done["api_url"], **extra},
    )
    assert status == 201, model
    return model


def import_tarball(ctx, api, algorithm: dict, body: bytes, **extra: Any) -> dict:
    model = post_model(ctx, api, algorithm, body, **extra)
    assert model["import_status"] == "Queued"
    assert model["is_desired_version"] is False
    assert drain(ctx) >= 1
    status, model, _ = api.get(f"algorithms/models/{model['pk']}/")
    assert status == 200, model
    return model


def sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_an_uploaded_model_is_imported_and_becomes_the_desired_version(ctx, api, platform):
    model = import_tarball(ctx, api, platform, MODEL_A, comment="weights v1")

    assert model["import_status"] == "Completed", model["status"]
    assert model["status"] == ""
    assert model["sha256"] == sha256(MODEL_A)
    assert model["size_in_storage"] == len(MODEL_A)
    assert model["is_desired_version"] is True
    assert model["comment"] == "weights v1"
    assert model["algorithm"] == platform["api_url"]
    stored = ctx.store.models.get(model["pk"])
    body = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=stored.key)["Body"]
    assert body.read() == MODEL_A
    status, page, _ = api.get("algorithms/models/", query={"algorithm": platform["pk"]})
    assert status == 200
    assert page["count"] == 1
    assert [(m["pk"], m["import_status"]) for m in page["results"]] == [(model["pk"], "Completed")]


def test_the_same_bytes_again_are_refused_and_the_first_stays_desired(ctx, api, platform):
    first = import_tarball(ctx, api, platform, MODEL_A)
    again = import_tarball(ctx, api, platform, MODEL_A)

    assert again["import_status"] == "Failed"
    assert again["status"] == (
        f"This model has already been uploaded to this algorithm ({sha256(MODEL_A)}, "
        f"model {first['pk']}): activate that model instead of uploading it again"
    )
    assert again["is_desired_version"] is False
    assert ctx.store.models.desired(platform["pk"]).pk == first["pk"]
    # Only the first one's bytes are kept.
    listed = ctx.clients.s3.list_objects_v2(
        Bucket=ctx.settings.bucket_name, Prefix=f"models/{platform['pk']}/"
    )
    assert [o["Key"] for o in listed["Contents"]] == [ctx.store.models.get(first["pk"]).key]


def test_the_newest_model_is_desired_and_an_editor_switches_back(ctx, api, platform):
    older = import_tarball(ctx, api, platform, MODEL_A)
    newer = import_tarball(ctx, api, platform, MODEL_B)
    assert newer["is_desired_version"] is True
    assert api.get(f"algorithms/models/{older['pk']}/")[1]["is_desired_version"] is False

    status, changed, _ = api.patch(
        f"algorithms/models/{older['pk']}/", {"is_desired_version": True}
    )
    assert status == 200, changed
    assert changed["is_desired_version"] is True
    page = api.get("algorithms/models/")[1]
    assert {m["pk"]: m["is_desired_version"] for m in page["results"]} == {
        older["pk"]: True,
        newer["pk"]: False,
    }

    # Deactivated: the algorithm's next jobs run without a model.
    status, changed, _ = api.patch(
        f"algorithms/models/{older['pk']}/", {"is_desired_version": False}
    )
    assert status == 200, changed
    assert ctx.store.models.desired(platform["pk"]) is None


def test_an_older_import_finishing_last_does_not_take_over(ctx, api, platform):
    older = post_model(ctx, api, platform, MODEL_A)
    newer = post_model(ctx, api, platform, MODEL_B)
    import_model(ctx, newer["pk"])
    import_model(ctx, older["pk"])
    assert ctx.store.models.desired(platform["pk"]).pk == newer["pk"]
    # The same message again (SQS delivers at least once) changes nothing.
    import_model(ctx, older["pk"])
    assert ctx.store.models.desired(platform["pk"]).pk == newer["pk"]
    assert ctx.store.models.get(older["pk"]).import_status == "Completed"


def test_two_models_with_the_same_bytes_racing_cannot_both_complete(ctx, api, platform):
    one = post_model(ctx, api, platform, MODEL_A)
    two = post_model(ctx, api, platform, MODEL_A)
    # Both got past any check before either completed: the claim decides.
    drain(ctx)
    statuses = sorted(ctx.store.models.get(m["pk"]).import_status.value for m in (one, two))
    assert statuses == ["Completed", "Failed"]


def hostile(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        archive.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (hostile("../escape.txt"), "Model member '../escape.txt' is outside the model directory"),
        (hostile("/etc/x"), "Model member '/etc/x' has an absolute path"),
        (
            hostile("link", tarfile.SYMTYPE, "/etc/passwd"),
            "Model member 'link' links outside the model directory",
        ),
        (hostile("dev", tarfile.CHRTYPE), "Model member 'dev' is not a file or folder"),
        (b"\x1f\x8b not really gzip" * 10, "The model is not a tar archive"),
        (MODEL_A[: len(MODEL_A) // 2], "The model"),
    ],
    ids=["dotdot", "absolute", "symlink-out", "device", "not-a-tar", "truncated"],
)
def test_a_tarball_the_runner_would_refuse_fails_its_import(ctx, api, platform, body, reason):
    model = import_tarball(ctx, api, platform, body)
    assert model["import_status"] == "Failed"
    assert model["status"].startswith(f"model.tar.gz: {reason}"), model["status"]
    assert model["is_desired_version"] is False
    assert ctx.store.models.desired(platform["pk"]) is None


def test_refusals_before_queueing(ctx, api, api_bob, platform):
    done = upload(ctx, api, b"{}", filename="weights.json")
    status, body, _ = api.post(
        "algorithms/models/", {"algorithm": platform["pk"], "user_upload": done["pk"]}
    )
    assert status == 400
    assert body["user_upload"] == [
        "'weights.json' is not a model tarball (.tar.gz, .tgz; "
        "tar -czf model.tar.gz -C MODEL_FOLDER .)"
    ]
    # A user of the algorithm (not an editor) may neither add nor see its models.
    bob_upload = upload(ctx, api_bob, MODEL_A)
    status, body, _ = api_bob.post(
        "algorithms/models/", {"algorithm": platform["pk"], "user_upload": bob_upload["pk"]}
    )
    assert status == 403, body
    model = import_tarball(ctx, api, platform, MODEL_A)
    assert api_bob.get(f"algorithms/models/{model['pk']}/")[0] == 404
    assert api_bob.get("algorithms/models/")[1]["count"] == 0
    status, body, _ = api_bob.patch(
        f"algorithms/models/{model['pk']}/", {"is_desired_version": False}
    )
    assert status == 404, body


def test_a_deployment_imports_models_in_the_import_function(ctx, api, platform):
    """Where the deployment has an imports queue (15-minute function), a model's import goes
    there, as an image's does, not to the 2-minute upload handler."""
    from lambdas import on_import

    imports = ctx.clients.sqs.create_queue(QueueName="gantry-imports")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"imports_queue_url": imports})
    model = post_model(ctx, api, platform, MODEL_A)
    assert drain(ctx) == 0  # nothing for the upload handler
    messages = ctx.clients.sqs.receive_message(QueueUrl=imports, MaxNumberOfMessages=10)
    bodies = [m["Body"] for m in messages["Messages"]]
    assert len(bodies) == 1
    assert on_import.process(ctx, sqs_event(bodies))["batchItemFailures"] == []
    stored = ctx.store.models.get(model["pk"])
    assert stored.import_status.value == "Completed", stored.status_message
    assert stored.sha256 == sha256(MODEL_A)
    assert algorithm_models.desired_pks(ctx, {platform["pk"]}) == {model["pk"]}


def test_an_unknown_algorithm_is_a_400_naming_the_field(ctx, api, platform):
    done = upload(ctx, api, MODEL_A)
    status, body, _ = api.post(
        "algorithms/models/", {"algorithm": "no-such-algorithm", "user_upload": done["pk"]}
    )
    assert status == 400, body
    assert body["algorithm"] == ["Algorithm 'no-such-algorithm' not found"]
    # In the path it is the resource itself: not found.
    status, body, _ = api.post("algorithms/no-such-algorithm/models/", {"user_upload": done["pk"]})
    assert status == 404, body


def test_only_an_imported_model_can_be_activated(ctx, api, platform):
    queued = post_model(ctx, api, platform, MODEL_A)
    status, body, _ = api.patch(f"algorithms/models/{queued['pk']}/", {"is_desired_version": True})
    assert status == 400
    assert body["is_desired_version"] == [
        f"Model {queued['pk']} cannot be activated: its import is Queued"
    ]


def test_the_algorithm_path_route_adds_a_model_too(ctx, api, platform):
    done = upload(ctx, api, MODEL_A)
    status, model, _ = api.post(
        f"algorithms/{platform['pk']}/models/", {"user_upload": done["api_url"]}
    )
    assert status == 201, model
    drain(ctx)
    assert algorithm_models.desired_pks(ctx, {platform["pk"]}) == {model["pk"]}


def test_each_job_names_and_gets_the_model_it_was_created_with(ctx, api, platform):
    from gantry.pipeline.provision import build_invocation
    from gantry.services import catalog

    first_model = import_tarball(ctx, api, platform, MODEL_A)
    second_model = import_tarball(ctx, api, platform, MODEL_B)
    job_body = {"algorithm": platform["api_url"], "inputs": [{"interface": "number", "value": 3}]}
    status, second_job, _ = api.post("algorithms/jobs/", job_body)
    assert status == 201, second_job
    api.patch(f"algorithms/models/{first_model['pk']}/", {"is_desired_version": True})
    status, first_job, _ = api.post("algorithms/jobs/", job_body)
    assert status == 201, first_job
    # Switching again later changes neither job.
    api.patch(f"algorithms/models/{second_model['pk']}/", {"is_desired_version": True})

    for job, model, body in (
        (first_job, first_model, MODEL_A),
        (second_job, second_model, MODEL_B),
    ):
        detail = api.get(f"algorithms/jobs/{job['pk']}/")[1]
        assert detail["algorithm_model"] == model["api_url"]
        assert detail["algorithm_model_sha256"] == model["sha256"]
        assert detail["algorithm_image_sha256"] == "a" * 64
        stored = ctx.store.jobs.get(job["pk"])
        sockets = catalog.sockets_of(ctx, [ctx.store.algorithms.get(platform["pk"])])
        invocation = build_invocation(ctx, stored, sockets)
        # The runner gets the job's own copy of exactly that model, and checks its sha256.
        assert invocation.model is not None
        assert invocation.model.bucket_key.startswith(f"io/{job['pk']}/1/")
        assert invocation.model.sha256 == model["sha256"]
        copy = ctx.clients.s3.get_object(
            Bucket=invocation.model.bucket_name, Key=invocation.model.bucket_key
        )
        assert copy["Body"].read() == body


def test_a_job_of_an_algorithm_without_a_model_names_none(ctx, api, platform):
    job_body = {"algorithm": platform["api_url"], "inputs": [{"interface": "number", "value": 3}]}
    status, job, _ = api.post("algorithms/jobs/", job_body)
    assert status == 201, job
    detail = api.get(f"algorithms/jobs/{job['pk']}/")[1]
    assert detail["algorithm_model"] is None
    assert detail["algorithm_model_sha256"] is None


def test_an_editor_removes_a_model_and_its_tarball(ctx, api, api_bob, platform):
    older = import_tarball(ctx, api, platform, MODEL_A)
    newer = import_tarball(ctx, api, platform, MODEL_B)
    key = ctx.store.models.get(older["pk"]).key
    assert key is not None

    # Not the desired model, not by a user of the algorithm.
    status, body, _ = api.request("DELETE", f"algorithms/models/{newer['pk']}/")
    assert status == 400, body
    assert body["is_desired_version"] == [
        "This model is the algorithm's desired model: activate another or deactivate it "
        "before removing it"
    ]
    assert api_bob.request("DELETE", f"algorithms/models/{older['pk']}/")[0] == 404

    status, _, _ = api.request("DELETE", f"algorithms/models/{older['pk']}/")
    assert status == 204
    assert api.get(f"algorithms/models/{older['pk']}/")[0] == 404
    listed = api.get("algorithms/models/", query={"algorithm": platform["pk"]})[1]
    assert [m["pk"] for m in listed["results"]] == [newer["pk"]]
    objects = ctx.clients.s3.list_objects_v2(Bucket=ctx.settings.bucket_name, Prefix=key)
    assert objects.get("KeyCount", 0) == 0
    # Its bytes may be uploaded again (the sha256 claim went with it).
    again = import_tarball(ctx, api, platform, MODEL_A)
    assert again["import_status"] == "Completed", again["status"]


def test_a_model_still_importing_is_not_removed(ctx, api, platform):
    queued = post_model(ctx, api, platform, MODEL_A)
    status, body, _ = api.request("DELETE", f"algorithms/models/{queued['pk']}/")
    assert status == 400, body
    assert body["import_status"] == [
        "The model's import is Queued: wait for it to end before removing the model"
    ]


def test_on_a_deployment_the_import_function_deletes_the_removed_tarball(ctx, api, platform):
    from lambdas import on_import

    older = import_tarball(ctx, api, platform, MODEL_A)
    import_tarball(ctx, api, platform, MODEL_B)
    key = ctx.store.models.get(older["pk"]).key
    imports = ctx.clients.sqs.create_queue(QueueName="gantry-imports")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"imports_queue_url": imports})

    assert api.request("DELETE", f"algorithms/models/{older['pk']}/")[0] == 204

    bucket = ctx.settings.bucket_name
    assert ctx.clients.s3.list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"] == 1
    messages = ctx.clients.sqs.receive_message(QueueUrl=imports, MaxNumberOfMessages=10)
    bodies = [m["Body"] for m in messages["Messages"]]
    assert on_import.process(ctx, sqs_event(bodies))["batchItemFailures"] == []
    assert ctx.clients.s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0


def test_failed_model_imports_are_removed_after_the_retention_period(ctx, api, platform):
    from gantry.pipeline.sweeper import sweep

    failed = import_tarball(ctx, api, platform, b"not a tarball")
    done = import_tarball(ctx, api, platform, MODEL_A)
    assert failed["import_status"] == "Failed"

    ctx.settings = ctx.settings.model_copy(update={"failed_import_retention_seconds": 3600})
    assert sweep(ctx).models_removed == []  # within its retention period
    assert api.get(f"algorithms/models/{failed['pk']}/")[0] == 200

    ctx.settings = ctx.settings.model_copy(update={"failed_import_retention_seconds": 0})
    assert sweep(ctx).models_removed == [failed["pk"]]
    assert api.get(f"algorithms/models/{failed['pk']}/")[0] == 404
    assert api.get(f"algorithms/models/{done['pk']}/")[0] == 200
