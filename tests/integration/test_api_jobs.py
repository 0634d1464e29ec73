"""algorithms/jobs/ through the handler: creation rules, gcapi shapes, filters, privacy."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from gcapi.models import HyperlinkedJob, JobPost, PaginatedHyperlinkedJobList

from gantry import timeutil
from gantry.images import Image

SOCKETS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("Number", "Integer", "number.json", {"schema": {"type": "integer", "minimum": 0}}),
    ("Offset", "Integer", "offset.json", {"default_value": 10}),
    ("Label", "String", "label.json", {}),
    ("Result", "Float", "result.json", {}),
    ("CT", "Image", "images/ct", {}),
]


@pytest.fixture
def adder(api) -> dict:
    """alice's algorithm with two socket sets and a ready image."""
    for title, kind, path, extra in SOCKETS:
        body = {"title": title, "kind": kind, "relative_path": path, **extra}
        status, created, _ = api.post("components/interfaces/", body)
        assert status == 201, created
    status, algorithm, _ = api.post(
        "algorithms/",
        {
            "title": "Adder",
            "interfaces": [
                {"inputs": ["number", "offset"], "outputs": ["result"]},
                {"inputs": ["label"], "outputs": ["result"]},
            ],
        },
    )
    assert status == 201, algorithm
    status, image, _ = api.post(
        "algorithms/images/", {"image": "local", "command": ["run"], "algorithm": algorithm["pk"]}
    )
    assert status == 201, image
    return algorithm


def _input(interface: str, **given: Any) -> dict[str, Any]:
    # gcapi always sends all eight keys.
    keys = ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
    return {"interface": interface, **dict.fromkeys(keys), "image_name": None, **given}


def _post(api, algorithm: dict, *inputs: dict) -> tuple[int, dict]:
    status, body, _ = api.post(
        "algorithms/jobs/", {"algorithm": algorithm["api_url"], "inputs": list(inputs)}
    )
    return status, body


def test_create_with_inline_values_and_defaults(api, adder) -> None:
    status, body = _post(api, adder, _input("number", value=3))
    assert status == 201, body
    post = JobPost(**body)
    assert post.status == "Queued"
    values = {v.interface: v for v in post.inputs}
    assert values["number"].value == 3
    assert values["offset"].value == 10  # the socket's default
    assert all(isinstance(v.pk, int) for v in post.inputs)
    assert len({v.pk for v in post.inputs}) == 2


def test_detail_has_every_field_and_parses_with_gcapi(api, adder) -> None:
    _, created = _post(api, adder, _input("number", value=3), _input("offset", value=1))
    status, body, _ = api.get(f"algorithms/jobs/{created['pk']}/")
    assert status == 200, body
    job = HyperlinkedJob(**body)
    assert job.status == "Queued"
    assert job.algorithm == adder["api_url"]
    assert job.api_url == f"https://api.gantry.test/api/v1/algorithms/jobs/{created['pk']}/"
    assert {v.socket.slug: v.value for v in job.inputs} == {"number": 3, "offset": 1}
    assert all(v.interface == v.socket for v in job.inputs)
    assert job.outputs == []
    # Every field gcapi knows is present, even when null.
    for name in HyperlinkedJob.__dataclass_fields__:
        assert name in body, name
    for value in body["inputs"]:
        assert set(value) >= {"socket", "interface", "value", "file", "image", "pk"}


def test_by_slug_and_by_pk_work_as_the_algorithm_reference(api, adder) -> None:
    for reference in (adder["pk"], adder["slug"]):
        status, body, _ = api.post(
            "algorithms/jobs/", {"algorithm": reference, "inputs": [_input("label", value="x")]}
        )
        assert status == 201, body


def test_schema_violation_is_400_naming_the_interface(api, adder) -> None:
    status, body = _post(api, adder, _input("number", value=-1))
    assert status == 400
    assert "number" in body["inputs"][0]
    status, body = _post(api, adder, _input("number", value="three"))
    assert status == 400
    assert "number" in body["detail"]
    assert api.get("algorithms/jobs/")[1]["count"] == 0


def test_no_matching_socket_set_lists_the_allowed_sets(api, adder) -> None:
    status, body = _post(api, adder, _input("result", value=1.0))
    assert status == 400
    message = body["inputs"][0]
    assert "[number, offset]" in message and "[label]" in message


