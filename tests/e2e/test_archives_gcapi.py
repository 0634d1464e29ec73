"""Archives through the real gcapi client (0.16.1) against the local platform's HTTPS API:
cases added with ``add_case_to_archive`` (an uploaded image plus a value), found again with
``archives`` and ``archive_items``, changed with ``update_archive_item``, and the archive's
images listed and run through an algorithm the way the algorithms tutorial does."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import JOB_TIMEOUT, TERMINAL, Platform, checked, make_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _settled(platform: Platform, item_pk: str) -> dict[str, Any]:
    """The item once its uploaded values are imported."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        item = checked(platform.http.get(f"archives/items/{item_pk}/"))
        if not item["pending"]:
            return item
        assert time.monotonic() < deadline, f"item {item_pk} still pending {item['pending']}"
        time.sleep(0.2)


def test_cases_added_with_gcapi_run_as_the_tutorial_runs_them(platform: Platform) -> None:
    from gcapi import SocketValueSpec

    archive = checked(platform.http.post("archives/", json={"title": "coronacases.org"}))
    client = platform.gcapi()
    files = [make_image(platform.workdir / f"arc{n}.mha", offset=float(n)) for n in range(2)]
    added = [
        client.add_case_to_archive(
            archive_slug=archive["slug"],
            values=[
                SocketValueSpec(socket_slug="ct-image", files=[str(path)]),
                SocketValueSpec(socket_slug="threshold", value=0.5),
            ],
            title=path.stem,
        )
        for path in files
    ]
    items = [_settled(platform, item.pk) for item in added]
    assert all(not item["errors"] for item in items)

    found = client.archives.detail(slug=archive["slug"])
    assert found.pk == archive["pk"]
    listed = list(client.archive_items.iterate_all(params={"archive": found.pk}))
    assert sorted(i.pk for i in listed) == sorted(i.pk for i in added)
    by_socket = {v.interface.slug: v for v in listed[0].values}
    assert by_socket["threshold"].value == 0.5 and by_socket["ct-image"].image

    client.update_archive_item(
        archive_item_pk=added[0].pk, values=[SocketValueSpec(socket_slug="threshold", value=0.25)]
    )
    values = {v.interface.slug: v.value for v in client.archive_items.detail(added[0].pk).values}
    assert values["threshold"] == 0.25

    # The tutorial: find the archive by name, list its images, start a job on each.
    archives = client(url=f"{platform.api_url}archives/")["results"]
    corona = next(a for a in archives if a["name"] == "coronacases.org")
    response = client(url=f"{platform.api_url}cases/images/", params={"archive": corona["pk"]})
    urls = [r["api_url"] for r in response["results"]]
    assert len(urls) == 2 and response["next"] is None
    slug = platform.algorithms["threshold"]["slug"]
    jobs = [
        client.start_algorithm_job(
            algorithm_slug=slug,
            inputs=[SocketValueSpec(socket_slug="ct-image", existing_image_api_url=url)],
        )
        for url in urls
    ]
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        statuses = [client.algorithm_jobs.detail(job.pk).status for job in jobs]
        if all(s in TERMINAL for s in statuses):
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.2)
    assert statuses == ["Succeeded", "Succeeded"]
    # Results map back to inputs by the image's uuid.
    image_pk = urls[0].rstrip("/").rsplit("/", 1)[1]
    params = {"algorithm_image__algorithm": platform.algorithms["threshold"]["pk"]}
    mapped = list(client.algorithm_jobs.iterate_all({**params, "input_image": image_pk}))
    assert [job.pk for job in mapped] == [jobs[0].pk]


def test_an_archive_runs_as_one_batch_with_outputs_written_back(platform: Platform) -> None:
    from gcapi import SocketValueSpec

    http = platform.http
    archive = checked(http.post("archives/", json={"title": "Batch cases"}))
    client = platform.gcapi()
    items = []
    for n in range(3):
        path = make_image(platform.workdir / f"batch{n}.mha", offset=float(n))
        items.append(
            client.add_case_to_archive(
                archive_slug=archive["slug"],
                values=[SocketValueSpec(socket_slug="ct-image", files=[str(path)])],
            )
        )
    for item in items:
        _settled(platform, item.pk)
    algorithm = platform.algorithms["threshold"]
    runs = f"algorithms/{algorithm['pk']}/archive-runs/"
    run = checked(http.post(runs, json={"archive": archive["api_url"], "write_back": True}))
    deadline = time.monotonic() + 3 * JOB_TIMEOUT
    while True:
        seen = checked(http.get(f"{runs}{run['pk']}/"))
        if seen["done"]:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)
    assert seen["state"] == "All jobs created" and seen["jobs"] == {"Succeeded": 3}, seen
    # The outputs are values of the items now (the write-back follows each job's end).
    deadline = time.monotonic() + JOB_TIMEOUT
    for item in items:
        while True:
            values = {v.interface.slug for v in client.archive_items.detail(item.pk).values}
            if {"segmentation", "results"} <= values:
                break
            assert time.monotonic() < deadline, values
            time.sleep(0.2)
    # A second run finds every item done.
    again = checked(http.post(runs, json={"archive": archive["pk"]}))
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (seen := checked(http.get(f"{runs}{again['pk']}/")))["done"]:
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert seen["skipped"] == 3 and seen["jobs"] == {}
