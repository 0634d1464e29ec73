"""Importing an algorithm image on a deployment: the context is wired as the deployed functions
wire it (settings name the imports queue, the ECR repository and the runner layer), the API
queues the import on the imports queue and the import function pushes the image. AWS calls go
to moto (ECR's authorization token, S3, SQS, DynamoDB, Batch); the bytes go to a real registry
(the CNCF distribution registry on loopback, asking for the token's credentials), since moto's
ECR keeps no layer bytes and serves no pulls."""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gantry.oci.local_registry import local_registry
from gantry.oci.mutate import MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_OCI_MANIFEST, LayerFile
from gantry.oci.registry import Registry
from gantry.pipeline.registry_publisher import RegistryPublisher, ensure_publisher, image_tag
from gantry.resources import ENV_ALGORITHM_CMD, ENV_ALGORITHM_ENTRYPOINT, RUNNER_BINARY_PATH
from lambdas import on_import
from tests.conftest import sqs_event
from tests.image_builder import ImageSpec, directory, file, write_archive
from tests.integration.test_image_import import USER_LAYER, upload
from tests.integration.test_oci_push import _ensure_registry, runner_layer  # noqa: F401

pytestmark = pytest.mark.slow

REPOSITORY = "gantry-algorithm-images"


def _spec(**overrides: Any) -> ImageSpec:
    fields: dict[str, Any] = {
        "entrypoint": ["/bin/algorithm"],
        "cmd": ["--threshold", "0.5"],
        "user": "user",
        **overrides,
    }
    big = [directory("data"), file("data/weights", os.urandom(300_000))]
    return ImageSpec(layers=[USER_LAYER, big], **fields)


def _htpasswd(path: Path, user: str, password: str) -> Path | None:
    """An htpasswd file for the registry (bcrypt, from glibc's crypt), None without crypt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
        # The fewest bcrypt rounds: the registry checks the password on every request.
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    path.write_text(f"{user}:{hashed}\n")
    return path


@pytest.fixture
def deployed(ctx, runner_layer: LayerFile, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A context with a deployment's import settings, its publisher pointed at a registry on
    loopback that wants the credentials of ECR's authorization token."""
    _ensure_registry()
    sqs = ctx.clients.sqs
    queues = {
        name: sqs.create_queue(QueueName=name)["QueueUrl"]
        for name in ("gantry-uploads", "gantry-imports")
    }
    ctx.settings = ctx.settings.model_copy(
        update={
            "uploads_queue_url": queues["gantry-uploads"],
            "imports_queue_url": queues["gantry-imports"],
            "image_repository": REPOSITORY,
            "runner_layer_path": str(runner_layer.path),
        }
    )
    publisher = ensure_publisher(ctx)
    assert isinstance(publisher, RegistryPublisher)
    ecr = ctx.clients.client("ecr")
    ecr.create_repository(repositoryName=REPOSITORY)
    token = Registry.ecr(ecr)
    htpasswd = _htpasswd(tmp_path / "htpasswd", str(token.username), str(token.password))
    with local_registry(tmp_path / "registry", htpasswd=htpasswd) as url:
        tokens: list[Registry] = []

        def registry() -> Registry:
            # ECR's token, through boto3, as the deployed publisher gets it; the registry
            # endpoint is the one on loopback instead of the token's proxyEndpoint.
            issued = Registry.ecr(ctx.clients.client("ecr"))
            tokens.append(issued)
            return Registry(url, issued.username, issued.password, chunk_bytes=256 * 1024)

        publisher.registry = registry
        yield {
            "url": url,
            "publisher": publisher,
            "tokens": tokens,
            "queues": queues,
            "reader": Registry(url, token.username, token.password),
        }