def test_ambiguous_inputs_are_400(api) -> None:
    # Two sets that both accept "a" alone (their other inputs have defaults).
    for title, extra in (("A", {}), ("B", {"default_value": 1}), ("C", {"default_value": 2})):
        path = f"{title.lower()}.json"
        socket = {"title": title, "kind": "Integer", "relative_path": path, **extra}
        assert api.post("components/interfaces/", socket)[0] == 201
    api.post("components/interfaces/", {"title": "Out", "kind": "Float", "relative_path": "o.json"})
    _, algorithm, _ = api.post(
        "algorithms/",
        {
            "title": "Amb",
            "interfaces": [
                {"inputs": ["a", "b"], "outputs": ["out"]},
                {"inputs": ["a", "c"], "outputs": ["out"]},
            ],
        },
    )
    api.post("algorithms/images/", {"image": "local", "command": ["x"], "algorithm": "amb"})
    status, body = _post(api, algorithm, _input("a", value=1))
    assert status == 400
    assert "more than one" in body["inputs"][0]
    assert "[a, b]" in body["inputs"][0] and "[a, c]" in body["inputs"][0]
    # Giving all inputs of one set resolves it.
    assert _post(api, algorithm, _input("a", value=1), _input("c", value=5))[0] == 201


def test_an_input_given_twice_is_400(api, adder) -> None:
    status, body = _post(api, adder, _input("number", value=1), _input("number", value=2))
    assert status == 400
    assert "twice" in body["inputs"][0]


def test_two_sources_for_one_input_is_400(api, adder) -> None:
    status, body = _post(api, adder, _input("label", value="x", user_upload="abc"))
    assert status == 400
    assert "label" in body["inputs"][0]


def test_inline_value_for_an_image_socket_is_400(api) -> None:
    for title, kind, path in (("CT", "Image", "images/ct"), ("Out", "Float", "o.json")):
        api.post("components/interfaces/", {"title": title, "kind": kind, "relative_path": path})
    _, algorithm, _ = api.post(
        "algorithms/", {"title": "Img", "interfaces": [{"inputs": ["ct"], "outputs": ["out"]}]}
    )
    api.post("algorithms/images/", {"image": "local", "command": ["x"], "algorithm": "img"})
    status, body = _post(api, algorithm, _input("ct", value=[1, 2]))
    assert status == 400
    assert "ct" in body["inputs"][0]


def test_algorithm_without_an_image_is_400(api, adder) -> None:
    _, bare, _ = api.post(
        "algorithms/",
        {"title": "Bare", "interfaces": [{"inputs": ["label"], "outputs": ["result"]}]},
    )
    status, body = _post(api, bare, _input("label", value="x"))
    assert status == 400
    assert "image" in body["algorithm"][0]


def test_unknown_or_foreign_algorithm_is_400_naming_algorithm(api, api_bob, adder) -> None:
    status, body = _post(api_bob, adder, _input("label", value="x"))
    assert status == 400
    assert "algorithm" in body
    status, body, _ = api.post(
        "algorithms/jobs/", {"algorithm": "https://api.gantry.test/api/v1/uploads/x/", "inputs": []}
    )
    assert status == 400
    assert "algorithm" in body


def test_job_body_rejects_unknown_keys(api, adder) -> None:
    status, body, _ = api.post(
        "algorithms/jobs/", {"algorithm": adder["pk"], "inputs": [], "priority": 1}
    )
    assert status == 400
    assert "priority" in body


def test_list_parses_with_gcapi_and_filters_by_algorithm(api, adder) -> None:
    first = _post(api, adder, _input("number", value=1))[1]
    second = _post(api, adder, _input("label", value="x"))[1]
    status, body, _ = api.get("algorithms/jobs/")
    assert status == 200
    page = PaginatedHyperlinkedJobList(**body)
    assert page.count == 2
    assert [j.pk for j in page.results] == [first["pk"], second["pk"]]

    _, other, _ = api.post(
        "algorithms/",
        {"title": "Other", "interfaces": [{"inputs": ["label"], "outputs": ["result"]}]},
    )
    api.post("algorithms/images/", {"image": "local", "command": ["x"], "algorithm": "other"})
    third = _post(api, other, _input("label", value="y"))[1]
    for reference in (adder["api_url"], adder["pk"]):
        _, filtered, _ = api.get(
            "algorithms/jobs/", query={"algorithm_image__algorithm": reference}
        )
        assert [j["pk"] for j in filtered["results"]] == [first["pk"], second["pk"]]
    _, filtered, _ = api.get("algorithms/jobs/", query={"algorithm_image__algorithm": other["pk"]})
    assert [j["pk"] for j in filtered["results"]] == [third["pk"]]


