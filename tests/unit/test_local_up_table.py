"""The live job table of `gantry local up`."""

from __future__ import annotations

from rich.console import Console

from gantry.commands.local import _job_table
from gantry.job_states import JobStatus
from gantry.jobs import Job

PK = "0b5e7c1a-2f4d-4c8e-9a6b-3d2f1e0c9b8a"


def _render(jobs: list[Job], slugs: dict[str, str]) -> str:
    console = Console(width=200, record=True)
    console.print(_job_table(jobs, slugs))
    return console.export_text()


def test_rows_show_whole_ids_slugs_status_and_errors() -> None:
    failed = Job(
        pk=PK,
        algorithm="alg-1",
        algorithm_image="img-1",
        creator="alice",
        status=JobStatus.FAILURE,
        error_message="Time limit exceeded",
        exec_duration=2.25,
        time_limit=300,
        created="2026-11-22T03:00:00.000000Z",
        modified="2026-11-22T03:00:05.000000Z",
    )
    text = _render([failed], {"alg-1": "threshold-segmentation"})
    assert PK in text
    assert "threshold-segmentation" in text
    assert "Failed" in text and "Time limit exceeded" in text
    assert "2.2 s" in text or "2.3 s" in text
    assert "2026-11-22 03:00:00" in text


def test_unknown_algorithms_fall_back_to_their_pk() -> None:
    queued = Job(
        pk=PK,
        algorithm="c0ffee00-aaaa-bbbb-cccc-000000000000",
        algorithm_image="img",
        creator="alice",
        status=JobStatus.PENDING,
        time_limit=300,
        created="2026-11-22T03:00:00Z",
        modified="2026-11-22T03:00:00Z",
    )
    text = _render([queued], {})
    assert "c0ffee00" in text and "Queued" in text