@pytest.fixture
def algorithm(api) -> dict[str, Any]:
    for title, kind, path in [("Number", "Integer", "number.json"), ("Result", "Float", "r.json")]:
        status, body, _ = api.post(
            "components/interfaces/", {"title": title, "kind": kind, "relative_path": path}
        )
        assert status == 201, body
    status, created, _ = api.post(
        "algorithms/",
        {"title": "Adder", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    assert status == 201, created
    return created


def deliver_imports(ctx, queue_url: str) -> int:
    """The imports queue's messages to the import function, as its event source does."""
    sqs = ctx.clients.sqs
    handled = 0
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        response = on_import.process(ctx, sqs_event([m["Body"] for m in messages]))
        assert response["batchItemFailures"] == []
        for message in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        handled += len(messages)
    return handled


def import_archive(ctx, api, deployed, algorithm, archive: Path) -> dict[str, Any]:
    done = upload(ctx, api, archive)
    status, image, _ = api.post(
        "algorithms/images/", {"algorithm": algorithm["api_url"], "user_upload": done["api_url"]}
    )
    assert status == 201, image
    assert image["import_status"] == "Queued"
    # Imports go to the import function's queue, not to the upload handler's.
    uploads = ctx.clients.sqs.receive_message(QueueUrl=deployed["queues"]["gantry-uploads"])
    assert "Messages" not in uploads
    assert deliver_imports(ctx, deployed["queues"]["gantry-imports"]) == 1
    return api.get(f"algorithms/images/{image['pk']}/")[1]


def test_an_import_pushes_the_image_with_the_runner_to_the_repository(
    ctx,
    api,
    deployed,
    algorithm,
    runner_layer: LayerFile,  # noqa: F811
    tmp_path: Path,
) -> None:
    archive = write_archive(tmp_path / "image.tar.gz", _spec(), compression="gzip")

    image = import_archive(ctx, api, deployed, algorithm, archive)

    assert image["import_status"] == "Completed", image["status"]
    assert image["is_in_registry"] is True
    assert image["is_desired_version"] is True
    host = deployed["url"].removeprefix("http://")
    reference = image["image"]
    assert reference.startswith(f"{host}/{REPOSITORY}@sha256:")
    assert deployed["tokens"], "the push authenticates with ECR's authorization token"
    # What the registry holds: the image's layers, then the runner's; the runner as the
    # command; the algorithm's own entrypoint and command where the runner reads them.
    reader: Registry = deployed["reader"]
    digest = reference.rpartition("@")[2]
    raw, _ = reader.get_manifest(REPOSITORY, digest)
    manifest = json.loads(raw)
    assert len(manifest["layers"]) == 3
    assert manifest["layers"][-1] == {
        "mediaType": MEDIA_TYPE_LAYER_TAR,
        "digest": runner_layer.digest,
        "size": runner_layer.size,
    }
    with reader.open_blob(REPOSITORY, manifest["config"]["digest"]) as stream:
        config = json.loads(stream.read())["config"]
    assert config["Cmd"] == [RUNNER_BINARY_PATH]
    assert "Entrypoint" not in config
    env = dict(item.split("=", 1) for item in config["Env"])
    assert json.loads(base64.b64decode(env[ENV_ALGORITHM_ENTRYPOINT])) == ["/bin/algorithm"]
    assert json.loads(base64.b64decode(env[ENV_ALGORITHM_CMD])) == ["--threshold", "0.5"]
    # Tagged with the image's pk, which the lifecycle policy keeps.
    tagged, _ = reader.get_manifest(REPOSITORY, image_tag(image["pk"]))
    assert tagged == raw

    # Jobs run the pushed image: the Batch backend's job definition for it names the digest.
    from gantry.compute.batch import BatchBackend
    from tests.integration.pipeline_support import create_batch_resources

    settings = ctx.settings.model_copy(update={"compute_backend": "batch"})
    batch = ctx.clients.batch
    create_batch_resources(ctx.clients.client("iam"), batch, settings)
    record = ctx.store.algorithms.get_image(image["pk"])
    arn = BatchBackend(settings, batch).job_definition(record)
    [definition] = batch.describe_job_definitions(jobDefinitions=[arn])["jobDefinitions"]
    assert definition["containerProperties"]["image"] == reference


def test_a_retried_import_answers_the_image_already_pushed(
    ctx, api, deployed, algorithm, tmp_path: Path
) -> None:
    """The function that pushed died before recording the result: the queue's retry finds
    the image's tag (tags are immutable in the repository) and records the same digest."""
    from gantry.algorithms import ImportStatus
    from gantry.pipeline.wiring import import_image_message

    image = import_archive(
        ctx, api, deployed, algorithm, write_archive(tmp_path / "i.tar", _spec())
    )
    assert image["import_status"] == "Completed", image["status"]
    ctx.store.algorithms.update_image(
        image["pk"],
        lambda current: current.model_copy(update={"import_status": ImportStatus.STARTED}),
    )
    queue = deployed["queues"]["gantry-imports"]
    ctx.clients.sqs.send_message(QueueUrl=queue, MessageBody=import_image_message(image["pk"]))
    assert deliver_imports(ctx, queue) == 1
    again = api.get(f"algorithms/images/{image['pk']}/")[1]
    assert again["import_status"] == "Completed", again["status"]
    assert again["image"] == image["image"]


def test_an_import_past_the_functions_time_fails_with_a_reason(
    ctx, api, deployed, algorithm, tmp_path: Path
) -> None:
    deployed["publisher"].time_left(-1)
    image = import_archive(
        ctx, api, deployed, algorithm, write_archive(tmp_path / "i.tar", _spec())
    )
    assert image["import_status"] == "Failed"
    assert "did not finish within the import function's time limit" in image["status"]
    assert image["is_in_registry"] is False
    assert image["is_desired_version"] is False


def test_a_deployment_without_the_runner_layer_fails_imports_with_a_reason(
    ctx, api, deployed, algorithm, tmp_path: Path
) -> None:
    deployed["publisher"].runner_layer_path = tmp_path / "missing.tar"
    image = import_archive(
        ctx, api, deployed, algorithm, write_archive(tmp_path / "i.tar", _spec())
    )
    assert image["import_status"] == "Failed"
    assert "no runner layer" in image["status"]
    assert "make runner" in image["status"]


def test_a_removed_image_is_deleted_from_the_repository_by_the_import_function(
    ctx, deployed
) -> None:
    """Removing an image queues its deletion for the import function (the one principal the
    repository lets delete), which deletes it through ECR's API (moto's ECR here)."""
    from gantry.pipeline.registry_publisher import queue_deletion
    from tests.unit.test_compute_base import make_image

    ecr = ctx.clients.client("ecr")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST, "layers": []})
    pushed = ecr.put_image(repositoryName=REPOSITORY, imageManifest=manifest, imageTag="image-1")
    digest = pushed["image"]["imageId"]["imageDigest"]
    host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    image = make_image(pk="1", image=f"{host}/{REPOSITORY}@{digest}")
    elsewhere = make_image(pk="1", image=f"{host}/someone-elses@{digest}")
    queue = deployed["queues"]["gantry-imports"]

    assert queue_deletion(ctx, elsewhere) is False  # not this deployment's repository
    assert queue_deletion(ctx, image) is True
    assert deliver_imports(ctx, queue) == 1
    assert ecr.describe_images(repositoryName=REPOSITORY)["imageDetails"] == []
    # A second deletion (a duplicate message) finds nothing and is not an error.
    assert queue_deletion(ctx, image) is True
    assert deliver_imports(ctx, queue) == 1


