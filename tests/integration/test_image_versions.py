"""The life of imported images: pushed to a registry (an OCI image layout store here; the
distribution registry in tests/e2e/test_image_registry.py), the newest completed one desired,
an older one activated again, removed (and deleted from the registry), an import cancelled,
two imports of the same image at once, failed imports cleaned up after their retention."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from gantry.local.images import runner_layer
from gantry.oci.layout import OciLayout
from gantry.oci.registry import RegistryError, split_reference
from gantry.pipeline.image_import import (
    import_image,
    registry_publisher,
    registry_remover,
)
from tests.image_builder import write_archive
from tests.integration.test_image_import import (  # noqa: F401 (fixtures)
    drain,
    image_store,
    import_archive,
    job_body,
    platform,
    spec,
    upload,
)


@pytest.fixture
def layout(ctx, platform, tmp_path) -> OciLayout:  # noqa: F811
    store = OciLayout(tmp_path / "registry")
    ctx.image_publisher = registry_publisher(store, runner_layer(tmp_path / "runner"))
    ctx.image_remover = registry_remover(store)
    return store


def archive(tmp_path: Path, version: str) -> Path:
    return write_archive(tmp_path / f"v{version}.tar", spec(labels={"version": version}))


def in_registry(layout: OciLayout, image: dict) -> bool:
    pushed = split_reference(image["image"])
    assert pushed is not None, image["image"]
    try:
        layout.get_manifest(pushed[1], pushed[2])
    except RegistryError:
        return False
    return True


def job_image(ctx, api, algorithm: dict) -> str:
    """The image (pk) a new job of the algorithm runs."""
    status, job, _ = api.post("algorithms/jobs/", job_body(algorithm))
    assert status == 201, job
    return ctx.store.jobs.get(job["pk"]).algorithm_image


def test_activating_an_older_image_changes_what_the_next_job_runs(
    ctx,
    api,
    platform,  # noqa: F811
    layout,
    tmp_path,
) -> None:
    first = import_archive(ctx, api, platform, archive(tmp_path, "1"))
    second = import_archive(ctx, api, platform, archive(tmp_path, "2"))
    assert first["import_status"] == second["import_status"] == "Completed"
    # Pushed with the runner layer, by digest, to the algorithm's repository.
    assert second["image"].startswith(f"oci-layout/algorithms/{platform['pk']}@sha256:")
    assert in_registry(layout, first) and in_registry(layout, second)
    assert job_image(ctx, api, platform) == second["pk"]  # the newest completed one

    status, activated, _ = api.patch(
        f"algorithms/images/{first['pk']}/", {"is_desired_version": True}
    )

    assert status == 200, activated
    assert activated["is_desired_version"] is True
    assert api.get(f"algorithms/images/{second['pk']}/")[1]["is_desired_version"] is False
    assert job_image(ctx, api, platform) == first["pk"]


def test_concurrent_activations_leave_exactly_one_desired_image(
    ctx,
    api,
    platform,  # noqa: F811
    layout,
    tmp_path,
) -> None:
    """Switching is one write to the algorithm's pointer: while editors switch back and forth,
    every job made meanwhile gets an image, and every listing shows exactly one desired."""
    from gantry.services import catalog

    images = [import_archive(ctx, api, platform, archive(tmp_path, v)) for v in "123"]
    assert [i["import_status"] for i in images] == ["Completed"] * 3
    editor = ctx.store.users.find_user("alice")
    assert editor is not None
    start = threading.Barrier(4)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[tuple[str | None, int]] = []

    def switch(order: list[dict]) -> None:
        try:
            start.wait()
            for _ in range(6):
                for image in order:
                    catalog.activate_algorithm_image(ctx, editor, image["pk"])
        except BaseException as error:
            errors.append(error)

    def read() -> None:
        try:
            start.wait()
            while not stop.is_set():
                desired = ctx.store.algorithms.desired_image(platform["pk"])
                flagged = [
                    i
                    for i in ctx.store.algorithms.images_of(platform["pk"])
                    if i.is_desired_version
                ]
                seen.append((desired.pk if desired else None, len(flagged)))
        except BaseException as error:
            errors.append(error)

    switchers = [
        threading.Thread(target=switch, args=(order,))
        for order in (images, images[::-1], images[1:] + images[:1])
    ]
    reader = threading.Thread(target=read)
    for thread in [*switchers, reader]:
        thread.start()
    for thread in switchers:
        thread.join(timeout=300)
    stop.set()
    reader.join(timeout=60)

    assert errors == []
    assert seen, "the reader ran"
    pks = {i["pk"] for i in images}
    assert all(pk in pks and flagged == 1 for pk, flagged in seen), seen
    listed = api.get("algorithms/images/", query={"algorithm": platform["pk"]})[1]["results"]
    assert sum(i["is_desired_version"] for i in listed) == 1
    [desired] = [i["pk"] for i in listed if i["is_desired_version"]]
    assert job_image(ctx, api, platform) == desired


def test_only_a_completed_image_can_be_activated(ctx, api, platform, layout, tmp_path) -> None:  # noqa: F811
    failed = import_archive(ctx, api, platform, write_archive(tmp_path / "r.tar", spec(user="")))
    assert failed["import_status"] == "Failed"

    status, refused, _ = api.patch(
        f"algorithms/images/{failed['pk']}/", {"is_desired_version": True}
    )

    assert status == 400
    assert "only an image whose import completed" in refused["detail"]
    status, refused, _ = api.patch(
        f"algorithms/images/{failed['pk']}/", {"is_desired_version": False}
    )
    assert status in (400, 422)


def test_removing_an_image_deletes_it_from_the_registry(
    ctx,
    api,
    api_bob,
    platform,  # noqa: F811
    layout,
    tmp_path,
) -> None:
    first = import_archive(ctx, api, platform, archive(tmp_path, "1"))
    second = import_archive(ctx, api, platform, archive(tmp_path, "2"))

    status, refused, _ = api.request("DELETE", f"algorithms/images/{second['pk']}/")
    assert status == 400  # the desired version stays until another one is activated
    assert "activate another image" in refused["detail"]
    assert api_bob.request("DELETE", f"algorithms/images/{first['pk']}/")[0] == 404  # not an editor

    status, _, _ = api.request("DELETE", f"algorithms/images/{first['pk']}/")

    assert status == 204
    assert api.get(f"algorithms/images/{first['pk']}/")[0] == 404
    assert not in_registry(layout, first)
    assert in_registry(layout, second)  # layers it shares with the removed one stay
    pushed = split_reference(second["image"])
    assert pushed is not None
    _, repository, digest = pushed
    # Every blob of the remaining image is still there (its pull would work).
    assert layout._referenced(repository, digest)
    for blob in layout._referenced(repository, digest):
        assert layout.blob_size(repository, blob) is not None
    # The removed image's archive may be uploaded again: it is no duplicate any more.
    again = import_archive(ctx, api, platform, archive(tmp_path, "1"))
    assert again["import_status"] == "Completed", again["status"]


def test_a_queued_import_is_cancelled_by_an_editor(ctx, api, platform, layout, tmp_path) -> None:  # noqa: F811
    done = upload(ctx, api, archive(tmp_path, "1"))
    body = {"algorithm": platform["api_url"], "user_upload": done["api_url"]}
    _, image, _ = api.post("algorithms/images/", body)

    status, cancelled, _ = api.post(f"algorithms/images/{image['pk']}/cancel/", {})

    assert status == 200, cancelled
    assert cancelled["import_status"] == "Cancelled"
    assert drain(ctx) == 1  # the queued message finds nothing to do
    after = api.get(f"algorithms/images/{image['pk']}/")[1]
    assert after["import_status"] == "Cancelled"
    assert after["is_in_registry"] is False
    assert layout.repositories() == []
    status, refused, _ = api.post(f"algorithms/images/{image['pk']}/cancel/", {})
    assert status == 400
    assert "nothing to cancel" in refused["detail"]


def test_an_import_cancelled_while_it_pushes_is_deleted_again(
    ctx,
    api,
    platform,  # noqa: F811
    layout,
    tmp_path,
) -> None:
    done = upload(ctx, api, archive(tmp_path, "1"))
    body = {"algorithm": platform["api_url"], "user_upload": done["api_url"]}
    _, image, _ = api.post("algorithms/images/", body)
    publish = ctx.image_publisher
    pushed: list[str] = []

    def cancelled_meanwhile(ctx_: Any, record: Any, archive_: Any) -> str:
        reference = publish(ctx_, record, archive_)
        pushed.append(reference)
        assert api.post(f"algorithms/images/{image['pk']}/cancel/", {})[0] == 200
        return reference

    ctx.image_publisher = cancelled_meanwhile
    assert drain(ctx) == 1

    after = api.get(f"algorithms/images/{image['pk']}/")[1]
    assert after["import_status"] == "Cancelled"
    assert after["is_desired_version"] is False
    assert not in_registry(layout, {"image": pushed[0]})
    status, refused, _ = api.post("algorithms/jobs/", job_body(platform))
    assert status == 400
    assert "Algorithm image is not ready to be used" in refused["detail"]


def test_two_imports_of_the_same_image_at_once_complete_once(
    ctx,
    api,
    platform,  # noqa: F811
    layout,
    tmp_path,
) -> None:
    """The duplicate check is a conditional write: however the two imports interleave, one
    holds the claim on the image's sha256."""
    pks = []
    for name in ("a.tar", "b.tar.gz"):
        path = write_archive(
            tmp_path / name, spec(), compression="gzip" if "gz" in name else "none"
        )
        done = upload(ctx, api, path)
        body = {"algorithm": platform["api_url"], "user_upload": done["api_url"]}
        pks.append(api.post("algorithms/images/", body)[1]["pk"])
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(pk: str) -> None:
        try:
            start.wait()
            import_image(ctx, pk)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(pk,)) for pk in pks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    images = [ctx.store.algorithms.get_image(pk) for pk in pks]
    assert sorted(i.import_status.value for i in images) == ["Completed", "Failed"]
    (failed,) = [i for i in images if i.import_status.value == "Failed"]
    assert "already been uploaded to this algorithm" in failed.status_message


