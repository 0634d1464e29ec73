"""algorithms/ and algorithms/images/ through the handler: creation, visibility, gcapi shapes."""

from __future__ import annotations

from typing import Any

import pytest
from gcapi.models import Algorithm, AlgorithmImage, PaginatedAlgorithmList


@pytest.fixture
def sockets(api) -> None:
    for title, kind, path in [
        ("Number", "Integer", "number.json"),
        ("Result", "Float", "result.json"),
        ("CT", "Image", "images/ct"),
    ]:
        status, body, _ = api.post(
            "components/interfaces/", {"title": title, "kind": kind, "relative_path": path}
        )
        assert status == 201, body


def _algorithm(api, title: str = "Adder", **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"title": title, "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]}
    status, payload, _ = api.post("algorithms/", {**body, **fields})
    return status, payload


IMAGE = {"image": "local", "command": ["python", "main.py"]}


def test_create_list_detail_and_slug(api, sockets) -> None:
    status, created = _algorithm(api, description="adds one")
    assert status == 201, created
    gc = Algorithm(**created)
    assert gc.slug == "adder"
    assert gc.interfaces[0].inputs[0].slug == "number"
    assert gc.interfaces[0].outputs[0].pk > 0
    assert created["api_url"] == f"https://api.gantry.test/api/v1/algorithms/{created['pk']}/"

    status, detail, _ = api.get(f"algorithms/{created['pk']}/")
    assert (status, detail) == (200, created)
    _, listed, _ = api.get("algorithms/")
    assert [a.pk for a in PaginatedAlgorithmList(**listed).results] == [created["pk"]]
    _, by_slug, _ = api.get("algorithms/", query={"slug": "adder"})
    assert [a["pk"] for a in by_slug["results"]] == [created["pk"]]
    assert by_slug["count"] == 1


def test_unknown_socket_is_400_naming_interfaces(api, sockets) -> None:
    status, body = _algorithm(api, interfaces=[{"inputs": ["nope"], "outputs": ["result"]}])
    assert status == 400
    assert "interfaces" in body
    assert "nope" in body["interfaces"][0]
    assert api.get("algorithms/")[1]["count"] == 0


def test_two_inputs_on_one_path_is_400(api, sockets) -> None:
    api.post(
        "components/interfaces/",
        {"title": "Number Two", "kind": "Integer", "relative_path": "number.json"},
    )
    status, body = _algorithm(
        api, interfaces=[{"inputs": ["number", "number-two"], "outputs": ["result"]}]
    )
    assert status == 400
    assert "number.json" in body["interfaces"][0]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"interfaces": []}, "interfaces"),
        ({"interfaces": [{"inputs": ["number"], "outputs": ["number"]}]}, "interfaces"),
        ({"time_limit": 10}, "time_limit"),
        ({"requires_gpu_type": "A100"}, "requires_gpu_type"),
        ({"requires_memory_gb": 1000}, "requires_memory_gb"),
    ],
)
def test_invalid_algorithm_fields_are_400(api, sockets, fields: dict, field: str) -> None:
    status, body = _algorithm(api, **fields)
    assert status == 400, body
    assert any(key.startswith(field) for key in body), body


