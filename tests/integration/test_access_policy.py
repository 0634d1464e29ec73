"""The access policy through the API, with three users: the creator, another user, an admin.

Every route of the OpenAPI document has a case here: a new route without one fails
``test_every_route_has_a_policy_case``. Each case is tried by the other user first (who must
get 403/404 and change nothing), then by the creator and the admin.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gantry import timeutil
from gantry.errors import NotFound
from gantry.images import Image, ImageFile, ImageType
from gantry.jobs import SocketValue
from tests.conftest import ApiClient
from tests.integration.test_inputs_support import put_upload

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
ROLES = ("other", "creator", "admin")


@dataclass
class World:
    ctx: Any
    clients: dict[str, ApiClient]
    interface: dict
    algorithm: dict
    algorithm_image: dict
    job: dict
    image: Image
    upload: dict
    names: dict[str, str] = field(
        default_factory=lambda: {"creator": "alice", "other": "bob", "admin": "root"}
    )
    token_pk: str = ""
    archive: dict = field(default_factory=dict)
    item: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)

    @property
    def creator(self) -> ApiClient:
        return self.clients["creator"]

    def fresh_upload(self) -> dict:
        status, body, _ = self.creator.post("uploads/", {"filename": "ct.mha"})
        assert status == 201, body
        return body


def _input(interface: str, **given: Any) -> dict[str, Any]:
    keys = ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
    return {"interface": interface, **dict.fromkeys(keys), "image_name": None, **given}


@pytest.fixture
def world(ctx, api_app) -> World:
    clients = {
        "creator": ApiClient(api_app, ctx.store.users.create_token("alice")),
        "other": ApiClient(api_app, ctx.store.users.create_token("bob")),
        "admin": ApiClient(api_app, ctx.store.users.create_token("root", is_admin=True)),
    }
    alice = clients["creator"]
    for title, kind, path in (("Number", "Integer", "number.json"), ("Result", "Float", "r.json")):
        status, interface, _ = alice.post(
            "components/interfaces/", {"title": title, "kind": kind, "relative_path": path}
        )
        assert status == 201, interface
    status, algorithm, _ = alice.post(
        "algorithms/",
        {"title": "Adder", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    assert status == 201, algorithm
    status, algorithm_image, _ = alice.post(
        "algorithms/images/", {"image": "local", "command": ["run"], "algorithm": algorithm["pk"]}
    )
    assert status == 201, algorithm_image
    status, job, _ = alice.post(
        "algorithms/jobs/",
        {"algorithm": algorithm["api_url"], "inputs": [_input("number", value=1)]},
    )
    assert status == 201, job
    # An output file, as a finished job has.
    key = f"io/{job['pk']}/1/output/r.json"
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=key, Body=b"1.5")
    ctx.store.jobs.update(
        job["pk"],
        lambda j: j.model_copy(
            update={"outputs": [SocketValue(pk=9000, socket="result", file=key)]}
        ),
    )
    image_key = f"images/{uuid.uuid4()}/ct.mha"
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=image_key, Body=b"x")
    image = ctx.store.images.put(
        Image(
            pk=str(uuid.uuid4()),
            name="ct.mha",
            owner="alice",
            created=timeutil.iso(),
            files=[ImageFile(pk="f1", key=image_key, image_type=ImageType.MHD, filename="ct.mha")],
        )
    )
    status, upload, _ = alice.post("uploads/", {"filename": "ct.mha"})
    assert status == 201, upload
    _, token = ctx.store.users.issue_token("alice")
    queue = ctx.clients.sqs.create_queue(QueueName="gantry-archive-runs")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(update={"archive_runs_queue_url": queue})
    status, archive, _ = alice.post("archives/", {"title": "Cases"})
    assert status == 201, archive
    status, item, _ = alice.post(
        "archives/items/", {"archive": archive["pk"], "values": [_input("number", value=3)]}
    )
    assert status == 201, item
    # A file value, as an uploaded one becomes.
    item_key = f"values/{item['pk']}/9001/r.json"
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=item_key, Body=b"2.5")
    ctx.store.archives.update_item(
        item["pk"],
        lambda i: i.model_copy(
            update={"values": [*i.values, SocketValue(pk=9001, socket="result", file=item_key)]}
        ),
    )
    status, run, _ = alice.post(
        f"algorithms/{algorithm['pk']}/archive-runs/", {"archive": archive["pk"]}
    )
    assert status == 201, run
    return World(
        ctx,
        clients,
        interface,
        algorithm,
        algorithm_image,
        job,
        image,
        upload,
        token_pk=token.pk,
        archive=archive,
        item=item,
        run=run,
    )


Call = Callable[[World, ApiClient, str], tuple[int, Any, dict]]


@dataclass(frozen=True)
class Case:
    call: Call
    # The expected status for the other user, the creator and the admin.
    other: int
    creator: int
    admin: int


def _upload_patch(action: str, body: Any) -> Call:
    def call(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
        upload = w.fresh_upload()
        return client.patch(f"uploads/{upload['pk']}/{upload['s3_upload_id']}/{action}/", body)

    return call


def _session(w: World) -> str:
    """An upload session of the creator's, stored as the API stores one."""
    from gantry.upload_sessions import UploadSession

    session = UploadSession(
        pk=str(uuid.uuid4()), creator="alice", created=timeutil.iso(), uploads=["u"]
    )
    return w.ctx.store.upload_sessions.create(session).pk


