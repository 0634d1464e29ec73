"""POST algorithms/images/ with a user upload: the archive is imported by the upload handler
(moto S3/SQS/DynamoDB), read as a stream, checked, and stored where jobs run it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gcapi.models import AlgorithmImage

from gantry.pipeline.image_import import store_publisher
from lambdas import on_upload
from tests.image_builder import ImageSpec, directory, file, write_archive

USER_LAYER = [
    directory("etc"),
    file("etc/passwd", "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
    file("etc/group", "root:x:0:\nuser:x:1000:\n"),
    directory("bin"),
    file("bin/algorithm", b"\x7fELF not really", mode=0o755),
]


def spec(**overrides: Any) -> ImageSpec:
    fields: dict[str, Any] = {"entrypoint": ["/bin/algorithm"], "user": "user", **overrides}
    return ImageSpec(layers=[USER_LAYER], **fields)


@pytest.fixture
def image_store() -> Iterator[Path]:
    # The image's USER must reach the store: not under pytest's owner-only folders.
    root = Path(tempfile.mkdtemp(prefix="gantry-import-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def platform(ctx, api, image_store) -> Any:
    queue_url = ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"uploads_queue_url": queue_url})
    ctx.image_publisher = store_publisher(image_store)
    for title, kind, path in [("Number", "Integer", "number.json"), ("Result", "Float", "r.json")]:
        status, body, _ = api.post(
            "components/interfaces/", {"title": title, "kind": kind, "relative_path": path}
        )
        assert status == 201, body
    status, algorithm, _ = api.post(
        "algorithms/",
        {"title": "Adder", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    assert status == 201, algorithm
    return algorithm


def upload(ctx, api, path: Path, filename: str | None = None) -> dict:
    """A completed user upload of ``path`` through the multipart API (one part)."""
    status, created, _ = api.post("uploads/", {"filename": filename or path.name})
    assert status == 201, created
    part = ctx.clients.s3.upload_part(
        Bucket=ctx.settings.bucket_name,
        Key=f"uploads/alice/{created['pk']}/{created['filename']}",
        UploadId=created["s3_upload_id"],
        PartNumber=1,
        Body=path.read_bytes(),
    )
    base = f"uploads/{created['pk']}/{created['s3_upload_id']}/"
    status, done, _ = api.patch(
        base + "complete-multipart-upload/",
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
        records = [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:gantry-uploads",
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
        response = on_upload.process(ctx, {"Records": records})
        assert response["batchItemFailures"] == []
        for m in messages:
            sqs.delete_message(
                QueueUrl=ctx.settings.uploads_queue_url, ReceiptHandle=m["ReceiptHandle"]
            )
        handled += len(messages)
    return handled


def import_archive(ctx, api, algorithm: dict, archive: Path) -> dict:
    done = upload(ctx, api, archive)
    status, image, _ = api.post(
        "algorithms/images/", {"algorithm": algorithm["api_url"], "user_upload": done["api_url"]}
    )
    assert status == 201, image
    assert image["import_status"] == "Queued"
    assert image["is_desired_version"] is False
    AlgorithmImage(**image)  # gcapi's model of an algorithm image
    assert drain(ctx) >= 1
    status, image, _ = api.get(f"algorithms/images/{image['pk']}/")
    assert status == 200
    return image


def job_body(algorithm: dict) -> dict:
    return {"algorithm": algorithm["api_url"], "inputs": [{"interface": "number", "value": 3}]}


def test_an_uploaded_image_is_imported_and_becomes_the_desired_version(
    ctx, api, platform, image_store, tmp_path
) -> None:
    archive = write_archive(tmp_path / "image.tar.gz", spec(), compression="gzip")
    status, refused, _ = api.post("algorithms/jobs/", job_body(platform))
    assert status == 400
    assert "Algorithm image is not ready to be used" in refused["detail"]

    image = import_archive(ctx, api, platform, archive)

    assert image["import_status"] == "Completed", image["status"]
    assert image["status"] == ""
    assert image["is_manifest_valid"] is True
    assert image["is_in_registry"] is True
    assert image["is_desired_version"] is True
    digest = image["image_sha256"]
    assert digest.startswith("sha256:")
    assert image["image"] == "oci:" + digest
    assert image["entrypoint"] == ["/bin/algorithm"]
    assert any(image_store.glob("images/sha256/*/rootfs/bin/algorithm"))
    desired = ctx.store.algorithms.desired_image(platform["pk"])
    assert desired is not None and desired.pk == image["pk"]

    # The same image again (another archive of it, uncompressed): refused, the first stays.
    again = write_archive(tmp_path / "again.tar", spec())
    second = import_archive(ctx, api, platform, again)
    assert second["import_status"] == "Failed"
    assert "already been uploaded to this algorithm" in second["status"]
    assert digest in second["status"]
    assert ctx.store.algorithms.desired_image(platform["pk"]).pk == image["pk"]

    # A new version becomes the desired one; the older stays, not desired.
    newer = write_archive(tmp_path / "newer.tar", spec(labels={"version": "2"}))
    third = import_archive(ctx, api, platform, newer)
    assert third["import_status"] == "Completed", third["status"]
    assert third["image_sha256"] != digest
    assert api.get(f"algorithms/images/{image['pk']}/")[1]["is_desired_version"] is False
    assert ctx.store.algorithms.desired_image(platform["pk"]).pk == third["pk"]


TWO_IMAGES = "The archive holds 2 images; save exactly one image per archive"

REFUSALS = [
    ("root", lambda p: write_archive(p, spec(user="")), "runs as root"),
    ("arm64", lambda p: write_archive(p, spec(architecture="arm64")), "linux/arm64"),
    (
        "no-command",
        lambda p: write_archive(p, ImageSpec(layers=[USER_LAYER], user="user")),
        "neither ENTRYPOINT nor CMD",
    ),
    (
        "not-a-tar",
        lambda p: (p.write_bytes(b"not an archive at all" * 100), p)[1],
        "not a tar archive",
    ),
]


@pytest.mark.parametrize(("name", "make", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_unrunnable_archives_fail_with_a_reason(
    ctx, api, platform, tmp_path, name, make, expected
) -> None:
    archive = make(tmp_path / f"{name}.tar")

    image = import_archive(ctx, api, platform, archive)

    assert image["import_status"] == "Failed"
    assert expected in image["status"], image["status"]
    assert image["is_manifest_valid"] is False
    assert image["is_in_registry"] is False
    assert image["is_desired_version"] is False
    status, refused, _ = api.post("algorithms/jobs/", job_body(platform))
    assert status == 400
    assert "Algorithm image is not ready to be used" in refused["detail"]


def test_two_images_name_the_problem(ctx, api, platform, tmp_path) -> None:
    archive = write_archive(tmp_path / "two.tar", [spec(), spec(tag="other:1", cmd=["x"])])
    image = import_archive(ctx, api, platform, archive)
    assert image["import_status"] == "Failed"
    assert TWO_IMAGES in image["status"], image["status"]


def test_without_a_publisher_the_import_fails_with_a_reason(ctx, api, platform, tmp_path) -> None:
    ctx.image_publisher = None
    image = import_archive(ctx, api, platform, write_archive(tmp_path / "i.tar", spec()))
    assert image["import_status"] == "Failed"
    assert "no image registry configured" in image["status"]
    assert image["is_manifest_valid"] is True


def test_refused_before_queueing(ctx, api, platform, tmp_path, monkeypatch) -> None:
    archive = write_archive(tmp_path / "image.tar", spec())
    done = upload(ctx, api, archive, filename="image.zip")
    body = {"algorithm": platform["api_url"], "user_upload": done["api_url"]}
    status, refused, _ = api.post("algorithms/images/", body)
    assert status == 400
    assert "not a container image archive" in refused["detail"]

    # The size limit (10 GB), lowered so a small archive is over it.
    monkeypatch.setattr("gantry.pipeline.image_import.MAX_IMAGE_ARCHIVE_BYTES", 100)
    done = upload(ctx, api, archive)
    body["user_upload"] = done["api_url"]
    status, refused, _ = api.post("algorithms/images/", body)
    assert status == 400
    assert "the limit is" in refused["detail"]

    # Upload and registered image fields together: one or the other.
    status, refused, _ = api.post("algorithms/images/", {**body, "image": "x"})
    assert status in (400, 422)
    assert "user_upload" in json.dumps(refused)
    assert drain(ctx) == 0


def test_an_import_interrupted_while_started_is_run_again(ctx, api, platform, tmp_path) -> None:
    """A handler that died mid-import leaves the image Started; the queue's redelivery runs
    the import again to its end (as Re-Queued while it runs)."""
    from gantry.algorithms import ImportStatus
    from gantry.pipeline.wiring import import_image_message

    done = upload(ctx, api, write_archive(tmp_path / "i.tar", spec()))
    body = {"algorithm": platform["api_url"], "user_upload": done["api_url"]}
    _, image, _ = api.post("algorithms/images/", body)
    # The first handler marked it Started and died; its message comes back.
    ctx.store.algorithms.update_image(
        image["pk"],
        lambda current: current.model_copy(update={"import_status": ImportStatus.STARTED}),
    )
    seen: list[str] = []
    publish = ctx.image_publisher

    def watching(ctx_, record, archive):  # the status while the image is being stored
        seen.append(ctx_.store.algorithms.get_image(record.pk).import_status.value)
        return publish(ctx_, record, archive)

    ctx.image_publisher = watching
    assert drain(ctx) == 1
    assert seen == ["Re-Queued"]
    assert api.get(f"algorithms/images/{image['pk']}/")[1]["import_status"] == "Completed"
    # A finished import is not run again by a late duplicate message.
    ctx.clients.sqs.send_message(
        QueueUrl=ctx.settings.uploads_queue_url, MessageBody=import_image_message(image["pk"])
    )
    assert drain(ctx) == 1
    assert seen == ["Re-Queued"]