def test_paging_links(api, adder) -> None:
    pks = [_post(api, adder, _input("label", value=str(i)))[1]["pk"] for i in range(5)]
    _, page, _ = api.get("algorithms/jobs/", query={"limit": 2, "offset": 2})
    assert [j["pk"] for j in page["results"]] == pks[2:4]
    assert page["next"].endswith("limit=2&offset=4")
    assert page["previous"].endswith("limit=2&offset=0")
    _, last, _ = api.get("algorithms/jobs/", query={"limit": 2, "offset": 4})
    assert last["next"] is None
    # gcapi's iterate_all: offset += limit until an empty page.
    seen, offset = [], 0
    while True:
        _, page, _ = api.get("algorithms/jobs/", query={"limit": 2, "offset": offset})
        if not page["results"]:
            break
        seen += [j["pk"] for j in page["results"]]
        offset += 2
    assert seen == pks


def test_input_image_filter(api, ctx, adder) -> None:
    # An image alice owns (registered as the upload handler would).
    image = Image(pk=str(uuid.uuid4()), name="ct.mha", owner="alice", created=timeutil.iso())
    ctx.store.images.put(image)
    _, algorithm, _ = api.post(
        "algorithms/", {"title": "Seg", "interfaces": [{"inputs": ["ct"], "outputs": ["result"]}]}
    )
    api.post("algorithms/images/", {"image": "local", "command": ["x"], "algorithm": "seg"})
    image_url = f"https://api.gantry.test/api/v1/cases/images/{image.pk}/"
    status, created = _post(api, algorithm, _input("ct", image=image_url))
    assert status == 201, created
    _post(api, adder, _input("label", value="unrelated"))
    # gcapi's by_input_image sends ?image=: the same filter.
    for name, reference in (
        ("input_image", image_url),
        ("input_image", image.pk),
        ("image", image_url),
    ):
        _, body, _ = api.get("algorithms/jobs/", query={name: reference})
        assert [j["pk"] for j in body["results"]] == [created["pk"]]
        assert body["count"] == 1
    _, detail, _ = api.get(f"algorithms/jobs/{created['pk']}/")
    assert detail["inputs"][0]["image"] == image_url
    HyperlinkedJob(**detail)


def test_someone_elses_image_cannot_be_used(api, api_bob, ctx) -> None:
    image = Image(pk=str(uuid.uuid4()), name="ct.mha", owner="alice", created=timeutil.iso())
    ctx.store.images.put(image)
    for title, kind, path in (("CT", "Image", "images/ct"), ("Out", "Float", "o.json")):
        api.post("components/interfaces/", {"title": title, "kind": kind, "relative_path": path})
    _, algorithm, _ = api_bob.post(
        "algorithms/", {"title": "Bobs", "interfaces": [{"inputs": ["ct"], "outputs": ["out"]}]}
    )
    api_bob.post("algorithms/images/", {"image": "local", "command": ["x"], "algorithm": "bobs"})
    status, body = _post(api_bob, algorithm, _input("ct", image=image.pk))
    assert status == 400
    assert "not found" in body["inputs"][0]


def test_others_never_see_your_jobs(api, api_bob, adder) -> None:
    _, created = _post(api, adder, _input("label", value="secret"))
    status, body, _ = api_bob.get(f"algorithms/jobs/{created['pk']}/")
    assert status == 404
    assert "secret" not in str(body)
    assert api_bob.get("algorithms/jobs/")[1]["count"] == 0
    _, filtered, _ = api_bob.get(
        "algorithms/jobs/", query={"algorithm_image__algorithm": adder["pk"]}
    )
    assert filtered["results"] == []
    assert api_bob.get(f"algorithms/jobs/{uuid.uuid4()}/")[0] == 404