def test_removing_an_image_keeps_another_algorithms_import_of_the_same_archive(
    ctx, deployed
) -> None:
    """Two editors who import the same archive into their own algorithms get one manifest in
    the repository under two tags (image-<pk> each): removing one image removes its tag only,
    and the other algorithm's jobs still find theirs."""
    from gantry.pipeline.registry_publisher import image_tag, queue_deletion
    from tests.unit.test_compute_base import make_image

    ecr = ctx.clients.client("ecr")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST, "layers": []})
    host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    theirs, mine = make_image(), make_image()
    for image in (theirs, mine):
        pushed = ecr.put_image(
            repositoryName=REPOSITORY, imageManifest=manifest, imageTag=image_tag(image.pk)
        )
        image.image = f"{host}/{REPOSITORY}@{pushed['image']['imageId']['imageDigest']}"
    assert theirs.image == mine.image
    queue = deployed["queues"]["gantry-imports"]

    assert queue_deletion(ctx, mine) is True
    assert deliver_imports(ctx, queue) == 1

    details = ecr.describe_images(repositoryName=REPOSITORY)["imageDetails"]
    assert [d["imageTags"] for d in details] == [[image_tag(theirs.pk)]]
    assert queue_deletion(ctx, theirs) is True
    assert deliver_imports(ctx, queue) == 1
    assert ecr.describe_images(repositoryName=REPOSITORY)["imageDetails"] == []