def test_ended_imports_are_removed_after_the_retention_period(
    ctx,
    api,
    platform,  # noqa: F811
    layout,
    tmp_path,
) -> None:
    from gantry.pipeline.sweeper import sweep

    failed = import_archive(ctx, api, platform, write_archive(tmp_path / "r.tar", spec(user="")))
    completed = import_archive(ctx, api, platform, archive(tmp_path, "1"))
    assert failed["import_status"] == "Failed"

    ctx.settings = ctx.settings.model_copy(update={"failed_import_retention_seconds": 3600})
    assert sweep(ctx).imports_removed == []  # within its retention period
    assert api.get(f"algorithms/images/{failed['pk']}/")[0] == 200

    ctx.settings = ctx.settings.model_copy(update={"failed_import_retention_seconds": 0})
    report = sweep(ctx)

    assert report.imports_removed == [failed["pk"]]
    assert api.get(f"algorithms/images/{failed['pk']}/")[0] == 404
    assert api.get(f"algorithms/images/{completed['pk']}/")[0] == 200
    listed = api.get("algorithms/images/", query={"algorithm": platform["pk"]})[1]
    assert [i["pk"] for i in listed["results"]] == [completed["pk"]]
    assert listed["count"] == 1


def test_on_aws_removing_an_image_queues_its_deletion_from_the_repository(
    ctx,
    api,
    platform,  # noqa: F811
) -> None:
    """Without a registry of its own (a deployment), the API asks the import function, the
    one principal the repository lets delete, to delete the image."""
    from gantry.algorithms import AlgorithmImageFields

    queue = ctx.clients.sqs.create_queue(QueueName="gantry-imports")["QueueUrl"]
    ctx.settings = ctx.settings.model_copy(
        update={"image_repository": "gantry-images", "imports_queue_url": queue}
    )
    ctx.image_remover = None
    reference = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/gantry-images@sha256:{'a' * 64}"
    algorithm = ctx.store.algorithms.get(platform["pk"])
    fields = AlgorithmImageFields(image=reference, command=["run"], is_desired_version=False)
    image = ctx.store.algorithms.create_image(algorithm, fields, creator="alice")

    status, _, _ = api.request("DELETE", f"algorithms/images/{image.pk}/")

    assert status == 204
    messages = ctx.clients.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
    bodies = [m["Body"] for m in messages.get("Messages", [])]
    assert len(bodies) == 1 and reference in bodies[0]


