"""Archives and archive items through the API: members, items of socket values, the images of
an archive (cases/images/?archive=), and uploaded values imported by the uploads handler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import ApiClient, sqs_event
from tests.integration.test_inputs_support import make_algorithm, make_socket, put_upload


def _value(interface: str, **given) -> dict:
    keys = ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
    return {"interface": interface, **dict.fromkeys(keys), "image_name": None, **given}


@pytest.fixture
def sockets(ctx):
    queue_url = ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"uploads_queue_url": queue_url})
    make_socket(ctx, "CT Image", "IMG", "images/ct")
    make_socket(ctx, "Age", "Integer", "age.json")
    make_socket(ctx, "Report", "PDF", "report.pdf")
    return ctx


def _ct_upload(ctx, tmp_path: Path, owner: str = "alice", name: str = "case.mha"):
    image = sitk.GetImageFromArray(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return put_upload(ctx, name, path, owner=owner)


def _archive(api: ApiClient, title: str = "Corona cases", **members) -> dict:
    status, body, _ = api.post("archives/", {"title": title, **members})
    assert status == 201, body
    return body


def _deliver(ctx) -> list[dict]:
    """Hand the uploads queue's messages to its handler, as the event source mapping would."""
    from lambdas.on_upload import process

    queue = ctx.settings.uploads_queue_url
    messages = ctx.clients.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
    bodies = [m["Body"] for m in messages.get("Messages", [])]
    if bodies:
        assert process(ctx, sqs_event(bodies)) == {"batchItemFailures": []}
    for m in messages.get("Messages", []):
        ctx.clients.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    return [json.loads(b) for b in bodies]


def _import(ctx, item_pk: str) -> None:
    assert {"gantry": "import-item-values", "item": item_pk} in _deliver(ctx)


def test_archives_are_found_by_slug_and_name_by_their_members_only(
    sockets, api: ApiClient, api_bob: ApiClient
) -> None:
    made = _archive(api, "coronacases.org")
    assert made["slug"] == "coronacasesorg" or made["slug"].startswith("coronacases")
    assert made["name"] == "coronacases.org" and made["id"] == made["pk"]
    assert made["api_url"].endswith(f"/archives/{made['pk']}/")
    _archive(api, "Other archive")

    status, page, _ = api.get("archives/", query={"name": "coronacases.org"})
    assert status == 200 and [a["pk"] for a in page["results"]] == [made["pk"]]
    status, page, _ = api.get("archives/", query={"slug": made["slug"]})
    assert [a["pk"] for a in page["results"]] == [made["pk"]]
    assert api.get("archives/")[1]["count"] == 2

    # Not a member: the archive does not exist for bob.
    assert api_bob.get("archives/")[1]["results"] == []
    assert api_bob.get(f"archives/{made['pk']}/")[0] == 404
    assert api_bob.get("archives/", query={"slug": made["slug"]})[1]["count"] == 0

    status, changed, _ = api.patch(f"archives/{made['pk']}/", {"users": ["bob"]})
    assert status == 200, changed
    assert changed["users"] == ["bob"]
    assert api_bob.get(f"archives/{made['pk']}/")[0] == 200
    assert [a["pk"] for a in api_bob.get("archives/")[1]["results"]] == [made["pk"]]
    # A user reads, but neither changes the archive nor adds items.
    status, body, _ = api_bob.patch(f"archives/{made['pk']}/", {"title": "Mine"})
    assert status == 403, body
    status, body, _ = api_bob.post("archives/items/", {"archive": made["api_url"]})
    assert status == 400 and "archive" in body, body

    status, body, _ = api.post("archives/", {"title": "coronacases.org"})
    assert status == 409 or status == 400, body


def test_items_hold_values_and_list_by_archive(sockets, api: ApiClient, api_bob: ApiClient) -> None:
    archive = _archive(api, uploaders=["bob"])
    status, item, _ = api.post(
        "archives/items/",
        {"archive": archive["api_url"], "title": "case 1", "values": [_value("age", value=42)]},
    )
    assert status == 201, item
    assert item["values"][0]["interface"] == "age" and item["values"][0]["value"] == 42

    # gcapi's way: create empty, then PATCH the values in.
    status, empty, _ = api_bob.post("archives/items/", {"archive": archive["api_url"]})
    assert status == 201, empty
    status, patched, _ = api_bob.patch(
        f"archives/items/{empty['pk']}/", {"values": [_value("age", value=7)]}
    )
    assert status == 200, patched
    status, patched, _ = api_bob.patch(
        f"archives/items/{empty['pk']}/", {"values": [_value("age", value=8)]}
    )
    assert [v["value"] for v in patched["values"]] == [8]  # replaced, not added

    status, page, _ = api.get("archives/items/", query={"archive": archive["pk"]})
    assert status == 200 and page["count"] == 2
    detail = page["results"][0]
    assert detail["values"][0]["interface"]["slug"] == "age"
    assert detail["archive"] == archive["api_url"]

    status, body, _ = api.patch(
        f"archives/items/{item['pk']}/", {"values": [_value("age", value="old")]}
    )
    assert status == 400 and "values" in body, body
    status, body, _ = api.patch(
        f"archives/items/{item['pk']}/", {"values": [_value("nope", value=1)]}
    )
    assert status == 400 and "nope" in body["detail"], body


