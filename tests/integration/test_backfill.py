"""Records written before the shared lists, the active-job counters and token ids existed:
the backfill lists them, gives unfinished jobs their slots and old tokens an id; an old job
that ends frees only a slot it holds, so no counter goes negative; running it again adds
nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gantry import timeutil
from gantry.algorithms import AlgorithmFields, AlgorithmImageFields
from gantry.images import Image, ImageFile, ImageType
from gantry.job_states import JobStatus
from gantry.jobs import Job, SocketValue
from gantry.pipeline.cancel import cancel_job
from gantry.store import keys
from gantry.store.archive_runs import ArchiveRunStore
from gantry.store.backfill import backfill
from gantry.store.jobs import _attributes, _doc
from gantry.store.pagination import count_update
from gantry.store.table import MAIN_SK
from gantry.uploads import Upload
from gantry.users import hash_token, new_token
from tests.conftest import ApiClient
from tests.integration.test_inputs_support import make_socket


def _old_job(ctx, algorithm_pk: str, image_pk: str, status: JobStatus) -> Job:
    """A job as versions before the lists and limits stored it: its item and its creator's
    lists only (no listing in the algorithm's or everyone's list, no slot)."""
    now = timeutil.iso()
    job = Job(
        pk=str(uuid.uuid4()),
        algorithm=algorithm_pk,
        algorithm_image=image_pk,
        creator="bob",
        status=status,
        inputs=[SocketValue(pk=1, socket="number", value=1)],
        time_limit=600,
        created=now,
        modified=now,
    )
    attributes = {k: v for k, v in _attributes(job).items() if v is not None}
    item = ctx.store.table.item(keys.job(job.pk), MAIN_SK, _doc(job), **attributes)
    ctx.store.table.transact_put(
        [item],
        updates=[
            count_update(keys.jobs_of("bob"), 1),
            count_update(keys.jobs_of_algorithm("bob", algorithm_pk), 1),
        ],
    )
    return job


def _old_records(ctx) -> dict[str, Any]:
    make_socket(ctx, "Number", "Integer", "number.json")
    make_socket(ctx, "Result", "Float", "result.json")
    sets = [{"inputs": ["number"], "outputs": ["result"]}]
    fields = AlgorithmFields(title="Adder", interfaces=sets, users=["bob"], editors=["erin"])
    algorithm = ctx.store.algorithms.create(fields, creator="alice")
    # An algorithm of bob's from before everyone's list of algorithms.
    own = ctx.store.algorithms.create(AlgorithmFields(title="Old", interfaces=sets), creator="bob")
    ctx.store.table.delete(keys.algorithm(own.pk), "LISTED")
    ctx.store.table.transact_put([], updates=[count_update(keys.ALL_ALGORITHMS, -1)])
    image = ctx.store.algorithms.create_image(
        algorithm, AlgorithmImageFields(image="local", command=["run"]), creator="alice"
    )
    running = _old_job(ctx, algorithm.pk, image.pk, JobStatus.EXECUTING)
    finished = _old_job(ctx, algorithm.pk, image.pk, JobStatus.SUCCESS)
    # An image, an upload and a token of bob's without listings (and the token without id).
    img = Image(
        pk=str(uuid.uuid4()),
        name="ct.mha",
        owner="bob",
        created=timeutil.iso(),
        files=[
            ImageFile(pk="f1", key="images/x/ct.mha", image_type=ImageType.MHD, filename="ct.mha")
        ],
    )
    list_key = keys.images_of("bob")
    ctx.store.table.transact_put(
        [
            ctx.store.table.item(
                keys.image(img.pk),
                MAIN_SK,
                img.model_dump(mode="json"),
                GSI1PK=list_key.value,
                GSI1SK=f"{img.created}#{img.pk}",
            )
        ],
        updates=[count_update(list_key, 1)],
    )
    upload = Upload(
        pk=str(uuid.uuid4()),
        creator="bob",
        filename="a.mha",
        key=f"uploads/{uuid.uuid4()}/a.mha",
        s3_upload_id="x",
        created=timeutil.iso(),
    )
    uploads_key = keys.uploads_of("bob")
    ctx.store.table.transact_put(
        [
            ctx.store.table.item(
                keys.upload(upload.pk),
                MAIN_SK,
                upload.model_dump(mode="json"),
                GSI1PK=uploads_key.value,
                GSI1SK=f"{upload.created}#{upload.pk}",
            )
        ],
        updates=[count_update(uploads_key, 1)],
    )
    ctx.store.users.ensure_user("bob")
    old_token = new_token()
    ctx.store.table.put(
        ctx.store.table.item(
            keys.token(hash_token(old_token)), MAIN_SK, None, username="bob", created=timeutil.iso()
        )
    )
    return {
        "algorithm": algorithm,
        "own": own,
        "running": running,
        "finished": finished,
        "image": img,
        "upload": upload,
        "token": old_token,
    }


def _pks(client: ApiClient, path: str, **query: Any) -> list[str]:
    status, page, _ = client.get(path, query={"limit": 1000, **query})
    assert status == 200, page
    assert page["count"] == len(page["results"])
    return [item["pk"] for item in page["results"]]


def _active(ctx, scope: str) -> int | None:
    """The raw counter (None: never moved): ``active_count`` would hide a negative one."""
    item = ctx.store.table.get_item(f"ACTIVE#{scope}", "N")
    return None if item is None else int(item["n"])


@pytest.fixture
def old(ctx) -> dict[str, Any]:
    return _old_records(ctx)


def test_backfill_lists_old_records_and_gives_old_jobs_their_slots(ctx, api_app, old) -> None:
    root = ApiClient(api_app, ctx.store.users.create_token("root", is_admin=True))
    erin = ApiClient(api_app, ctx.store.users.create_token("erin"))
    bob = ApiClient(api_app, old["token"])
    algorithm_url = f"{ctx.settings.api_base_url}algorithms/{old['algorithm'].pk}/"
    jobs = {old["running"].pk, old["finished"].pk}
    assert not jobs & set(_pks(root, "algorithms/jobs/"))
    assert _pks(erin, "algorithms/jobs/", algorithm_image__algorithm=algorithm_url) == []
    assert bob.get("users/me/")[1]["active_jobs"] == 0

    added = backfill(ctx.store.table)
    assert added == {
        "algorithm listings": 1,
        "job listings": 4,
        "job slots": 1,
        "image listings": 1,
        "upload listings": 1,
        "token ids": 1,
    }
    assert jobs <= set(_pks(root, "algorithms/jobs/"))
    assert set(_pks(erin, "algorithms/jobs/", algorithm_image__algorithm=algorithm_url)) == jobs
    assert old["own"].pk in _pks(root, "algorithms/")
    assert old["image"].pk in _pks(root, "cases/images/")
    assert old["upload"].pk in _pks(root, "uploads/")
    # The old token now has an id: listed (for bob and admins) and revocable by it.
    token_pks = _pks(bob, "tokens/")
    assert len(token_pks) == 1 and token_pks[0] in _pks(root, "tokens/")
    # The unfinished old job holds its slots now; the finished one holds none.
    assert bob.get("users/me/")[1]["active_jobs"] == 1
    assert (_active(ctx, "USER#bob"), _active(ctx, "TOTAL")) == (1, 1)

    # Again: nothing to add, nothing counted twice.
    assert backfill(ctx.store.table) == {}
    assert _active(ctx, "USER#bob") == 1
    assert root.get("algorithms/jobs/")[1]["count"] == 2

    # The old job's end frees the slot it was given.
    cancel_job(ctx, old["running"].pk, by="bob")
    assert (_active(ctx, "USER#bob"), _active(ctx, f"ALG#{old['algorithm'].pk}")) == (0, 0)
    assert bob.request("DELETE", f"tokens/{token_pks[0]}/")[0] == 204
    assert bob.get("users/me/")[0] == 401
    assert token_pks[0] not in _pks(root, "tokens/")  # root's and erin's remain


def test_an_old_job_ending_before_the_backfill_drives_no_counter_negative(ctx, old) -> None:
    # A job counted before it: its slot is freed once, the old one frees none.
    user = ctx.store.users.ensure_user("bob")
    from gantry.services.jobs import JobCreate, JobInput, create_job
    from gantry.urls import Urls

    body = JobCreate(algorithm=old["algorithm"].pk, inputs=[JobInput(interface="number", value=2)])
    new = create_job(ctx, user, body, Urls(ctx.settings.api_base_url), enforce_limits=True)
    assert _active(ctx, "USER#bob") == 1
    cancel_job(ctx, old["running"].pk, by="bob")
    assert ctx.store.jobs.get(old["running"].pk).status is JobStatus.CANCELLED
    assert _active(ctx, "USER#bob") == 1
    cancel_job(ctx, new.pk, by="bob")
    assert (_active(ctx, "USER#bob"), _active(ctx, "TOTAL")) == (0, 0)
    # Ended jobs take no slot from the backfill.
    assert backfill(ctx.store.table).get("job slots", 0) == 0
    assert _active(ctx, "USER#bob") == 0


def test_backfill_moves_the_old_inputs_index_so_archive_runs_skip_done_items(ctx) -> None:
    table = ctx.store.table
    runs = ArchiveRunStore(table)
    # Before the index held a set per fingerprint: one item per job.
    table.put(table.item("INPUTS#fp-old", "job-1", None))
    table.put(table.item("INPUTS#fp-old", "job-2", None))
    table.transact_put([], updates=[ArchiveRunStore.remember_inputs("fp-new", "job-3")])
    assert runs.jobs_with_inputs(["fp-old"]) == {}

    assert backfill(table)["archive run input index entries"] == 2
    assert runs.jobs_with_inputs(["fp-old", "fp-new"]) == {
        "fp-old": ["job-1", "job-2"],
        "fp-new": ["job-3"],
    }
    assert "archive run input index entries" not in backfill(table)