def test_duplicate_slug_is_409(api, api_bob, sockets) -> None:
    assert _algorithm(api)[0] == 201
    status, body, _ = api_bob.post(
        "algorithms/",
        {"title": "adder", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    assert status == 409
    assert "title" in body


def test_others_do_not_see_your_algorithm(api, api_bob, sockets) -> None:
    _, created = _algorithm(api)
    assert api_bob.get("algorithms/")[1]["count"] == 0
    status, body, _ = api_bob.get(f"algorithms/{created['pk']}/")
    assert status == 404
    assert created["title"] not in str(body)
    _, by_slug, _ = api_bob.get("algorithms/", query={"slug": "adder"})
    assert by_slug["results"] == []


@pytest.mark.parametrize("role", ["users", "editors"])
def test_users_and_editors_see_it(api, api_bob, sockets, role: str) -> None:
    fields: dict[str, Any] = {role: ["bob"]}
    _, created = _algorithm(api, **fields)
    _, listed, _ = api_bob.get("algorithms/")
    assert [a["pk"] for a in listed["results"]] == [created["pk"]]
    assert api_bob.get(f"algorithms/{created['pk']}/")[0] == 200


def test_images_create_list_detail(api, sockets) -> None:
    _, algorithm = _algorithm(api)
    status, image, _ = api.post("algorithms/images/", {**IMAGE, "algorithm": algorithm["api_url"]})
    assert status == 201, image
    AlgorithmImage(**image)
    assert image["algorithm"] == algorithm["api_url"]
    assert image["is_desired_version"] is True
    status, detail, _ = api.get(f"algorithms/images/{image['pk']}/")
    assert (status, detail) == (200, image)
    _, listed, _ = api.get("algorithms/images/")
    assert [i["pk"] for i in listed["results"]] == [image["pk"]]
    _, filtered, _ = api.get("algorithms/images/", query={"algorithm": algorithm["api_url"]})
    assert filtered["count"] == 1
    # The filter names the algorithm as the models' list does: by slug too, and a URL of
    # something else is refused naming the field.
    assert api.get("algorithms/images/", query={"algorithm": "adder"})[1]["count"] == 1
    elsewhere = algorithm["api_url"].replace("/algorithms/", "/archives/")
    status, refused, _ = api.get("algorithms/images/", query={"algorithm": elsewhere})
    assert status == 400 and "is not a URL of algorithms/" in refused["algorithm"][0], refused
    # By slug too.
    status, second, _ = api.post("algorithms/images/", {**IMAGE, "algorithm": "adder"})
    assert status == 201, second
    assert api.get(f"algorithms/images/{image['pk']}/")[1]["is_desired_version"] is False


def test_image_needs_a_command(api, sockets) -> None:
    _, algorithm = _algorithm(api)
    status, body, _ = api.post("algorithms/images/", {"image": "x", "algorithm": algorithm["pk"]})
    assert status == 400
    assert "command" in body["detail"]


def test_only_editors_add_or_see_images(api, api_bob, sockets) -> None:
    _, algorithm = _algorithm(api, users=["bob"])
    _, image, _ = api.post("algorithms/images/", {**IMAGE, "algorithm": algorithm["pk"]})
    # bob may use the algorithm but not manage its images.
    status, _, _ = api_bob.post("algorithms/images/", {**IMAGE, "algorithm": algorithm["pk"]})
    assert status == 403
    assert api_bob.get(f"algorithms/images/{image['pk']}/")[0] == 404
    assert api_bob.get("algorithms/images/")[1]["count"] == 0


def test_strangers_cannot_add_images(api, api_bob, sockets) -> None:
    _, algorithm = _algorithm(api)
    status, body, _ = api_bob.post("algorithms/images/", {**IMAGE, "algorithm": algorithm["pk"]})
    assert status == 404, body
    status, body, _ = api_bob.post("algorithms/images/", {**IMAGE, "algorithm": "adder"})
    assert status == 404, body
    assert api.get("algorithms/images/")[1]["count"] == 0


def test_editors_manage_images(api, api_bob, sockets) -> None:
    _, algorithm = _algorithm(api, editors=["bob"])
    status, image, _ = api_bob.post("algorithms/images/", {**IMAGE, "algorithm": algorithm["pk"]})
    assert status == 201, image
    assert api.get(f"algorithms/images/{image['pk']}/")[0] == 200


@pytest.mark.parametrize(
    "reference",
    [
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/gantry-algorithm-images:image-{pk}",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/gantry-algorithm-images@sha256:" + "a" * 64,
        "123456789012.DKR.ECR.eu-west-1.amazonaws.com/Gantry-Algorithm-Images:image-{pk}",
    ],
)
def test_an_image_of_the_deployments_repository_cannot_be_registered_by_reference(
    ctx, api, api_bob, sockets, reference: str
) -> None:
    """Imported images live in the deployment's repository, tagged image-<pk>, and a job's
    detail names its algorithm image's pk to the job's creator: registering that reference in
    an algorithm of one's own would run another editor's container without being its editor."""
    ctx.settings = ctx.settings.model_copy(update={"image_repository": "gantry-algorithm-images"})
    _, theirs = _algorithm(api)
    _, image, _ = api.post("algorithms/images/", {**IMAGE, "algorithm": theirs["pk"]})
    status, mine = _algorithm(api_bob, title="Mine")
    assert status == 201, mine
    body = {**IMAGE, "image": reference.format(pk=image["pk"]), "algorithm": mine["pk"]}
    status, answer, _ = api_bob.post("algorithms/images/", body)
    assert status == 400, answer
    assert "image" in answer, answer
    assert api_bob.get("algorithms/images/")[1]["count"] == 0
    # Any other repository's image still registers (whatever name its registry goes by,
    # the deployment's repository is refused: ECR answers to several host names), and so
    # does an image an operator pushed to the repository by hand under a tag of their own.
    body = {**IMAGE, "image": "registry.example.org/tools/adder:1", "algorithm": mine["pk"]}
    assert api_bob.post("algorithms/images/", body)[0] == 201
    pushed = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/gantry-algorithm-images:doctor-1"
    assert api_bob.post("algorithms/images/", {**body, "image": pushed})[0] == 201