def test_removing_a_registered_reference_leaves_another_algorithms_image(
    ctx,
    api,
    api_bob,
    platform,  # noqa: F811
    layout,
    tmp_path,
) -> None:
    """bob cannot register, in an algorithm of his own, a reference to alice's imported image
    (that would run it without being its editor); and a record that names it anyway (one
    stored before this rule) is removed without deleting alice's image: the registry deletes
    only from the removed image's own algorithm's repository."""
    from gantry.algorithms import AlgorithmImageFields

    theirs = import_archive(ctx, api, platform, archive(tmp_path, "1"))
    status, mine, _ = api_bob.post(
        "algorithms/",
        {"title": "Mine", "interfaces": [{"inputs": ["number"], "outputs": ["result"]}]},
    )
    assert status == 201, mine
    for reference in (theirs["image"], theirs["image"].split("@")[0] + ":image-" + theirs["pk"]):
        body = {"algorithm": mine["pk"], "image": reference, "command": ["run"]}
        status, refused, _ = api_bob.post("algorithms/images/", body)
        assert status == 400 and "image" in refused, refused

    fields = AlgorithmImageFields(image=theirs["image"], command=["run"], is_desired_version=False)
    registered = ctx.store.algorithms.create_image(
        ctx.store.algorithms.get(mine["pk"]), fields, creator="bob"
    )
    assert api_bob.request("DELETE", f"algorithms/images/{registered.pk}/")[0] == 204
    assert in_registry(layout, theirs)