def test_uploaded_image_becomes_an_archive_image_its_members_read_and_use(
    sockets, tmp_path: Path, api: ApiClient, api_bob: ApiClient
) -> None:
    ctx = sockets
    archive = _archive(api, users=["bob"])
    items = []
    for n in range(3):
        upload = _ct_upload(ctx, tmp_path, name=f"case{n}.mha")
        status, item, _ = api.post(
            "archives/items/",
            {"archive": archive["pk"], "values": [_value("ct-image", user_uploads=[upload.pk])]},
        )
        assert status == 201, item
        assert api.get(f"archives/items/{item['pk']}/")[1]["pending"] == ["ct-image"]
        _import(ctx, item["pk"])
        items.append(api.get(f"archives/items/{item['pk']}/")[1])
    assert all(i["pending"] == [] and i["values"][0]["image"] for i in items)

    # The archive's images, paged with `next` as the tutorial walks them.
    seen = []
    status, page, _ = api_bob.get("cases/images/", query={"archive": archive["pk"], "limit": 2})
    while True:
        assert status == 200, page
        seen += [image["api_url"] for image in page["results"]]
        if page["next"] is None:
            break
        assert "archive=" in page["next"]
        offset = int(page["next"].split("offset=")[1].split("&")[0])
        status, page, _ = api_bob.get(
            "cases/images/", query={"archive": archive["pk"], "limit": 2, "offset": offset}
        )
    assert seen == [i["values"][0]["image"] for i in items]
    assert page["count"] == 3

    # bob (a user of the archive) reads the image and runs an algorithm on it.
    image_pk = seen[0].rstrip("/").rsplit("/", 1)[1]
    assert api_bob.get(f"cases/images/{image_pk}/")[0] == 200
    make_socket(ctx, "Result", "JSON", "results.json")
    algorithm = make_algorithm(ctx, "Reader", ["ct-image"], ["result"], users=["bob"])
    status, job, _ = api_bob.post(
        "algorithms/jobs/",
        {"algorithm": algorithm.pk, "inputs": [_value("ct-image", image=seen[0])]},
    )
    assert status == 201, job

    # Someone outside the archive neither reads nor uses it.
    carol = ApiClient(api.app, ctx.store.users.create_token("carol"))
    assert carol.get(f"cases/images/{image_pk}/")[0] == 404
    status, body, _ = carol.get("cases/images/", query={"archive": archive["pk"]})
    assert status == 400 and "archive" in body, body


def test_an_upload_that_is_no_image_is_dropped_with_its_reason(
    sockets, tmp_path: Path, api: ApiClient
) -> None:
    ctx = sockets
    archive = _archive(api)
    upload = put_upload(ctx, "case.mha", b"not an image")
    status, item, _ = api.post(
        "archives/items/",
        {
            "archive": archive["slug"],
            "values": [_value("ct-image", user_uploads=[upload.pk]), _value("age", value=3)],
        },
    )
    assert status == 201, item
    _import(ctx, item["pk"])
    from lambdas.on_upload import process

    duplicate = json.dumps({"gantry": "import-item-values", "item": item["pk"]})
    assert process(ctx, sqs_event([duplicate])) == {"batchItemFailures": []}
    status, detail, _ = api.get(f"archives/items/{item['pk']}/")
    assert [v["interface"]["slug"] for v in detail["values"]] == ["age"]
    assert "not a readable image" in detail["errors"]["ct-image"]
    assert detail["pending"] == []


def test_a_file_value_is_downloaded_by_members(sockets, api: ApiClient, api_bob: ApiClient) -> None:
    ctx = sockets
    archive = _archive(api)
    upload = put_upload(ctx, "report.pdf", b"%PDF-1.4 hello")
    status, item, _ = api.post(
        "archives/items/",
        {"archive": archive["pk"], "values": [_value("report", user_upload=upload.pk)]},
    )
    assert status == 201, item
    _import(ctx, item["pk"])
    detail = api.get(f"archives/items/{item['pk']}/")[1]
    url = detail["values"][0]["file"]
    assert url.endswith("/report.pdf")
    path = url.split("/api/v1/", 1)[1]
    status, _, headers = api.get(path)
    assert status == 302 and "Location" in headers
    assert api_bob.get(path)[0] == 404


