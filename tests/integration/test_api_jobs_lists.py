"""Job lists: an algorithm's editors see all of its jobs (without their data), admins every
job; filters by status and creation time; ordering."""

from __future__ import annotations

import pytest

from gantry.pipeline.cancel import cancel_job
from tests.conftest import ApiClient
from tests.integration.test_access_policy import _add_members, _input


@pytest.fixture
def setup(ctx, api_app, api, api_bob) -> dict:
    for title, kind, path in (("Number", "Integer", "number.json"), ("Result", "Float", "r.json")):
        status, body, _ = api.post(
            "components/interfaces/", {"title": title, "kind": kind, "relative_path": path}
        )
        assert status == 201, body
    status, algorithm, _ = api.post(
        "algorithms/",
        {"title": "Adder", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    assert status == 201, algorithm
    api.post(
        "algorithms/images/", {"image": "local", "command": ["x"], "algorithm": algorithm["pk"]}
    )
    _add_members(ctx, algorithm["pk"], users=["bob"], editors=["erin"])
    jobs = []
    for client, value in ((api_bob, 1), (api, 2), (api_bob, 3)):
        status, job, _ = client.post(
            "algorithms/jobs/",
            {"algorithm": algorithm["api_url"], "inputs": [_input("number", value=value)]},
        )
        assert status == 201, job
        jobs.append(job["pk"])
    return {
        "algorithm": algorithm,
        "jobs": jobs,
        "erin": ApiClient(api_app, ctx.store.users.create_token("erin")),
        "root": ApiClient(api_app, ctx.store.users.create_token("root", is_admin=True)),
    }


def _pks(client: ApiClient, **query) -> list[str]:
    status, page, _ = client.get("algorithms/jobs/", query=query)
    assert status == 200, page
    assert page["count"] == len(page["results"])
    return [job["pk"] for job in page["results"]]


def test_editors_list_all_jobs_of_their_algorithm_without_data(setup, api_bob) -> None:
    by_algorithm = {"algorithm_image__algorithm": setup["algorithm"]["api_url"]}
    status, page, _ = setup["erin"].get("algorithms/jobs/", query=by_algorithm)
    assert status == 200, page
    assert [j["pk"] for j in page["results"]] == setup["jobs"]
    for job in page["results"]:
        assert (job["inputs"], job["outputs"]) == ([], [])
        assert {"status", "error_message", "stdout", "stderr", "creator"} <= set(job)
    assert {j["creator"] for j in page["results"]} == {"alice", "bob"}
    # A user of the algorithm sees only their own jobs, with their data.
    _, page, _ = api_bob.get("algorithms/jobs/", query=by_algorithm)
    assert [j["pk"] for j in page["results"]] == [setup["jobs"][0], setup["jobs"][2]]
    assert all(j["inputs"] for j in page["results"])
    # Without the filter, an editor's list is their own (none here).
    assert _pks(setup["erin"]) == []


def test_admins_list_every_job(setup) -> None:
    assert _pks(setup["root"]) == setup["jobs"]


def test_filters_and_ordering(ctx, setup, api_bob) -> None:
    first, _, third = setup["jobs"]
    cancel_job(ctx, third, by="bob")
    assert _pks(api_bob, status="Cancelled") == [third]
    assert _pks(api_bob, status="queued") == [first]
    assert _pks(api_bob, ordering="-created") == [third, first]
    created = {pk: ctx.store.jobs.get(pk).created for pk in setup["jobs"]}
    assert _pks(api_bob, created__gte=created[third]) == [third]
    assert _pks(api_bob, created__lt=created[third]) == [first]
    editor = {"algorithm_image__algorithm": setup["algorithm"]["pk"]}
    assert _pks(setup["erin"], **editor, status="Queued", ordering="-created") == [
        setup["jobs"][1],
        first,
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "Done"}, "status"),
        ({"created__gte": "yesterday"}, "created__gte"),
        ({"ordering": "pk"}, "ordering"),
        # A URL of something else than the filter names.
        ({"algorithm_image__algorithm": "https://x/cases/images/1/"}, "algorithm_image__algorithm"),
        ({"input_image": "https://x/algorithms/1/"}, "input_image"),
        ({"image": "/algorithms/1/"}, "input_image"),
        ({"output_image": "https://x/y"}, "output_image"),
    ],
)
def test_bad_filters_name_the_field(setup, api, query: dict, field: str) -> None:
    status, body, _ = api.get("algorithms/jobs/", query=query)
    assert status == 400, body
    assert field in body
