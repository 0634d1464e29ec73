"""POST algorithms/ with a bioimage.io model package: the algorithm is created at once with
an import status, and the import (moto S3/SQS/DynamoDB, the upload handler where no imports
queue is set) validates the package offline, creates its Image interfaces, stores it as the
algorithm's model and adds the runtime image; bad packages end Failed with the validator's
message and leave an algorithm no job can use."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnx")

from gantry.pipeline.bioimageio_import import RUN_COMMAND, import_bioimageio
from tests.bioimageio_support import build_package
from tests.conftest import ApiClient
from tests.integration.test_model_import import drain, upload


@pytest.fixture
def queued(ctx) -> Any:
    queue_url = ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"uploads_queue_url": queue_url})
    return ctx


def register(api, package: Any, **fields: Any) -> tuple[int, dict]:
    status, body, _ = api.post(
        "algorithms/",
        {"title": fields.pop("title", "Cells"), "bioimageio_package": package, **fields},
    )
    return status, body


def registered(ctx, api, zip_path: Path, **fields: Any) -> dict:
    """Upload the zip, register it, run the import; the algorithm as the API shows it."""
    done = upload(ctx, api, zip_path.read_bytes(), filename=zip_path.name)
    status, algorithm = register(api, done["api_url"], **fields)
    assert status == 201, algorithm
    assert algorithm["bioimageio"]["import_status"] == "Queued"
    assert algorithm["interfaces"] == []
    assert drain(ctx) == 1
    status, algorithm, _ = api.get(f"algorithms/{algorithm['pk']}/")
    assert status == 200
    return algorithm


def job_body(algorithm: dict) -> dict:
    return {"algorithm": algorithm["api_url"], "inputs": [{"interface": "raw", "value": 1}]}


@pytest.mark.parametrize("format_version", ["0.4", "0.5"])
def test_a_package_becomes_an_algorithm_with_its_model_and_image(
    queued, api, tmp_path: Path, format_version: str
) -> None:
    ctx = queued
    package = build_package(tmp_path / "cells", format_version=format_version)

    algorithm = registered(ctx, api, package.zip_path, requires_gpu_type="T4")

    record = algorithm["bioimageio"]
    assert record["import_status"] == "Completed", record
    assert record["format_version"].startswith(format_version)
    assert record["weights_format"] == "onnx"
    (socket_set,) = algorithm["interfaces"]
    assert [(s["slug"], s["kind"], s["relative_path"]) for s in socket_set["inputs"]] == [
        ("raw", "Image", "images/raw")
    ]
    assert [s["relative_path"] for s in socket_set["outputs"]] == ["images/prob"]
    assert algorithm["requires_gpu_type"] == "T4"
    # The package is the algorithm's desired model: a tarball of the package's files.
    stored = ctx.store.algorithms.get(algorithm["pk"])
    desired = ctx.store.models.desired(algorithm["pk"])
    assert desired is not None and desired.pk == stored.bioimageio.model
    tarball = ctx.clients.s3.get_object(Bucket=ctx.settings.bucket_name, Key=desired.key)
    with tarfile.open(fileobj=io.BytesIO(tarball["Body"].read())) as archive:
        names = set(archive.getnames())
    assert {"rdf.yaml", "model.onnx", "test_input.npy", "test_output.npy"} <= names
    # The image runs the runtime with this interpreter (no runtime image is set).
    image = ctx.store.algorithms.desired_image(algorithm["pk"])
    assert image is not None and image.pk == stored.bioimageio.image
    assert (image.image, image.entrypoint, image.command) == (
        "local",
        [sys.executable, "-m", "batch_runner.bioimageio"],
        RUN_COMMAND,
    )


def test_the_deployment_runtime_image_is_used_when_set(queued, api, tmp_path: Path) -> None:
    ctx = queued
    runtime = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/gantry@sha256:" + "b" * 64
    ctx.settings = ctx.settings.model_copy(update={"bioimageio_image": runtime})
    package = build_package(tmp_path / "cells")

    algorithm = registered(ctx, api, package.zip_path)

    image = ctx.store.algorithms.desired_image(algorithm["pk"])
    assert image is not None
    assert image.image == runtime
    assert image.entrypoint == ["python3", "-m", "batch_runner.bioimageio"]
    assert image.command == [
        "run",
        "--model",
        "/opt/ml/model",
        "--input-dir",
        "/input",
        "--output-dir",
        "/output",
    ]


def test_an_algorithm_asking_for_a_gpu_gets_the_gpu_runtime_image(
    queued, api, tmp_path: Path
) -> None:
    ctx = queued
    cpu, gpu = (f"registry.test/gantry@sha256:{c * 64}" for c in "cd")
    ctx.settings = ctx.settings.model_copy(
        update={"bioimageio_image": cpu, "bioimageio_gpu_image": gpu}
    )
    zip_path = build_package(tmp_path / "cells").zip_path

    on_gpu = registered(ctx, api, zip_path, title="On GPU", requires_gpu_type="T4")
    on_cpu = registered(ctx, api, zip_path, title="On CPU")

    images = {a["title"]: ctx.store.algorithms.desired_image(a["pk"]) for a in (on_gpu, on_cpu)}
    assert {title: image.image for title, image in images.items() if image} == {
        "On GPU": gpu,
        "On CPU": cpu,
    }


def test_a_deployment_without_a_runtime_image_refuses_registrations(
    queued, api, tmp_path: Path
) -> None:
    ctx = queued
    ctx.settings = ctx.settings.model_copy(update={"compute_backend": "batch"})

    algorithm = registered(ctx, api, build_package(tmp_path / "cells").zip_path)

    assert algorithm["bioimageio"]["import_status"] == "Failed"
    assert "no bioimage.io runtime image" in algorithm["bioimageio"]["status_message"]
    assert ctx.store.models.models_of(algorithm["pk"]) == []
    assert ctx.store.algorithms.images_of(algorithm["pk"]) == []


def test_a_second_package_reuses_the_interfaces(queued, api, tmp_path: Path) -> None:
    ctx = queued
    first = registered(ctx, api, build_package(tmp_path / "a").zip_path, title="First")
    second = registered(
        ctx, api, build_package(tmp_path / "b", format_version="0.4").zip_path, title="Second"
    )

    assert second["bioimageio"]["import_status"] == "Completed"
    assert second["interfaces"] == first["interfaces"]


def test_an_interface_of_another_kind_refuses_the_package(queued, api, tmp_path: Path) -> None:
    ctx = queued
    status, body, _ = api.post(
        "components/interfaces/", {"title": "raw", "kind": "Float", "relative_path": "raw.json"}
    )
    assert status == 201, body

    algorithm = registered(ctx, api, build_package(tmp_path / "a").zip_path)

    assert algorithm["bioimageio"]["import_status"] == "Failed"
    assert (
        "needs the Image interface 'raw' at 'images/raw'"
        in (algorithm["bioimageio"]["status_message"])
    )


def _missing_weights(rdf: dict) -> None:
    rdf["weights"]["onnx"]["source"] = "missing.onnx"


def _bad_sha(rdf: dict) -> None:
    rdf["weights"]["onnx"]["sha256"] = "0" * 64


def _time_axis(rdf: dict) -> None:
    rdf["inputs"][0]["axes"].insert(1, {"type": "time"})


def _unknown_op(rdf: dict) -> None:
    rdf["inputs"][0]["preprocessing"].append({"id": "frobnicate", "kwargs": {}})


def _zoo_id(rdf: dict) -> None:
    rdf["weights"]["onnx"]["source"] = "https://zenodo.org/records/1/files/model.onnx"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_missing_weights, "missing.onnx"),
        (_bad_sha, "SHA256 mismatch for model.onnx"),
        (_time_axis, "time"),
        (_unknown_op, "frobnicate"),
        (_zoo_id, "remote files"),
    ],
    ids=["missing-weights", "sha-mismatch", "wrong-axes", "unknown-op", "remote-weights"],
)
def test_a_bad_package_fails_with_the_validators_message(
    queued, api, tmp_path: Path, edit: Any, message: str
) -> None:
    ctx = queued
    package = build_package(tmp_path / "bad", edit=edit)

    algorithm = registered(ctx, api, package.zip_path)

    record = algorithm["bioimageio"]
    assert record["import_status"] == "Failed"
    assert message in record["status_message"], record["status_message"]
    # Nothing half-made: no socket set, model or image, and no job can start.
    assert algorithm["interfaces"] == []
    assert ctx.store.models.desired(algorithm["pk"]) is None
    assert ctx.store.algorithms.desired_image(algorithm["pk"]) is None
    status, body, _ = api.post("algorithms/jobs/", job_body(algorithm))
    assert status == 400
    assert "import is Failed" in body["algorithm"][0], body


def test_a_zip_that_is_no_package_fails(queued, api, tmp_path: Path) -> None:
    ctx = queued
    not_a_zip = tmp_path / "notes.zip"
    not_a_zip.write_bytes(b"these are notes, not a zip")

    algorithm = registered(ctx, api, not_a_zip)

    assert algorithm["bioimageio"]["import_status"] == "Failed"
    assert "not a zip file" in algorithm["bioimageio"]["status_message"]


def test_jobs_wait_for_the_import(queued, api, tmp_path: Path) -> None:
    ctx = queued
    done = upload(ctx, api, build_package(tmp_path / "a").zip_path.read_bytes(), "a.zip")
    status, algorithm = register(api, done["api_url"])
    assert status == 201

    status, body, _ = api.post("algorithms/jobs/", job_body(algorithm))

    assert status == 400
    assert body["algorithm"] == ["The algorithm's bioimage.io model package import is Queued"]
    status, body, _ = api.patch(f"algorithms/{algorithm['pk']}/", {"title": "Other"})
    assert status == 400 and "bioimageio_package" in body, body


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"bioimageio_package": "not_an_upload"}, "bioimageio_package", "not found"),
        ({"bioimageio_package": "affable-shark"}, "bioimageio_package", "zoo id"),
        ({"bioimageio_package": "10.5281/zenodo.5764892"}, "bioimageio_package", "zoo id"),
        (
            {"bioimageio_package": "https://zenodo.org/records/1/files/model.zip"},
            "bioimageio_package",
            "is a URL",
        ),
        (
            {"bioimageio_package": "s3://elsewhere/model.zip"},
            "bioimageio_package",
            "Only admins",
        ),
        (
            {"bioimageio_package": "x", "interfaces": [{"inputs": ["a"], "outputs": ["b"]}]},
            "interfaces",
            "leave out interfaces",
        ),
    ],
)
def test_bad_registrations_are_refused_naming_the_field(
    queued, api, fields: dict, field: str | None, message: str
) -> None:
    status, body, _ = api.post("algorithms/", {"title": "Cells", **fields})

    assert status == 400, body
    assert message in str(body)
    if field:
        assert field in body


def test_an_upload_that_is_no_zip_is_refused(queued, api) -> None:
    done = upload(queued, api, b"weights", filename="model.tar.gz")

    status, body = register(api, done["api_url"])

    assert status == 400
    assert "not a bioimage.io model package zip" in body["bioimageio_package"][0]


def test_admins_may_name_an_object_of_the_bucket(queued, api_app, tmp_path: Path) -> None:
    ctx = queued
    admin = ApiClient(api_app, ctx.store.users.create_token("root", is_admin=True))
    package = build_package(tmp_path / "cells")
    key = "packages/cells.zip"
    ctx.clients.s3.put_object(
        Bucket=ctx.settings.bucket_name, Key=key, Body=package.zip_path.read_bytes()
    )

    status, body = register(admin, f"s3://{ctx.settings.bucket_name}/missing.zip")
    assert status == 400 and "not found" in body["bioimageio_package"][0]
    status, algorithm = register(admin, f"s3://{ctx.settings.bucket_name}/{key}")
    assert status == 201, algorithm
    import_bioimageio(ctx, algorithm["pk"])

    assert ctx.store.algorithms.get(algorithm["pk"]).bioimageio.import_status == "Completed"


def test_the_import_function_takes_registrations_from_the_imports_queue(
    queued, api, tmp_path: Path
) -> None:
    from lambdas import on_import
    from tests.conftest import sqs_event

    ctx = queued
    imports = ctx.clients.sqs.create_queue(QueueName="gantry-imports")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"imports_queue_url": imports})
    done = upload(ctx, api, build_package(tmp_path / "a").zip_path.read_bytes(), "a.zip")
    status, algorithm = register(api, done["api_url"])
    assert status == 201

    (message,) = ctx.clients.sqs.receive_message(QueueUrl=imports)["Messages"]
    response = on_import.process(ctx, sqs_event([message["Body"]]))

    assert response["batchItemFailures"] == []
    stored = ctx.store.algorithms.get(algorithm["pk"])
    assert stored.bioimageio is not None
    assert stored.bioimageio.import_status == "Completed"


def test_access_requests_are_answered_while_the_import_runs(
    queued, api, api_bob, tmp_path: Path
) -> None:
    done = upload(queued, api, build_package(tmp_path / "a").zip_path.read_bytes(), "a.zip")
    status, algorithm = register(api, done["api_url"], access_request_handling="ACCEPT_ALL")
    assert status == 201

    status, body, _ = api_bob.post(f"algorithms/{algorithm['pk']}/access-requests/")

    assert status == 201, body
    stored = queued.store.algorithms.get(algorithm["pk"])
    assert stored.users == ["bob"]
    assert stored.bioimageio is not None and stored.bioimageio.import_status == "Queued"