def test_an_uploaders_upload_becomes_a_value_of_another_members_item(
    sockets, tmp_path: Path, api: ApiClient, api_bob: ApiClient
) -> None:
    """bob, an uploader, adds his own upload to alice's item: the image is imported as his
    (the uploads are checked against whoever gave them, not the item's creator), and alice's
    uploads still cannot be given by bob."""
    ctx = sockets
    archive = _archive(api, uploaders=["bob"])
    status, item, _ = api.post(
        "archives/items/", {"archive": archive["pk"], "values": [_value("age", value=40)]}
    )
    assert status == 201, item
    alices = _ct_upload(ctx, tmp_path, name="alices.mha")
    status, body, _ = api_bob.patch(
        f"archives/items/{item['pk']}/", {"values": [_value("ct-image", user_uploads=[alices.pk])]}
    )
    assert status == 400 and "values" in body, body

    bobs = _ct_upload(ctx, tmp_path, owner="bob", name="bobs.mha")
    status, body, _ = api_bob.patch(
        f"archives/items/{item['pk']}/", {"values": [_value("ct-image", user_uploads=[bobs.pk])]}
    )
    assert status == 200, body
    _import(ctx, item["pk"])

    detail = api.get(f"archives/items/{item['pk']}/")[1]
    assert not detail.get("errors"), detail
    assert detail["pending"] == [], detail
    image_url = next(v["image"] for v in detail["values"] if v["interface"]["slug"] == "ct-image")
    image_pk = image_url.rstrip("/").rsplit("/", 1)[1]
    assert ctx.store.images.get(image_pk).owner == "bob"
    assert api.get(f"cases/images/{image_pk}/")[0] == 200  # alice, as a member of the archive


def test_editors_delete_items_and_images_no_item_holds_leave_the_archive(
    sockets, tmp_path: Path, api: ApiClient, api_bob: ApiClient
) -> None:
    ctx = sockets
    archive = _archive(api, users=["bob"], uploaders=["dave"])
    images = []
    for n in range(2):
        upload = _ct_upload(ctx, tmp_path, name=f"case{n}.mha")
        status, item, _ = api.post(
            "archives/items/",
            {"archive": archive["pk"], "values": [_value("ct-image", user_uploads=[upload.pk])]},
        )
        assert status == 201, item
        _import(ctx, item["pk"])
        images.append((item["pk"], api.get(f"archives/items/{item['pk']}/")[1]["values"][0]))
    # A third item holds the first image too.
    status, third, _ = api.post(
        "archives/items/",
        {"archive": archive["pk"], "values": [_value("ct-image", image=images[0][1]["image"])]},
    )
    assert status == 201, third

    def listed() -> list[str]:
        status, page, _ = api_bob.get("cases/images/", query={"archive": archive["pk"]})
        assert status == 200, page
        return [image["pk"] for image in page["results"]]

    first_image = images[0][1]["image"].rstrip("/").rsplit("/", 1)[1]
    second_image = images[1][1]["image"].rstrip("/").rsplit("/", 1)[1]
    assert sorted(listed()) == sorted([first_image, second_image])

    dave = ApiClient(api.app, ctx.store.users.create_token("dave"))
    carol = ApiClient(api.app, ctx.store.users.create_token("carol"))
    assert carol.request("DELETE", f"archives/items/{images[0][0]}/")[0] == 404
    status, body, _ = dave.request("DELETE", f"archives/items/{images[0][0]}/")
    assert status == 403 and "editors" in body["detail"], body

    assert api.request("DELETE", f"archives/items/{images[0][0]}/")[0] == 204
    assert api.get(f"archives/items/{images[0][0]}/")[0] == 404
    assert api.request("DELETE", f"archives/items/{images[0][0]}/")[0] == 404
    assert sorted(listed()) == sorted([first_image, second_image])  # the third item holds it
    assert api.request("DELETE", f"archives/items/{images[1][0]}/")[0] == 204
    assert listed() == [first_image]
    # The image itself stays its uploader's; the archive's users no longer see it.
    assert api.get(f"cases/images/{second_image}/")[0] == 200
    assert api_bob.get(f"cases/images/{second_image}/")[0] == 404
    status, page, _ = api_bob.get("archives/items/", query={"archive": archive["pk"]})
    assert page["count"] == 1 and [i["pk"] for i in page["results"]] == [third["pk"]]