def _post_session(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    queue_url = w.ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
    w.ctx.settings = w.ctx.settings.model_copy(update={"uploads_queue_url": queue_url})
    upload = put_upload(w.ctx, "ct.mha", b"x", owner=w.names["creator"])
    return client.post("cases/upload-sessions/", {"uploads": [upload.pk]})


def _put_interface(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    body = {
        "title": "Result",
        "kind": "Float",
        "relative_path": "r.json",
        "description": f"by {role}",
    }
    return client.put(f"components/interfaces/{w.interface['pk']}/", body)


def _post_interface(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    body = {"title": f"Mine {role}", "kind": "Float", "relative_path": f"{role}.json"}
    return client.post("components/interfaces/", body)


def _post_algorithm(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    body = {"title": f"Own {role}", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]}
    return client.post("algorithms/", body)


def _me(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    status, body, headers = client.get("users/me/")
    assert body["username"] == w.names[role]
    assert body["active_jobs"] == (1 if role == "creator" else 0)
    return status, body, headers


def _models_queue(w: World) -> None:
    # Model imports are queued for the upload handler.
    if not w.ctx.settings.uploads_queue_url:
        url = w.ctx.clients.sqs.create_queue(QueueName="gantry-uploads")["QueueUrl"]
        w.ctx.settings = w.ctx.settings.model_copy(update={"uploads_queue_url": url})


def _model(w: World) -> str:
    """The pk of an imported model of the creator's algorithm (made once)."""
    from gantry.algorithms import AlgorithmModel, ImportStatus

    pk = "0b7d2c1e-5a43-4f6e-9a51-6f1e0c7a9d20"
    try:
        w.ctx.store.models.get(pk)
    except NotFound:
        w.ctx.store.models.create(
            AlgorithmModel(
                pk=pk,
                algorithm=w.algorithm["pk"],
                creator="alice",
                created=timeutil.iso(),
                import_status=ImportStatus.COMPLETED,
                sha256="sha256:" + "b" * 64,
                size_in_storage=1,
                key=f"models/{w.algorithm['pk']}/{pk}.tar.gz",
            )
        )
    return pk


def _post_model(
    w: World, client: ApiClient, role: str, path: str | None = None
) -> tuple[int, Any, dict]:
    # Each role offers a completed upload of its own (only one's own uploads may be used).
    _models_queue(w)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"weights"
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    upload = put_upload(w.ctx, "model.tar.gz", buffer.getvalue(), owner=w.names[role])
    if path is None:
        return client.post(f"algorithms/{w.algorithm['pk']}/models/", {"user_upload": upload.pk})
    return client.post(path, {"algorithm": w.algorithm["pk"], "user_upload": upload.pk})


def _answer_request(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    from gantry.services.access_requests import request_access

    algorithm = w.ctx.store.algorithms.get(w.algorithm["pk"])
    if "dave" not in algorithm.users:  # an earlier role accepted it already
        request_access(w.ctx, w.ctx.store.users.ensure_user("dave"), algorithm.pk)
    path = f"algorithms/{w.algorithm['pk']}/access-requests/dave/"
    return client.patch(path, {"status": "ACCEPTED"})


def _list_requests(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    from gantry.services.access_requests import request_access

    request_access(w.ctx, w.ctx.store.users.ensure_user("bob"), w.algorithm["pk"])
    status, body, headers = client.get(f"algorithms/{w.algorithm['pk']}/access-requests/")
    # The other user asked (their own request only); the creator and admin see it.
    assert [r["user"] for r in body["results"]] == ["bob"]
    return status, body, headers


def _spare_model(w: World) -> str:
    """Another imported model of the creator's algorithm, not its desired one."""
    import uuid

    from gantry.algorithms import AlgorithmModel, ImportStatus

    pk = str(uuid.uuid4())
    w.ctx.store.models.create(
        AlgorithmModel(
            pk=pk,
            algorithm=w.algorithm["pk"],
            creator="alice",
            created=timeutil.iso(),
            import_status=ImportStatus.COMPLETED,
            sha256="sha256:" + pk.replace("-", "")[:32] * 2,
            size_in_storage=1,
            key=f"models/{w.algorithm['pk']}/{pk}.tar.gz",
        )
    )
    return pk


def _spare_image(w: World, **extra: Any) -> str:
    """Another image of the algorithm, not its desired version (an import queued with
    ``import_status``)."""
    from gantry.algorithms import AlgorithmImageFields

    algorithm = w.ctx.store.algorithms.get(w.algorithm["pk"])
    store = w.ctx.store.algorithms
    if extra:
        extra = {"image": "upload", "user_upload": "u", "is_desired_version": False, **extra}
        return store.create_image(algorithm, None, creator="alice", **extra).pk
    fields = AlgorithmImageFields(image="local", command=["run"], is_desired_version=False)
    return store.create_image(algorithm, fields, creator="alice").pk


def _delete_item(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    """A new item of the creator's archive each time (the creator's delete removes it)."""
    body = {"archive": w.archive["pk"], "values": [], "title": f"for {role}"}
    status, item, _ = w.creator.post("archives/items/", body)
    assert status == 201, item
    return client.request("DELETE", f"archives/items/{item['pk']}/")


def _cancel_import(w: World, client: ApiClient, role: str) -> tuple[int, Any, dict]:
    from gantry.algorithms import ImportStatus

    pk = _spare_image(w, import_status=ImportStatus.QUEUED)
    return client.post(f"algorithms/images/{pk}/cancel/")


CASES: dict[tuple[str, str], Case] = {
    ("POST", "/algorithms/{pk}/archive-runs"): Case(
        lambda w, c, r: c.post(
            f"algorithms/{w.algorithm['pk']}/archive-runs/", {"archive": w.archive["pk"]}
        ),
        404,
        201,
        201,
    ),
    # Each caller's own runs: the creator's run is in the creator's list.
    ("GET", "/algorithms/{pk}/archive-runs"): Case(
        lambda w, c, r: c.get(f"algorithms/{w.algorithm['pk']}/archive-runs/"), 404, 200, 200
    ),
    ("GET", "/algorithms/{pk}/archive-runs/{run_pk}"): Case(
        lambda w, c, r: c.get(f"algorithms/{w.algorithm['pk']}/archive-runs/{w.run['pk']}/"),
        404,
        200,
        200,
    ),
    # The creator's run; the admin's cancel repeats it (nothing changes).
    ("POST", "/algorithms/{pk}/archive-runs/{run_pk}/cancel"): Case(
        lambda w, c, r: c.post(
            f"algorithms/{w.algorithm['pk']}/archive-runs/{w.run['pk']}/cancel/"
        ),
        404,
        200,
        200,
    ),
    ("POST", "/archives"): Case(
        lambda w, c, r: c.post("archives/", {"title": f"Archive of {r}"}), 201, 201, 201
    ),
    ("GET", "/archives/{pk}"): Case(
        lambda w, c, r: c.get(f"archives/{w.archive['pk']}/"), 404, 200, 200
    ),
    ("PATCH", "/archives/{pk}"): Case(
        lambda w, c, r: c.patch(f"archives/{w.archive['pk']}/", {"description": r}), 404, 200, 200
    ),
    # Not a member: the archive is not found, naming the field.
    ("POST", "/archives/items"): Case(
        lambda w, c, r: c.post("archives/items/", {"archive": w.archive["pk"]}), 400, 201, 201
    ),
    ("GET", "/archives/items/{pk}"): Case(
        lambda w, c, r: c.get(f"archives/items/{w.item['pk']}/"), 404, 200, 200
    ),
    ("PATCH", "/archives/items/{pk}"): Case(
        lambda w, c, r: c.patch(f"archives/items/{w.item['pk']}/", {"title": r}), 404, 200, 200
    ),
    ("GET", "/archives/items/{pk}/values/{value_pk}/{filename}"): Case(
        lambda w, c, r: c.get(f"archives/items/{w.item['pk']}/values/9001/r.json"), 404, 302, 302
    ),
    ("GET", "/gcapi"): Case(lambda w, c, r: c.get("gcapi/"), 200, 200, 200),
    # Each user sees only themselves there.
    ("GET", "/users/me"): Case(_me, 200, 200, 200),
    ("GET", "/algorithms/{pk}"): Case(
        lambda w, c, r: c.get(f"algorithms/{w.algorithm['pk']}/"), 404, 200, 200
    ),
    ("POST", "/algorithms"): Case(_post_algorithm, 201, 201, 201),
    ("PATCH", "/algorithms/{pk}"): Case(
        lambda w, c, r: c.patch(f"algorithms/{w.algorithm['pk']}/", {"description": r}),
        404,
        200,
        200,
    ),
    ("POST", "/algorithms/{pk}/models"): Case(_post_model, 404, 201, 201),
    # Not an editor or user: the algorithm is not found, naming the field.
    ("POST", "/algorithms/models"): Case(
        lambda w, c, r: _post_model(w, c, r, "algorithms/models/"), 400, 201, 201
    ),
    ("DELETE", "/algorithms/models/{pk}"): Case(
        lambda w, c, r: c.request("DELETE", f"algorithms/models/{_spare_model(w)}/"), 404, 204, 204
    ),
    ("GET", "/algorithms/models/{pk}"): Case(
        lambda w, c, r: c.get(f"algorithms/models/{_model(w)}/"), 404, 200, 200
    ),
    ("PATCH", "/algorithms/models/{pk}"): Case(
        lambda w, c, r: c.patch(f"algorithms/models/{_model(w)}/", {"is_desired_version": True}),
        404,
        200,
        200,
    ),
    # Anyone may ask to use an algorithm; its members already may (400).
    ("POST", "/algorithms/{pk}/access-requests"): Case(
        lambda w, c, r: c.post(f"algorithms/{w.algorithm['pk']}/access-requests/"), 201, 400, 400
    ),
    ("GET", "/algorithms/{pk}/access-requests"): Case(_list_requests, 200, 200, 200),
    ("PATCH", "/algorithms/{pk}/access-requests/{username}"): Case(_answer_request, 404, 200, 200),
    ("POST", "/tokens"): Case(lambda w, c, r: c.post("tokens/", {"user": "alice"}), 403, 201, 201),
    ("DELETE", "/tokens/{pk}"): Case(
        lambda w, c, r: c.request(
            "DELETE", f"tokens/{w.ctx.store.users.issue_token('alice')[1].pk}/"
        ),
        404,
        204,
        204,
    ),
    ("GET", "/algorithms/images/{pk}"): Case(
        lambda w, c, r: c.get(f"algorithms/images/{w.algorithm_image['pk']}/"), 404, 200, 200
    ),
    ("PATCH", "/algorithms/images/{pk}"): Case(
        lambda w, c, r: c.patch(
            f"algorithms/images/{w.algorithm_image['pk']}/", {"is_desired_version": True}
        ),
        404,
        200,
        200,
    ),
    ("DELETE", "/archives/items/{pk}"): Case(_delete_item, 404, 204, 204),
    ("DELETE", "/algorithms/images/{pk}"): Case(
        lambda w, c, r: c.request("DELETE", f"algorithms/images/{_spare_image(w)}/"), 404, 204, 204
    ),
    ("POST", "/algorithms/images/{pk}/cancel"): Case(_cancel_import, 404, 200, 200),
    ("POST", "/algorithms/images"): Case(
        lambda w, c, r: c.post(
            "algorithms/images/",
            {"image": "local", "command": ["run"], "algorithm": w.algorithm["pk"]},
        ),
        404,
        201,
        201,
    ),
    ("GET", "/algorithms/jobs/{pk}"): Case(
        lambda w, c, r: c.get(f"algorithms/jobs/{w.job['pk']}/"), 404, 200, 200
    ),
    ("POST", "/algorithms/jobs"): Case(
        lambda w, c, r: c.post(
            "algorithms/jobs/",
            {"algorithm": w.algorithm["api_url"], "inputs": [_input("number", value=2)]},
        ),
        400,  # "Algorithm '…' not found", naming the field
        201,
        201,
    ),
    # Cancelling twice is harmless: the admin's repeat answers 200 too.
    # Sharing a job's data is its creator's (and admins') decision.
    ("PATCH", "/algorithms/jobs/{pk}"): Case(
        lambda w, c, r: c.patch(f"algorithms/jobs/{w.job['pk']}/", {"share_with_editors": True}),
        404,
        200,
        200,
    ),
    ("POST", "/algorithms/jobs/{pk}/cancel"): Case(
        lambda w, c, r: c.post(f"algorithms/jobs/{w.job['pk']}/cancel/"), 404, 200, 200
    ),
    ("GET", "/algorithms/jobs/{pk}/values/{value_pk}/{filename}"): Case(
        lambda w, c, r: c.get(f"algorithms/jobs/{w.job['pk']}/values/9000/r.json"), 404, 302, 302
    ),
    ("GET", "/cases/images/{pk}"): Case(
        lambda w, c, r: c.get(f"cases/images/{w.image.pk}/"), 404, 200, 200
    ),
    ("GET", "/cases/images/{pk}/files/{file_pk}/{filename}"): Case(
        lambda w, c, r: c.get(f"cases/images/{w.image.pk}/files/f1/ct.mha"), 404, 302, 302
    ),
    ("GET", "/cases/upload-sessions/{pk}"): Case(
        lambda w, c, r: c.get(f"cases/upload-sessions/{_session(w)}/"), 404, 200, 200
    ),
    # Only the uploader may put an upload into a session (admins included): 400 naming it.
    ("POST", "/cases/upload-sessions"): Case(_post_session, 400, 201, 400),
    ("GET", "/components/interfaces/{pk}"): Case(
        lambda w, c, r: c.get(f"components/interfaces/{w.interface['pk']}/"), 200, 200, 200
    ),
    ("PUT", "/components/interfaces/{pk}"): Case(_put_interface, 403, 200, 200),
    ("POST", "/components/interfaces"): Case(_post_interface, 201, 201, 201),
    ("GET", "/uploads/{pk}"): Case(
        lambda w, c, r: c.get(f"uploads/{w.upload['pk']}/"), 404, 200, 200
    ),
    ("POST", "/uploads"): Case(
        lambda w, c, r: c.post("uploads/", {"filename": "a.mha"}), 201, 201, 201
    ),
    ("PATCH", "/uploads/{pk}/{s3_upload_id}/generate-presigned-urls"): Case(
        _upload_patch("generate-presigned-urls", {"part_numbers": [1]}), 404, 200, 200
    ),
    ("PATCH", "/uploads/{pk}/{s3_upload_id}/abort-multipart-upload"): Case(
        _upload_patch("abort-multipart-upload", None), 404, 200, 200
    ),
    # No parts were uploaded, so completing is refused; but only the other user is "not found".
    ("PATCH", "/uploads/{pk}/{s3_upload_id}/complete-multipart-upload"): Case(
        _upload_patch("complete-multipart-upload", {"parts": [{"ETag": '"x"', "PartNumber": 1}]}),
        404,
        400,
        400,
    ),
    ("GET", "/uploads/{pk}/{s3_upload_id}/list-parts"): Case(
        lambda w, c, r: c.get(f"uploads/{w.upload['pk']}/{w.upload['s3_upload_id']}/list-parts/"),
        404,
        200,
        200,
    ),
}

# Lists: what each role must (and must not) find of the creator's entities.
LISTS: dict[str, Callable[[World], str]] = {
    "/algorithms": lambda w: w.algorithm["pk"],
    "/algorithms/images": lambda w: w.algorithm_image["pk"],
    "/algorithms/models": _model,
    "/algorithms/jobs": lambda w: w.job["pk"],
    "/cases/images": lambda w: w.image.pk,
    "/cases/upload-sessions": _session,
    "/uploads": lambda w: w.upload["pk"],
    "/components/interfaces": lambda w: w.interface["pk"],
    "/tokens": lambda w: w.token_pk,
    "/archives": lambda w: w.archive["pk"],
    "/archives/items": lambda w: w.item["pk"],
}
# Interfaces are shared; an admin's lists hold everyone's entities; others' lists their own.
SHARED_LISTS = {"/components/interfaces"}
ADMIN_LISTS = set(LISTS)


def _routes() -> set[tuple[str, str]]:
    paths = json.loads(OPENAPI.read_text())["paths"]
    return {(method.upper(), path) for path, methods in paths.items() for method in methods}


def test_every_route_has_a_policy_case() -> None:
    lists = {("GET", path) for path in LISTS}
    missing = sorted(_routes() - set(CASES) - lists)
    assert not missing, f"routes without an access-policy case: {missing}"
    stale = sorted((set(CASES) | lists) - _routes())
    assert not stale, f"policy cases for routes that no longer exist: {stale}"


def assert_documented(route: tuple[str, str], status: int, body: Any) -> None:
    """The document declares ``status`` for the route, and the body has its schema."""
    spec = json.loads(OPENAPI.read_text())
    method, path = route
    responses = spec["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{route} answered {status}, documented: {list(responses)}"
    schema = responses[str(status)].get("content", {}).get("application/json", {}).get("schema")
    if schema and body not in (None, ""):
        jsonschema.validate(body, {**schema, "components": spec["components"]})


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_answers_each_role(world: World, route: tuple[str, str]) -> None:
    case = CASES[route]
    before = world.creator.get(f"components/interfaces/{world.interface['pk']}/")[1]
    for role in ROLES:
        status, body, _ = case.call(world, world.clients[role], role)
        assert status == getattr(case, role), (role, body)
        assert_documented(route, status, body)
        if role == "other":
            # A refused call changes nothing of the creator's.
            after = world.creator.get(f"components/interfaces/{world.interface['pk']}/")[1]
            assert after == before


def _others_entities(w: World) -> dict[str, str]:
    """The other user's own algorithm, algorithm image, job, image, upload and token: what
    the creator's lists must not hold (and the admin's must)."""
    bob = w.clients["other"]
    status, algorithm, _ = bob.post(
        "algorithms/",
        {"title": "Bobs", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    assert status == 201, algorithm
    status, algorithm_image, _ = bob.post(
        "algorithms/images/", {"image": "local", "command": ["run"], "algorithm": algorithm["pk"]}
    )
    assert status == 201, algorithm_image
    status, job, _ = bob.post(
        "algorithms/jobs/",
        {"algorithm": algorithm["api_url"], "inputs": [_input("number", value=3)]},
    )
    assert status == 201, job
    status, upload, _ = bob.post("uploads/", {"filename": "b.mha"})
    assert status == 201, upload
    return {
        "/algorithms": algorithm["pk"],
        "/algorithms/images": algorithm_image["pk"],
        "/algorithms/jobs": job["pk"],
        "/cases/images": _image_of(w.ctx, "bob", "b.mha").pk,
        "/uploads": upload["pk"],
        "/tokens": w.ctx.store.users.issue_token("bob")[1].pk,
    }


@pytest.mark.parametrize("path", sorted(LISTS))
def test_lists_hold_nothing_of_another_user(world: World, path: str) -> None:
    wanted = LISTS[path](world)
    others = _others_entities(world)
    for role in ROLES:
        status, page, _ = world.clients[role].get(path.lstrip("/") + "/", query={"limit": 1000})
        assert status == 200, page
        pks = [item["pk"] for item in page["results"]]
        assert page["count"] == len(pks)
        expected = (
            role == "creator"
            or (role == "other" and path in SHARED_LISTS)
            or (role == "admin" and path in ADMIN_LISTS)
        )
        assert (wanted in pks) is expected, (role, pks)
        if path in others:
            # The other user's entity: in their list and the admin's, never the creator's.
            assert (others[path] in pks) is (role != "creator"), (role, pks)
        if role == "creator" and path not in SHARED_LISTS:
            owners = {
                item.get("creator") or item.get("owner") or item.get("user")
                for item in page["results"]
            }
            assert owners <= {"alice", None}, owners


def test_interface_changes_keep_what_algorithms_rely_on(world: World) -> None:
    admin = world.clients["admin"]
    pk = world.interface["pk"]
    base = {"title": "Result", "kind": "Float", "relative_path": "r.json"}
    for change, field_name in (
        ({"kind": "Integer"}, "kind"),
        ({"relative_path": "other.json"}, "relative_path"),
        ({"schema": {"type": "number", "maximum": 1}}, "schema"),
    ):
        status, body, _ = admin.put(f"components/interfaces/{pk}/", {**base, **change})
        assert status == 400, body
        assert field_name in body
        assert "algorithm uses this interface" in body["detail"] or "values" in body["detail"]
    status, body, _ = admin.put(f"components/interfaces/{pk}/", {**base, "description": "ok"})
    assert status == 200, body


def test_an_interfaces_creator_cannot_change_the_default_others_jobs_take(world: World) -> None:
    """Interfaces are shared: bob's algorithm may take alice's. A job that leaves an input out
    takes the interface's default, so a default changed by alice would become the input of
    bob's users' jobs (or, removed, make them fail to match): fixed once an algorithm uses
    the interface."""
    alice, bob = world.creator, world.clients["other"]
    offset = {"title": "Offset", "kind": "Integer", "relative_path": "offset.json"}
    status, created, _ = alice.post("components/interfaces/", {**offset, "default_value": 10})
    assert status == 201, created
    status, algorithm, _ = bob.post(
        "algorithms/",
        {
            "title": "Bob adds",
            "interfaces": [{"inputs": ["number", "offset"], "outputs": ["result"]}],
        },
    )
    assert status == 201, algorithm
    for default in (666, None):
        body = {**offset, "default_value": default}
        status, answer, _ = alice.put(f"components/interfaces/{created['pk']}/", body)
        assert status == 400, answer
        assert "default_value" in answer
    assert world.ctx.store.sockets.get(created["pk"]).default_value == 10
    # Unchanged, it may be sent again with the rest.
    status, answer, _ = alice.put(
        f"components/interfaces/{created['pk']}/",
        {**offset, "default_value": 10, "description": "added to the number"},
    )
    assert status == 200, answer


def test_an_unused_interface_can_change_kind_by_its_creator(world: World) -> None:
    alice = world.creator
    status, created, _ = alice.post(
        "components/interfaces/", {"title": "Spare", "kind": "Float", "relative_path": "s.json"}
    )
    assert status == 201
    changed = {"title": "Spare", "kind": "Integer", "relative_path": "t.json"}
    status, body, _ = world.clients["other"].put(f"components/interfaces/{created['pk']}/", changed)
    assert status == 403, body
    status, body, _ = alice.put(f"components/interfaces/{created['pk']}/", changed)
    assert status == 200, body
    assert body["kind"] == "Integer"


def test_editors_read_a_users_job_without_its_data(world: World) -> None:
    ctx = world.ctx
    ctx.store.users.ensure_user("erin")
    # bob uses the algorithm; erin edits it (added by the store, as a PATCH would).
    _add_members(ctx, world.algorithm["pk"], users=["bob"], editors=["erin"])
    bob = world.clients["other"]
    status, job, _ = bob.post(
        "algorithms/jobs/",
        {"algorithm": world.algorithm["api_url"], "inputs": [_input("number", value=7)]},
    )
    assert status == 201, job
    erin = ApiClient(world.creator.app, ctx.store.users.create_token("erin"))
    status, seen, _ = erin.get(f"algorithms/jobs/{job['pk']}/")
    assert status == 200, seen
    assert seen["inputs"] == [] and seen["outputs"] == []
    assert seen["status"] == "Queued"
    # bob, a user of the algorithm, does not see alice's job.
    assert bob.get(f"algorithms/jobs/{world.job['pk']}/")[0] == 404
    # bob may not cancel alice's job; erin may cancel bob's.
    assert bob.post(f"algorithms/jobs/{world.job['pk']}/cancel/")[0] == 404
    status, cancelled, _ = erin.post(f"algorithms/jobs/{job['pk']}/cancel/")
    assert status == 200, cancelled
    assert cancelled["status"] == "Cancelled"
    assert cancelled["inputs"] == []
    # erin, an editor, may not download alice's values.
    status, _, _ = erin.get(f"algorithms/jobs/{world.job['pk']}/values/9000/r.json")
    assert status == 403


def _image_of(ctx, owner: str, name: str) -> Image:
    key = f"images/{uuid.uuid4()}/{name}"
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=key, Body=b"x")
    return ctx.store.images.put(
        Image(
            pk=str(uuid.uuid4()),
            name=name,
            owner=owner,
            created=timeutil.iso(),
            files=[ImageFile(pk="f1", key=key, image_type=ImageType.MHD, filename=name)],
        )
    )


def test_a_jobs_data_is_seen_only_once_its_creator_shares_it(world: World) -> None:
    """grand-challenge's job viewers: editors see a user's job without its inputs, outputs and
    images until the creator shares them with the editors or names viewers."""
    ctx = world.ctx
    for name in ("erin", "carol"):
        ctx.store.users.ensure_user(name)
    _add_members(ctx, world.algorithm["pk"], users=["bob"], editors=["erin"])
    bob = world.clients["other"]
    erin = ApiClient(world.creator.app, ctx.store.users.create_token("erin"))
    carol = ApiClient(world.creator.app, ctx.store.users.create_token("carol"))
    status, job, _ = bob.post(
        "algorithms/jobs/",
        {"algorithm": world.algorithm["api_url"], "inputs": [_input("number", value=7)]},
    )
    assert status == 201, job
    # What a finished job holds: an output file and an output image of bob's.
    key = f"io/{job['pk']}/1/output/r.json"
    ctx.clients.s3.put_object(Bucket=ctx.settings.bucket_name, Key=key, Body=b"2.5")
    stored = ctx.store.jobs.update(
        job["pk"],
        lambda j: j.model_copy(
            update={"outputs": [SocketValue(pk=9001, socket="result", file=key)]}
        ),
    )
    image = _image_of(ctx, "bob", "seg.mha")
    ctx.store.jobs.add_output_images(stored, [image.pk])
    job_path = f"algorithms/jobs/{job['pk']}/"
    routes = {
        "value": f"{job_path}values/9001/r.json",
        "image": f"cases/images/{image.pk}/",
        "image file": f"cases/images/{image.pk}/files/f1/seg.mha",
    }

    def sees_data(client: ApiClient) -> bool:
        status, seen, _ = client.get(job_path)
        assert status == 200, seen
        listed = client.get(
            "algorithms/jobs/", query={"algorithm_image__algorithm": world.algorithm["api_url"]}
        )[1]["results"]
        in_list = [j for j in listed if j["pk"] == job["pk"]]
        with_data = bool(seen["inputs"])
        assert with_data == bool(seen["outputs"])
        # The list shows what the detail shows, a viewer's list included.
        assert all(bool(j["inputs"]) == with_data for j in in_list)
        answers = {name: client.get(path)[0] for name, path in routes.items()}
        if with_data:
            assert seen["inputs"][0]["value"] == 7
            assert answers == {"value": 302, "image": 200, "image file": 302}, answers
        else:
            assert answers == {"value": 403, "image": 404, "image file": 404}, answers
        return with_data

    assert not sees_data(erin)
    assert carol.get(job_path)[0] == 404
    for name, path in routes.items():
        assert carol.get(path)[0] == 404, name
    # Editors and strangers cannot share it; the creator can.
    status, body, _ = erin.patch(job_path, {"share_with_editors": True})
    assert status == 403, body
    assert carol.patch(job_path, {"viewers": ["carol"]})[0] == 404
    assert not sees_data(erin)

    status, shared, _ = bob.patch(job_path, {"share_with_editors": True})
    assert status == 200, shared
    assert shared["share_with_editors"] is True and shared["viewers"] == []
    assert sees_data(erin)
    assert carol.get(job_path)[0] == 404

    def own_list(client: ApiClient, **query: str) -> tuple[list[str], int]:
        status, body, _ = client.get("algorithms/jobs/", query=query)
        assert status == 200, body
        return [j["pk"] for j in body["results"]], body["count"]

    assert own_list(carol) == ([], 0)
    status, shared, _ = bob.patch(job_path, {"viewers": ["carol", "bob", "carol"]})
    assert status == 200, shared
    assert shared["viewers"] == ["carol"]  # the creator needs no place; repeats collapse
    assert sees_data(carol)
    # grand-challenge lists the jobs a user may view: a viewer's own list holds the job, once.
    assert bob.patch(job_path, {"viewers": ["carol"]})[0] == 200
    assert own_list(carol) == ([job["pk"]], 1)
    assert own_list(carol, status=stored.status.label) == ([job["pk"]], 1)
    assert own_list(bob)[0].count(job["pk"]) == 1
    # A viewer sees; cancelling and sharing stay the creator's and the editors'.
    assert carol.post(f"{job_path}cancel/")[0] == 403
    assert carol.patch(job_path, {"viewers": []})[0] == 403
    # Only the job's creator USEs its images as inputs, viewers do not.
    assert carol.get("cases/images/")[1]["results"] == []

    many = [f"viewer-{n}" for n in range(34)]
    for name in many:
        ctx.store.users.ensure_user(name)
    status, body, _ = bob.patch(job_path, {"viewers": many})
    assert status == 400 and "viewers" in body and "at most 33" in body["detail"], body
    status, body, _ = bob.patch(job_path, {"viewers": many[:32]})  # and carol goes: 33
    assert status == 200 and len(body["viewers"]) == 32, body
    assert bob.patch(job_path, {"viewers": ["carol"]})[0] == 200
    status, body, _ = bob.patch(job_path, {"viewers": ["nobody-here"]})
    assert status == 400 and "viewers" in body and "nobody-here" in body["detail"], body
    status, body, _ = bob.patch(job_path, {"viewers": [], "share_with_editors": False})
    assert status == 200, body
    assert not sees_data(erin)
    assert carol.get(job_path)[0] == 404
    assert carol.get(routes["image"])[0] == 404
    assert own_list(carol) == ([], 0)
    algorithm_url = world.algorithm["api_url"]
    assert own_list(carol, algorithm_image__algorithm=algorithm_url) == ([], 0)


def _add_members(ctx, algorithm_pk: str, *, users: list[str], editors: list[str]) -> None:
    from gantry.store import keys

    def mutate(stored):
        doc = dict(stored.doc)
        doc["users"] = [*doc["users"], *users]
        doc["editors"] = [*doc["editors"], *editors]
        return doc, {}

    ctx.store.algorithms.table.update_doc(keys.algorithm(algorithm_pk), mutate)
