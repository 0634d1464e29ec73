"""cases/upload-sessions/ through the API handler and the upload handler: completed uploads
become images of their uploader (the way gcapi up to 0.13 sends images), and jobs take a
session as an image input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from gcapi.models import Algorithm, HyperlinkedImage, RawImageUploadSession

from gantry.job_states import JobStatus
from gantry.pipeline.inputs import validate_pending_inputs
from gantry.pipeline.upload_sessions import group_image_files, import_upload_session
from lambdas.on_upload import handle_message
from tests.integration.test_inputs_support import (
    RecordingCompute,
    make_algorithm,
    make_socket,
    put_upload,
)

BASE = "https://api.gantry.test/api/v1/"  # the test settings' api_base_url


@pytest.fixture(autouse=True)
def uploads_queue(ctx) -> None:
    queue_url = ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"uploads_queue_url": queue_url})


@pytest.fixture
def algorithm(ctx):
    ctx.compute_backend = RecordingCompute()
    make_socket(ctx, "CT Image", "IMG", "images/ct")
    make_socket(ctx, "Threshold", "FLT", "threshold.json")
    make_socket(ctx, "Result", "JSON", "results.json")
    make_socket(ctx, "Mask", "IMG", "images/mask")
    return make_algorithm(
        ctx, "Segmenter", ["ct-image", "threshold"], ["result"], more_sets=[(["mask"], ["result"])]
    )


def volume(path: Path, fill: int = 3) -> Path:
    image = sitk.GetImageFromArray(np.full((4, 5, 6), fill, dtype=np.int16))
    image.SetSpacing((0.5, 0.75, 2.0))
    sitk.WriteImage(image, str(path), path.suffix == ".mha")
    return path


def queued_messages(ctx) -> list[dict]:
    response = ctx.clients.sqs.receive_message(
        QueueUrl=ctx.settings.uploads_queue_url, MaxNumberOfMessages=10
    )
    return [json.loads(m["Body"]) for m in response.get("Messages", [])]


def create_session(api, body: dict) -> dict:
    status, session, _ = api.post("cases/upload-sessions/", body)
    assert status == 201, session
    return session


def test_session_with_uploads_imports_each_image(ctx, api, tmp_path: Path) -> None:
    # gcapi 0.5 sends the upload URLs in "uploads".
    a = put_upload(ctx, "a.mha", volume(tmp_path / "a.mha", 1))
    b = put_upload(ctx, "b.mha", volume(tmp_path / "b.mha", 2))
    session = create_session(api, {"uploads": [f"{BASE}uploads/{a.pk}/", b.pk]})
    RawImageUploadSession(**session)
    assert session["status"] == "Queued" and session["image_set"] == []
    assert session["uploads"] == [f"{BASE}uploads/{a.pk}/", f"{BASE}uploads/{b.pk}/"]
    [message] = queued_messages(ctx)

    handle_message(ctx, message)

    status, done, _ = api.get(f"cases/upload-sessions/{session['pk']}/")
    assert status == 200
    assert done["status"] == "Succeeded" and done["error_message"] is None
    assert len(done["image_set"]) == 2
    images = [api.get(url.removeprefix(BASE))[1] for url in done["image_set"]]
    assert [i["name"] for i in images] == ["a.mha", "b.mha"]
    for image in images:
        HyperlinkedImage(**image)
        assert image["shape"] == [4, 5, 6] and image["files"][0]["image_type"] == "MHD"
    # The session's images, by their origin; the list is the caller's own images.
    status, listed, _ = api.get("cases/images/", query={"origin": session["pk"]})
    assert [i["pk"] for i in listed["results"]] == [i["pk"] for i in images]
    assert listed["count"] == 2
    # A duplicate message changes nothing.
    handle_message(ctx, message)
    assert api.get(f"cases/upload-sessions/{session['pk']}/")[1] == done


def test_user_uploads_and_a_header_with_its_data_file(ctx, api, tmp_path: Path) -> None:
    volume(tmp_path / "scan.mhd")
    uploads = [
        put_upload(ctx, "scan.mhd", tmp_path / "scan.mhd"),
        put_upload(ctx, "scan.raw", tmp_path / "scan.raw"),
    ]
    session = create_session(api, {"user_uploads": [u.pk for u in uploads]})
    import_upload_session(ctx, session["pk"])
    done = api.get(f"cases/upload-sessions/{session['pk']}/")[1]
    assert done["status"] == "Succeeded"
    [url] = done["image_set"]
    image = api.get(url.removeprefix(BASE))[1]
    assert image["name"] == "scan.mhd" and image["files"][0]["file"].endswith("/scan.mha")


def test_files_that_are_not_images_fail_the_session_each_with_its_reason(
    ctx, api, tmp_path: Path
) -> None:
    good = put_upload(ctx, "good.mha", volume(tmp_path / "good.mha"))
    text = put_upload(ctx, "notes.txt", b"not an image")
    broken = put_upload(ctx, "broken.mha", b"ObjectType = Image\nNDims = 3\n")
    session = create_session(api, {"uploads": [good.pk, text.pk, broken.pk]})
    import_upload_session(ctx, session["pk"])
    done = api.get(f"cases/upload-sessions/{session['pk']}/")[1]
    assert done["status"] == "Failed"
    assert set(done["file_errors"]) == {"notes.txt", "broken.mha"}
    assert "not a readable image" in done["file_errors"]["notes.txt"]
    assert done["error_message"].startswith("2 files could not be imported: ")
    assert "notes.txt" in done["error_message"] and "broken.mha" in done["error_message"]
    # The file that was an image is kept.
    assert len(done["image_set"]) == 1


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({}, "body", "give the uploads"),
        ({"uploads": []}, "body", "give the uploads"),
        ({"uploads": ["no-such-upload"]}, "uploads", "not found"),
        ({"user_uploads": ["https://elsewhere.test/api/v1/jobs/1/"]}, "user_uploads", "not found"),
        ({"uploads": ["OTHER"]}, "uploads", "not found"),
        ({"uploads": ["OPEN"]}, "uploads", "is not completed"),
        ({"uploads": ["MINE"], "answer": "a1"}, "answer", "not supported"),
        ({"uploads": ["MINE"], "interface": "ct-image"}, "interface", "only be given with"),
        ({"uploads": ["MINE"], "archive": "no-such-archive"}, "archive", "not found"),
        (
            {"uploads": ["MINE"], "archive_item": "no-such-item", "interface": "ct-image"},
            "archive_item",
            "not found",
        ),
        ({"uploads": ["MINE"], "archive_item": "ITEM"}, "interface", "Name the interface"),
        (
            {"uploads": ["MINE"], "archive": "cases", "interface": "threshold"},
            "interface",
            "not an image",
        ),
        ({"uploads": ["MINE"], "archive": "cases", "interface": "nope"}, "interface", "not found"),
        ({"uploads": ["MINE"], "archive": "bobs-cases"}, "archive", "not found"),
    ],
)
def test_bad_sessions_are_refused_naming_the_field(
    ctx, api, api_bob, algorithm, body, field, text
) -> None:
    from gantry import timeutil
    from gantry.uploads import Upload

    mine = put_upload(ctx, "mine.mha", b"x")
    other = put_upload(ctx, "other.mha", b"x", owner="bob")
    open_upload = ctx.store.uploads.create(
        Upload(
            pk="open-1",
            creator="alice",
            filename="o.mha",
            key="uploads/alice/open-1/o.mha",
            s3_upload_id="s3",
            created=timeutil.iso(),
        )
    )
    assert api.post("archives/", {"title": "Cases"})[0] == 201
    assert api_bob.post("archives/", {"title": "Bobs Cases"})[0] == 201
    item = api.post("archives/items/", {"archive": "cases", "values": []})[1]
    names = {"MINE": mine.pk, "OTHER": other.pk, "OPEN": open_upload.pk, "ITEM": item["pk"]}
    body = {
        k: [names.get(v, v) for v in val] if isinstance(val, list) else val
        for k, val in body.items()
    }
    status, answer, _ = api.post("cases/upload-sessions/", body)
    assert status == 400, answer
    assert text in answer["detail"]
    if field != "body":
        assert answer[field]
    assert queued_messages(ctx) == []


def test_others_sessions_are_not_found(ctx, api, api_bob, tmp_path: Path) -> None:
    upload = put_upload(ctx, "a.mha", volume(tmp_path / "a.mha"))
    session = create_session(api, {"uploads": [upload.pk]})
    assert api_bob.get(f"cases/upload-sessions/{session['pk']}/")[0] == 404
    assert api_bob.get("cases/upload-sessions/")[1]["count"] == 0
    listed = api.get("cases/upload-sessions/")[1]
    assert [s["pk"] for s in listed["results"]] == [session["pk"]]
    import_upload_session(ctx, session["pk"])
    # Nor does filtering by someone else's session show its images.
    assert api_bob.get("cases/images/", query={"origin": session["pk"]})[1]["count"] == 0


def test_algorithm_lists_its_inputs_and_outputs_at_the_top(ctx, api, algorithm) -> None:
    # gcapi 0.5 reads algorithm["inputs"]: the first socket set's.
    status, body, _ = api.get(f"algorithms/{algorithm.pk}/")
    assert status == 200
    Algorithm(**body)
    assert [s["slug"] for s in body["inputs"]] == ["ct-image", "threshold"]
    assert [(s["slug"], s["super_kind"]) for s in body["outputs"]] == [("result", "Value")]
    assert body["inputs"][0]["super_kind"] == "Image"
    assert body["inputs"] == body["interfaces"][0]["inputs"]


def _job_body(algorithm, image_input: dict) -> dict:
    # gcapi 0.5 sends only the keys it uses.
    return {
        "algorithm": f"{BASE}algorithms/{algorithm.pk}/",
        "inputs": [
            {"interface": "ct-image", **image_input},
            {"interface": "threshold", "value": 2},
        ],
    }


def test_job_on_an_imported_session_takes_its_image(ctx, api, algorithm, tmp_path) -> None:
    upload = put_upload(ctx, "ct.mha", volume(tmp_path / "ct.mha"))
    session = create_session(api, {"uploads": [upload.pk]})
    import_upload_session(ctx, session["pk"])
    [image_url] = api.get(f"cases/upload-sessions/{session['pk']}/")[1]["image_set"]

    status, job, _ = api.post(
        "algorithms/jobs/", _job_body(algorithm, {"upload_session": session["api_url"]})
    )
    assert status == 201, job
    detail = api.get(f"algorithms/jobs/{job['pk']}/")[1]
    images = [v["image"] for v in detail["inputs"] if v["image"]]
    assert images == [image_url]
    # The job's input images, and its (not yet any) output images.
    found = api.get("cases/images/", query={"job_input": job["pk"]})[1]
    assert [i["api_url"] for i in found["results"]] == [image_url]
    assert api.get("cases/images/", query={"job_output": job["pk"]})[1]["count"] == 0


def test_job_on_a_session_still_importing_imports_the_uploads_itself(
    ctx, api, algorithm, tmp_path
) -> None:
    upload = put_upload(ctx, "ct.mha", volume(tmp_path / "ct.mha"))
    session = create_session(api, {"uploads": [upload.pk]})
    status, job, _ = api.post(
        "algorithms/jobs/", _job_body(algorithm, {"upload_session": session["pk"]})
    )
    assert status == 201, job
    assert job["status"] == "Validating inputs"
    validate_pending_inputs(ctx, job["pk"])
    done = ctx.store.jobs.get(job["pk"])
    assert done.status is JobStatus.PROVISIONED, done.error_message
    [image_pk] = [v.image for v in done.inputs if v.image]
    assert ctx.store.images.get(image_pk).name == "ct.mha"


def test_job_on_a_failed_or_foreign_session_is_refused(
    ctx, api, api_bob, algorithm, tmp_path
) -> None:
    bad = put_upload(ctx, "notes.txt", b"text")
    session = create_session(api, {"uploads": [bad.pk]})
    import_upload_session(ctx, session["pk"])
    status, body, _ = api.post(
        "algorithms/jobs/", _job_body(algorithm, {"upload_session": session["pk"]})
    )
    assert status == 400
    assert (
        "Input 'ct-image': the upload session failed: 1 file could not be imported"
        in (body["detail"])
    )
    shared = make_algorithm(ctx, "Shared", ["ct-image", "threshold"], ["result"], users=["bob"])
    status, body, _ = api_bob.post(
        "algorithms/jobs/", _job_body(shared, {"upload_session": session["pk"]})
    )
    assert status == 400 and "not found" in body["detail"]


def test_files_are_grouped_into_images() -> None:
    paths = [Path(n) for n in ("a.mha", "s.mhd", "x.dcm", "s.raw", "y.dcm", "b.tif", "c.zraw")]
    groups = group_image_files(paths)
    assert [[p.name for p in g] for g in groups] == [
        ["a.mha"],
        ["s.mhd", "s.raw"],
        ["b.tif"],
        ["c.zraw"],
        ["x.dcm", "y.dcm"],
    ]


def test_session_into_an_archive_makes_an_item_per_image(ctx, api, api_bob, algorithm, tmp_path):
    # gcapi 0.5's upload_cases(files=..., archive=slug): each image a new item.
    archive = api.post("archives/", {"title": "Cases", "uploaders": ["bob"]})[1]
    a = put_upload(ctx, "a.mha", volume(tmp_path / "a.mha", 1), owner="bob")
    b = put_upload(ctx, "b.mha", volume(tmp_path / "b.mha", 2), owner="bob")
    status, session, _ = api_bob.post(
        "cases/upload-sessions/",
        {"uploads": [a.pk, b.pk], "archive": archive["slug"], "interface": "ct-image"},
    )
    assert status == 201, session
    import_upload_session(ctx, session["pk"])
    import_upload_session(ctx, session["pk"])  # a duplicate message adds nothing
    done = api_bob.get(f"cases/upload-sessions/{session['pk']}/")[1]
    assert done["status"] == "Succeeded"
    items = api.get("archives/items/", query={"archive": archive["pk"]})[1]["results"]
    assert sorted(i["title"] for i in items) == ["a.mha", "b.mha"]
    assert sorted(i["values"][0]["image"] for i in items) == sorted(done["image_set"])
    assert {i["values"][0]["interface"]["slug"] for i in items} == {"ct-image"}
    images = api.get("cases/images/", query={"archive": archive["pk"]})[1]
    assert images["count"] == 2


def test_session_into_an_archive_item_sets_its_value(ctx, api, algorithm, tmp_path) -> None:
    archive = api.post("archives/", {"title": "Cases"})[1]
    item = api.post(
        "archives/items/",
        {"archive": archive["pk"], "values": [{"interface": "threshold", "value": 1.5}]},
    )[1]
    first = put_upload(ctx, "a.mha", volume(tmp_path / "a.mha", 1))
    second = put_upload(ctx, "b.mha", volume(tmp_path / "b.mha", 2))
    for upload in (first, second):
        session = create_session(
            api, {"uploads": [upload.pk], "archive_item": item["pk"], "interface": "ct-image"}
        )
        import_upload_session(ctx, session["pk"])
    [image_url] = api.get(f"cases/upload-sessions/{session['pk']}/")[1]["image_set"]
    values = {
        v["interface"]["slug"]: v for v in api.get(f"archives/items/{item['pk']}/")[1]["values"]
    }
    # The second upload replaced the first; the value given before stays.
    assert values["ct-image"]["image"] == image_url
    assert values["threshold"]["value"] == 1.5
