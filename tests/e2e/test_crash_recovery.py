"""``gantry local up`` killed with SIGKILL (a crash, an out-of-memory kill, a power cut) at
several moments: what it acknowledged is there after a restart, and every accepted drop and
every created job ends in exactly one finished job.

One platform is killed four times in a row, each kill at another moment, so the jobs run once:
right after an acknowledgement has been sent (the endpoint's test hook), while files are being
dropped, while jobs run, and while results are written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gantry import resources
from gantry.local.persist import CRASH_AFTER_ENV
from gantry.store import keys
from gantry.store.table import MAIN_SK
from tests.e2e.conftest import make_image, register_algorithm, register_sockets, wait_for_job
from tests.e2e.test_local_up import STOP_TIMEOUT, local_up  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.long]
CASES = 50
DROPPERS = 8
SECONDS = 0.3  # each job sleeps this long: long enough to be killed mid-run
# How long a wait may go without progress. Generous: on a busy machine each runner start and
# each drop takes many times as long as on an idle one; this bounds a platform that is stuck,
# not one that is slow.
STALL = 300.0


def _s3(connection: dict[str, Any]) -> Any:
    # No retries: a request the killed process never answered counts as not acknowledged.
    config = Config(retries={"max_attempts": 1}, connect_timeout=30, read_timeout=120)
    return boto3.client(
        "s3",
        endpoint_url=connection["aws_endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=config,
    )


def _case_key(slug: str, case: int) -> str:
    return f"{resources.PREFIX_DROPBOX}{slug}/case-{case:03d}/seconds.json"


def _drop(
    connection: dict[str, Any], slug: str, cases: Iterable[int], acknowledged: set[int]
) -> None:
    """Drop the cases from several threads at once; ``acknowledged`` gets each one S3
    answered with a 2xx."""
    s3, lock = _s3(connection), threading.Lock()

    def one(case: int) -> None:
        try:
            s3.put_object(
                Bucket=connection["bucket"],
                Key=_case_key(slug, case),
                Body=json.dumps(SECONDS).encode(),
            )
        except Exception:
            return  # the platform died first: not acknowledged
        with lock:
            acknowledged.add(case)

    with ThreadPoolExecutor(DROPPERS) as pool:
        list(pool.map(one, cases))


def _keys(connection: dict[str, Any], prefix: str) -> list[str]:
    s3 = _s3(connection)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=connection["bucket"], Prefix=prefix)
    return [entry["Key"] for page in pages for entry in page.get("Contents", [])]


def _until(
    condition: Callable[[], bool],
    what: str,
    timeout: float = STALL,
    up: Any = None,
    progress: Callable[[], object] | None = None,
) -> None:
    """Wait for ``condition``; fail once ``timeout`` seconds pass without it or, with
    ``progress`` (what changes as the work goes on), without a change of ``progress()``."""
    deadline = time.monotonic() + timeout
    seen = progress() if progress else None
    while not condition():
        if progress is not None and (now := progress()) != seen:
            seen, deadline = now, time.monotonic() + timeout
        if time.monotonic() > deadline:
            # What the jobs were doing, and what the platform printed, for the failure report.
            statuses = [job["status"] for job in _stored_jobs(up.state_dir)] if up else []
            output = up.output()[-3000:] if up else ""
            raise AssertionError(f"not {what} after {timeout} s; job statuses {statuses}\n{output}")
        time.sleep(0.1)


def _work_done(connection: dict[str, Any]) -> int:
    """The jobs' files (staged inputs, outputs) and the drops' result files there are."""
    return len(_keys(connection, resources.PREFIX_IO)) + len(
        _keys(connection, resources.PREFIX_DROPBOX_RESULTS)
    )


def _absent(connection: dict[str, Any], slug: str) -> list[int]:
    present = set(_keys(connection, f"{resources.PREFIX_DROPBOX}{slug}/"))
    return [case for case in range(CASES) if _case_key(slug, case) not in present]


def _results(connection: dict[str, Any], slug: str, name: str) -> dict[int, str]:
    prefix = f"{resources.PREFIX_DROPBOX_RESULTS}{slug}/"
    found = {}
    for key in _keys(connection, prefix):
        case, _, file = key[len(prefix) :].partition("/")
        if file == name:
            found[int(case.removeprefix("case-"))] = key
    return found


def _stored_jobs(state_dir: Path) -> list[dict[str, Any]]:
    """Every job in the durable store, read from its SQLite file."""
    with sqlite3.connect(state_dir / "data" / "state.db") as db:
        rows = db.execute("SELECT doc FROM items").fetchall()
    jobs = []
    for (doc,) in rows:
        item = json.loads(doc)
        if item["PK"]["S"].startswith(keys.job("")) and item["SK"]["S"] == MAIN_SK:
            jobs.append(json.loads(item["doc"]["S"]))
    return jobs


def test_a_sigkill_at_any_moment_loses_no_drop(local_up: Any) -> None:  # noqa: F811
    acknowledged: set[int] = set()

    # 1. Killed by the endpoint itself right after it acknowledged the 20th drop, while the
    #    other droppers are mid-request.
    first = local_up({CRASH_AFTER_ENV: f"{resources.PREFIX_DROPBOX}:20"})
    connection = first.start()
    with first.http() as http:
        register_sockets(http)
        slug = register_algorithm(http, "sleep", users=["dropbox"])["slug"]
    _drop(connection, slug, range(CASES), acknowledged)
    assert first.process.wait(timeout=STOP_TIMEOUT) < 0, first.output()  # killed, not exited
    assert 20 <= len(acknowledged) < CASES

    # 2. Restarted; the client drops again what is not there (as a sync would: a write that
    #    was stored but not answered is there, and dropping it again would be a second drop),
    #    and is killed halfway through.
    second = local_up()
    connection = second.start()
    retry = _absent(connection, slug)
    assert not acknowledged & set(retry)
    target = len(acknowledged) + len(retry) // 2
    dropper = threading.Thread(target=_drop, args=(connection, slug, retry, acknowledged))
    dropper.start()
    _until(
        lambda: len(acknowledged) >= target,
        "half the drops acknowledged",
        progress=lambda: len(acknowledged),
    )
    second.kill()
    dropper.join()

    # 3. Restarted; the rest is dropped; killed while jobs run (inputs staged, few results).
    third = local_up()
    connection = third.start()
    retry = _absent(connection, slug)
    assert not acknowledged & set(retry)
    _drop(connection, slug, retry, acknowledged)
    assert _absent(connection, slug) == []
    _until(lambda: bool(_keys(connection, resources.PREFIX_IO)), "a job running", up=third)
    third.kill()

    # 4. Restarted; killed while results are being written.
    fourth = local_up()
    connection = fourth.start()
    _until(
        lambda: len(_results(connection, slug, "job.json")) >= 5,
        "results being written",
        up=fourth,
        progress=lambda: _work_done(connection),
    )
    fourth.kill()

    # 5. Restarted for good: every case ends with one Succeeded job and one result set.
    last = local_up()
    _each_case_ends_once(last, last.start(), slug)


def _each_case_ends_once(last: Any, connection: dict[str, Any], slug: str) -> None:
    """On the platform started for good: every case ends with one Succeeded job and one
    result set, no error.json, no second job for any case."""
    _until(
        lambda: len(_results(connection, slug, "job.json")) >= CASES,
        "every result written",
        up=last,
        progress=lambda: _work_done(connection),
    )
    assert _results(connection, slug, "error.json") == {}
    assert sorted(_results(connection, slug, "slept.json")) == list(range(CASES))
    s3 = _s3(connection)
    summaries = [
        json.loads(s3.get_object(Bucket=connection["bucket"], Key=key)["Body"].read())
        for key in _results(connection, slug, "job.json").values()
    ]
    assert {summary["status"] for summary in summaries} == {"Succeeded"}
    last.stop()

    jobs = [job for job in _stored_jobs(last.state_dir) if job.get("source") == "dropbox"]
    refs = sorted(job["source_ref"] for job in jobs)
    doubled = [
        (j["source_ref"], j["pk"], j["created"]) for j in jobs if refs.count(j["source_ref"]) > 1
    ]
    assert not doubled, doubled
    assert refs == [f"{slug}/case-{case:03d}" for case in range(CASES)]  # one each
    assert {job["pk"] for job in jobs} == {summary["job"] for summary in summaries}


@pytest.mark.parametrize(
    "moment",
    ["after an acknowledgement", "during the drops", "while jobs run", "while results are written"],
)
def test_one_sigkill_at_each_moment_loses_no_drop(local_up: Any, moment: str) -> None:  # noqa: F811
    """Each moment on its own: 50 concurrent drops, one SIGKILL, a restart (the client drops
    again what is not there), and every case ends in exactly one finished job."""
    acknowledged: set[int] = set()
    hook = {CRASH_AFTER_ENV: f"{resources.PREFIX_DROPBOX}:20"}
    first = local_up(hook if moment == "after an acknowledgement" else None)
    connection = first.start()
    with first.http() as http:
        register_sockets(http)
        slug = register_algorithm(http, "sleep", users=["dropbox"])["slug"]
    if moment == "after an acknowledgement":
        _drop(connection, slug, range(CASES), acknowledged)
        assert first.process.wait(timeout=STOP_TIMEOUT) < 0, first.output()  # killed, not exited
    elif moment == "during the drops":
        dropper = threading.Thread(
            target=_drop, args=(connection, slug, range(CASES), acknowledged)
        )
        dropper.start()
        _until(
            lambda: len(acknowledged) >= CASES // 2,
            "half the drops acknowledged",
            progress=lambda: len(acknowledged),
        )
        first.kill()
        dropper.join()
    else:
        _drop(connection, slug, range(CASES), acknowledged)
        if moment == "while jobs run":
            _until(lambda: bool(_keys(connection, resources.PREFIX_IO)), "a job running", up=first)
        else:
            _until(
                lambda: len(_results(connection, slug, "job.json")) >= 5,
                "results being written",
                up=first,
                progress=lambda: _work_done(connection),
            )
        first.kill()

    # Restarted: what was acknowledged is there; the client drops again what is not.
    again = local_up()
    connection = again.start()
    retry = _absent(connection, slug)
    assert not acknowledged & set(retry)
    _drop(connection, slug, retry, acknowledged)
    # A drop stored just before the kill may never have had its answer sent: it is kept, and
    # the client, finding it there, does not drop it again.
    assert _absent(connection, slug) == []
    _each_case_ends_once(again, connection, slug)


def test_every_job_created_through_gcapi_survives_a_sigkill(local_up: Any, tmp_path: Path) -> None:  # noqa: F811
    """Image uploads and job creation through gcapi from three threads; killed right after the
    endpoint acknowledged the fifth completed upload, whatever the API was doing then."""
    import gcapi

    first = local_up({CRASH_AFTER_ENV: f"{resources.PREFIX_UPLOADS}:5"})
    connection = first.start()
    with first.http() as http:
        register_sockets(http)
        slug = register_algorithm(http, "threshold")["slug"]
    created: list[str] = []  # every job the API answered with a 2xx

    def create(index: int) -> None:
        image = make_image(tmp_path / f"case-{index}.mha", size=8, offset=index)
        try:
            client = gcapi.Client(
                base_url=connection["api_url"], token=connection["token"], verify=first.ca_file
            )
            job = client.start_algorithm_job(
                algorithm_slug=slug,
                inputs=[gcapi.SocketValueSpec(socket_slug="ct-image", file=image)],
            )
        except Exception:
            return  # the platform died before answering: not acknowledged
        created.append(str(job.pk))

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(create, range(9)))
    assert first.process.wait(timeout=STOP_TIMEOUT) < 0, first.output()
    assert created, "no job was created before the kill"

    second = local_up()
    connection = second.start()
    with second.http() as http:
        for pk in created:
            job = wait_for_job(http, pk)
            assert job["status"] == "Succeeded", job["error_message"]
            assert {o["interface"]["slug"] for o in job["outputs"]} == {"segmentation", "results"}
        # The API works on as before: a new job through gcapi after the restart.
        again = gcapi.Client(
            base_url=connection["api_url"], token=connection["token"], verify=second.ca_file
        )
        image = make_image(tmp_path / "after.mha", size=8)
        job = again.start_algorithm_job(
            algorithm_slug=slug, inputs=[gcapi.SocketValueSpec(socket_slug="ct-image", file=image)]
        )
        assert wait_for_job(http, str(job.pk))["status"] == "Succeeded"
    second.stop()


def test_an_upload_completed_just_before_a_sigkill_completes_on_retry(local_up: Any) -> None:  # noqa: F811
    """Killed right after S3 completed an upload, before the API recorded it (the client got
    no answer): after the restart the client's retry of the same completion succeeds, and
    the upload feeds a job."""
    import httpx

    first = local_up({CRASH_AFTER_ENV: f"{resources.PREFIX_UPLOADS}:1"})
    first.start()
    with first.http() as http:
        register_sockets(http)
        sleep = register_algorithm(http, "sleep")
        created = http.post("uploads/", json={"filename": "seconds.json"}).json()
        base = f"uploads/{created['pk']}/{created['s3_upload_id']}/"
        urls = http.patch(base + "generate-presigned-urls/", json={"part_numbers": [1]}).json()
        put = httpx.put(urls["presigned_urls"]["1"], content=b"0.1", verify=first.ca_file)
        put.raise_for_status()
        parts = {"parts": [{"ETag": put.headers["ETag"], "PartNumber": 1}]}
        with pytest.raises(httpx.TransportError):
            http.patch(base + "complete-multipart-upload/", json=parts)
    assert first.process.wait(timeout=STOP_TIMEOUT) < 0, first.output()

    second = local_up()
    second.start()
    with second.http() as http:
        retried = http.patch(base + "complete-multipart-upload/", json=parts)
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "Completed"
        empty = dict.fromkeys(("value", "file", "image", "upload_session", "user_uploads"))
        value = {"interface": "seconds", **empty, "user_upload": created["pk"], "image_name": None}
        job = http.post("algorithms/jobs/", json={"algorithm": sleep["api_url"], "inputs": [value]})
        assert job.status_code == 201, job.text
        done = wait_for_job(http, job.json()["pk"])
        assert done["status"] == "Succeeded", done["error_message"]
        assert [o["value"] for o in done["outputs"]] == [0.1]
    second.stop()
