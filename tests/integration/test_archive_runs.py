"""Runs of an algorithm over an archive, through the API and the archive-runs queue's handler
(moto's SQS and EventBridge carry the messages and job events as on AWS): a job per item,
skipped items, limits that make items wait, credits that stop a run, outputs written back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gantry import resources
from gantry.job_states import JobStatus
from gantry.jobs import SocketValue
from gantry.pipeline.lifecycle import finish
from tests.conftest import ApiClient, sqs_event
from tests.integration.test_inputs_support import make_algorithm, make_socket


def _value(interface: str, **given: Any) -> dict:
    keys = ("value", "file", "image", "upload_session", "user_upload", "user_uploads")
    return {"interface": interface, **dict.fromkeys(keys), "image_name": None, **given}


@pytest.fixture
def world(ctx, api_app):
    sqs, events = ctx.clients.sqs, ctx.clients.events
    queue_url = sqs.create_queue(QueueName=resources.DEFAULT_ARCHIVE_RUNS_QUEUE)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    events.create_event_bus(Name=ctx.settings.event_bus_name)
    events.put_rule(
        Name=resources.ARCHIVE_RUN_JOBS_RULE,
        EventBusName=ctx.settings.event_bus_name,
        EventPattern=json.dumps(resources.ARCHIVE_RUN_JOBS_PATTERN),
    )
    events.put_targets(
        Rule=resources.ARCHIVE_RUN_JOBS_RULE,
        EventBusName=ctx.settings.event_bus_name,
        Targets=[{"Id": "runs", "Arn": arn["Attributes"]["QueueArn"]}],
    )
    ctx.settings = ctx.settings.model_copy(update={"archive_runs_queue_url": queue_url})
    make_socket(ctx, "Number", "Integer", "number.json")
    make_socket(ctx, "Doubled", "Integer", "doubled.json")
    make_socket(ctx, "Note", "String", "note.json")
    algorithm = make_algorithm(ctx, "Doubler", ["number"], ["doubled"], users=["bob"])
    alice = ApiClient(api_app, ctx.store.users.create_token("alice"))
    bob = ApiClient(api_app, ctx.store.users.create_token("bob"))
    status, archive, _ = alice.post("archives/", {"title": "Numbers", "users": ["bob"]})
    assert status == 201, archive
    return ctx, algorithm, archive, alice, bob


def _add_items(client: ApiClient, archive: dict, numbers: list[int]) -> list[dict]:
    items = []
    for n in numbers:
        status, item, _ = client.post(
            "archives/items/", {"archive": archive["pk"], "values": [_value("number", value=n)]}
        )
        assert status == 201, item
        items.append(item)
    return items


def _drain(ctx) -> int:
    """Deliver the archive-runs queue to its handler until it is empty; messages handled."""
    from lambdas.on_archive_run import process

    handled = 0
    queue = ctx.settings.archive_runs_queue_url
    while True:
        got = ctx.clients.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
        messages = got.get("Messages", [])
        if not messages:
            return handled
        response = process(ctx, sqs_event([m["Body"] for m in messages]))
        assert response == {"batchItemFailures": []}
        for m in messages:
            ctx.clients.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        handled += len(messages)


def _jobs_of(ctx, run_pk: str) -> list:
    records = list(ctx.store.archive_runs.records(run_pk))
    return [ctx.store.jobs.get(r["job"]) for r in records if r.get("job")]


def _succeed(ctx, job, doubled: int | None = None) -> None:
    value = job.inputs[0].value * 2 if doubled is None else doubled
    outputs = [
        SocketValue(pk=ctx.store.table.next_id("socket_value"), socket="doubled", value=value)
    ]
    finish(ctx, job, JobStatus.SUCCESS, {"outputs": outputs})


def _run(client: ApiClient, algorithm, body: dict) -> tuple[int, dict]:
    status, run, _ = client.post(f"algorithms/{algorithm.pk}/archive-runs/", body)
    return status, run


def _progress(client: ApiClient, algorithm, run: dict) -> dict:
    status, body, _ = client.get(f"algorithms/{algorithm.pk}/archive-runs/{run['pk']}/")
    assert status == 200, body
    return body


def test_a_run_makes_one_job_per_item_and_reports_progress(world, monkeypatch) -> None:
    from gantry.pipeline import archive_runs

    ctx, algorithm, archive, alice, _ = world
    monkeypatch.setattr(archive_runs, "PAGE_SIZE", 4)  # several pages of a small archive
    items = _add_items(alice, archive, list(range(10)))
    status, run = _run(alice, algorithm, {"archive": archive["api_url"]})
    assert status == 201, run
    assert run["state"] == "Creating jobs" and run["total"] == 10
    _drain(ctx)
    # A page delivered twice (SQS redelivers) makes no second job.
    from lambdas.on_archive_run import process

    again = json.dumps({"gantry": "archive-run-page", "run": run["pk"], "cursor": None})
    assert process(ctx, sqs_event([again])) == {"batchItemFailures": []}

    jobs = _jobs_of(ctx, run["pk"])
    assert len(jobs) == 10 and len({j.pk for j in jobs}) == 10
    assert sorted(j.inputs[0].value for j in jobs) == list(range(10))
    assert all(j.source == "archive-run" for j in jobs)
    seen = _progress(alice, algorithm, run)
    assert seen["state"] == "All jobs created"
    assert seen["jobs"] == {"Queued": 10} and seen["not_started"] == 0 and not seen["done"]

    for job in jobs[:7]:
        _succeed(ctx, job)
    finish(ctx, jobs[7], JobStatus.FAILURE, {"error_message": "broken"})
    _drain(ctx)  # the job events reach the run's queue
    seen = _progress(alice, algorithm, run)
    assert seen["jobs"] == {"Failed": 1, "Queued": 2, "Succeeded": 7}
    for job in jobs[8:]:
        _succeed(ctx, job)
    assert _progress(alice, algorithm, run)["done"] is True

    # Again over the same archive: done items are skipped, the failed one runs again.
    status, second = _run(alice, algorithm, {"archive": archive["pk"]})
    assert status == 201, second
    _drain(ctx)
    seen = _progress(alice, algorithm, second)
    assert seen["skipped"] == 9 and seen["jobs"] == {"Queued": 1}
    # Asked to re-run: every item gets a new job.
    status, third = _run(alice, algorithm, {"archive": archive["pk"], "rerun": True})
    _drain(ctx)
    assert _progress(alice, algorithm, third)["jobs"] == {"Queued": 10}
    # Some items only.
    status, fourth = _run(
        alice,
        algorithm,
        {"archive": archive["pk"], "items": [items[0]["api_url"], items[1]["pk"]], "rerun": True},
    )
    assert status == 201 and fourth["total"] == 2, fourth
    _drain(ctx)
    assert _progress(alice, algorithm, fourth)["jobs"] == {"Queued": 2}


def test_items_over_the_job_limit_wait_and_start_when_a_slot_frees(world) -> None:
    ctx, algorithm, archive, alice, _ = world
    ctx.settings = ctx.settings.model_copy(update={"max_active_jobs_per_user": 3})
    _add_items(alice, archive, list(range(5)))
    status, run = _run(alice, algorithm, {"archive": archive["pk"]})
    assert status == 201, run
    _drain(ctx)
    seen = _progress(alice, algorithm, run)
    assert seen["state"] == "Waiting for a free job slot"
    assert seen["jobs"] == {"Queued": 3} and seen["not_started"] == 2

    first = _jobs_of(ctx, run["pk"])[0]
    _succeed(ctx, first)
    _drain(ctx)  # its end event lets the run go on: one more job
    seen = _progress(alice, algorithm, run)
    assert seen["jobs"] == {"Queued": 3, "Succeeded": 1} and seen["not_started"] == 1

    # A slot freed by a job of another source: the sweeper's pass lets the run go on.
    from gantry.pipeline.archive_runs import resume_waiting

    unfinished = next(j for j in _jobs_of(ctx, run["pk"]) if not j.status.is_terminal)
    ctx.store.jobs.cancel(unfinished.pk, message="stop")
    assert resume_waiting(ctx) == [run["pk"]]
    _drain(ctx)
    seen = _progress(alice, algorithm, run)
    assert seen["state"] == "All jobs created" and seen["not_started"] == 0
    assert sum(seen["jobs"].values()) == 5


def test_credits_stop_a_run_and_too_few_refuse_it(world) -> None:
    ctx, algorithm, archive, alice, bob = world
    # bob uses the algorithm (alice's): his jobs cost credits, 20 each.
    ctx.settings = ctx.settings.model_copy(update={"monthly_credits": 60})
    _add_items(alice, archive, [1, 2, 3, 4, 5])
    status, run = _run(bob, algorithm, {"archive": archive["pk"]})
    assert status == 201, run
    _drain(ctx)
    seen = _progress(bob, algorithm, run)
    assert seen["state"] == "Stopped" and "Not enough credits" in seen["stopped_reason"]
    assert seen["jobs"] == {"Queued": 3} and seen["not_started"] == 2
    status, body = _run(bob, algorithm, {"archive": archive["pk"]})
    assert status == 400 and "credits" in body, body


def test_outputs_are_written_back_into_the_items(world) -> None:
    ctx, algorithm, archive, alice, bob = world
    items = _add_items(alice, archive, [3, 4])
    # A user of the archive may run over it, but not write into it.
    status, body = _run(bob, algorithm, {"archive": archive["pk"], "write_back": True})
    assert status == 400 and "write_back" in body, body

    status, run = _run(alice, algorithm, {"archive": archive["pk"], "write_back": True})
    assert status == 201, run
    _drain(ctx)
    for job in _jobs_of(ctx, run["pk"]):
        _succeed(ctx, job)
    _drain(ctx)
    _drain(ctx)  # a repeated event changes nothing
    for item, expected in zip(items, [6, 8], strict=True):
        status, detail, _ = alice.get(f"archives/items/{item['pk']}/")
        values = {v["interface"]["slug"]: v["value"] for v in detail["values"]}
        assert values == {"number": item["values"][0]["value"], "doubled": expected}


def test_bad_requests_name_their_field(world) -> None:
    ctx, algorithm, archive, alice, _ = world
    carol = ApiClient(alice.app, ctx.store.users.create_token("carol"))
    assert _run(carol, algorithm, {"archive": archive["pk"]})[0] == 404
    status, body = _run(alice, algorithm, {"archive": "nope"})
    assert status == 400 and "archive" in body, body
    status, body = _run(alice, algorithm, {"archive": archive["pk"], "items": ["nope"]})
    assert status == 400 and "items" in body, body
    status, body = _run(alice, algorithm, {"archive": archive["pk"], "filter": 1})
    assert status == 400, body
    # An item without the algorithm's inputs is counted as not run, with the reason.
    status, item, _ = alice.post(
        "archives/items/", {"archive": archive["pk"], "values": [_value("note", value="hi")]}
    )
    assert status == 201, item
    status, run = _run(alice, algorithm, {"archive": archive["pk"]})
    _drain(ctx)
    seen = _progress(alice, algorithm, run)
    assert seen["not_run"] == 1 and "do not match" in next(iter(seen["not_run_reasons"]))
    assert carol.get(f"algorithms/{algorithm.pk}/archive-runs/{run['pk']}/")[0] == 404


def test_an_editors_run_takes_its_free_jobs_then_credits_exactly(world) -> None:
    ctx, algorithm, archive, alice, _ = world
    # alice edits the algorithm: 2 free jobs, then 20 credits a job, 60 credits: 5 jobs.
    ctx.settings = ctx.settings.model_copy(
        update={"complimentary_editor_jobs": 2, "monthly_credits": 60}
    )
    _add_items(alice, archive, list(range(7)))
    status, run = _run(alice, algorithm, {"archive": archive["pk"]})
    assert status == 201, run
    _drain(ctx)
    seen = _progress(alice, algorithm, run)
    assert seen["state"] == "Stopped" and "Not enough credits" in seen["stopped_reason"]
    assert seen["jobs"] == {"Queued": 5} and seen["not_started"] == 2
    jobs = _jobs_of(ctx, run["pk"])
    assert sorted(j.is_complimentary for j in jobs) == [False, False, False, True, True]
    assert sum(j.credits_consumed for j in jobs) == 60
    month = jobs[0].created[:7]
    assert ctx.store.jobs.credits_spent("alice", month) == 60
    assert ctx.store.jobs.complimentary_jobs_taken(jobs[0].algorithm_image) == 2
    assert ctx.store.jobs.active_count("USER#alice") == 5


def test_jobs_stored_by_a_concurrent_handler_are_left_out(world, monkeypatch) -> None:
    """Two handlers of one page: the jobs the first stored are not made or counted again."""
    from gantry.pipeline import archive_runs

    ctx, algorithm, archive, alice, _ = world
    _add_items(alice, archive, [1, 2, 3])
    status, run = _run(alice, algorithm, {"archive": archive["pk"]})
    assert status == 201, run
    stored = ctx.store.archive_runs.get(run["pk"])
    items, _ = archive_runs._page(ctx, stored)
    archive_runs._start_items(ctx, stored, items[:2])
    # The second handler read the run's records before the first wrote them.
    monkeypatch.setattr(ctx.store.archive_runs, "outcomes", lambda run_pk, pks: {})
    archive_runs._start_items(ctx, stored, items)
    jobs = _jobs_of(ctx, run["pk"])
    assert len(jobs) == 3 and len({j.pk for j in jobs}) == 3
    assert ctx.store.jobs.active_count("USER#alice") == 3


def test_a_cancelled_run_makes_no_new_jobs_and_cancels_its_unfinished_ones(world) -> None:
    from gantry.pipeline.archive_runs import resume_waiting

    ctx, algorithm, archive, alice, bob = world
    ctx.settings = ctx.settings.model_copy(update={"max_active_jobs_per_user": 3})
    _add_items(alice, archive, list(range(5)))
    status, run = _run(alice, algorithm, {"archive": archive["pk"]})
    assert status == 201, run
    _drain(ctx)
    first = _jobs_of(ctx, run["pk"])[0]
    _succeed(ctx, first)
    cancel = f"algorithms/{algorithm.pk}/archive-runs/{run['pk']}/cancel/"
    assert bob.post(cancel)[0] == 404  # not his run
    status, body, _ = alice.post(cancel)
    assert status == 200 and body["state"] == "Cancelled", body
    _drain(ctx)  # the run's event of the finished job, and the cancel of the others
    assert resume_waiting(ctx) == []  # a freed slot starts nothing
    _drain(ctx)
    seen = _progress(alice, algorithm, run)
    assert seen["state"] == "Cancelled" and seen["stopped_reason"] == "Cancelled by alice"
    assert seen["jobs"] == {"Cancelled": 2, "Succeeded": 1} and seen["not_started"] == 2
    assert seen["done"] is True
    assert ctx.store.jobs.active_count("USER#alice") == 0
    assert alice.post(cancel)[0] == 200  # again: nothing changes

    # A run whose jobs all ended cannot be cancelled: one over the item done before.
    done_item = first.source_ref.split("/")[1]
    status, other = _run(alice, algorithm, {"archive": archive["pk"], "items": [done_item]})
    assert status == 201, other
    _drain(ctx)
    assert _progress(alice, algorithm, other)["done"] is True
    status, body, _ = alice.post(f"algorithms/{algorithm.pk}/archive-runs/{other['pk']}/cancel/")
    assert status == 409 and "ended" in json.dumps(body), body


def test_lost_job_events_are_written_back_by_the_sweeper(world) -> None:
    from gantry.pipeline.sweeper import sweep

    ctx, algorithm, archive, alice, _ = world
    items = _add_items(alice, archive, [3, 4])
    status, run = _run(alice, algorithm, {"archive": archive["pk"], "write_back": True})
    assert status == 201, run
    _drain(ctx)
    for job in _jobs_of(ctx, run["pk"]):
        _succeed(ctx, job)
    # Their end events never reach the run (after the rule's retries, in no queue).
    ctx.clients.sqs.purge_queue(QueueUrl=ctx.settings.archive_runs_queue_url)
    assert alice.get(f"archives/items/{items[0]['pk']}/")[1]["values"][0]["interface"]["slug"]
    report = sweep(ctx)
    assert sorted(report.items_written_back) == sorted(i["pk"] for i in items)
    for item, expected in zip(items, [6, 8], strict=True):
        detail = alice.get(f"archives/items/{item['pk']}/")[1]
        values = {v["interface"]["slug"]: v["value"] for v in detail["values"]}
        assert values == {"number": item["values"][0]["value"], "doubled": expected}
    seen = _progress(alice, algorithm, run)
    assert seen["jobs"] == {"Succeeded": 2} and seen["done"] is True
    assert sweep(ctx).items_written_back == []  # the run is done with


def test_items_still_importing_a_value_are_counted_as_importing(world) -> None:
    ctx, algorithm, archive, alice, _ = world
    items = _add_items(alice, archive, [1, 2])
    # The second item's number is an upload not imported yet.
    ctx.store.archives.update_item(
        items[1]["pk"],
        lambda i: i.model_copy(
            update={"values": [SocketValue(pk=9001, socket="number", pending_upload="u1")]}
        ),
    )
    status, run = _run(alice, algorithm, {"archive": archive["pk"]})
    assert status == 201, run
    _drain(ctx)
    seen = _progress(alice, algorithm, run)
    assert seen["jobs"] == {"Queued": 1} and seen["importing"] == 1 and seen["not_run"] == 0
