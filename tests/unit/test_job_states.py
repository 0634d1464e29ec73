"""The job state machine: grand-challenge's numbers and labels, and which moves apply."""

from __future__ import annotations

import pytest

from gantry.job_states import (
    ACTIVE,
    IN_FLIGHT,
    TERMINAL,
    JobStatus,
    TransitionRejected,
    can_transition,
    check_transition,
    requeue_attempt,
)

# grand-challenge's ComponentJob.STATUS_CHOICES: gcapi and scripts written for it compare
# these exact labels, and the numbers are what its database and exports hold.
GRAND_CHALLENGE = {
    0: "Queued",
    1: "Started",
    2: "Re-Queued",
    3: "Failed",
    4: "Succeeded",
    5: "Cancelled",
    6: "Provisioning",
    7: "Provisioned",
    8: "Executing",
    9: "Executed",
    10: "Parsing Outputs",
    11: "Executing Algorithm",
    12: "Validating inputs",
}


def test_numbers_and_labels_are_grand_challenges() -> None:
    assert {int(s): s.label for s in JobStatus} == GRAND_CHALLENGE


@pytest.mark.parametrize("label", [*GRAND_CHALLENGE.values(), " queued ", "SUCCEEDED"])
def test_from_label_round_trips_in_any_case(label: str) -> None:
    status = JobStatus.from_label(label)
    assert status.label.lower() == label.strip().lower()


def test_from_label_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown job status"):
        JobStatus.from_label("Done")


def test_terminal_and_active_partition_every_status() -> None:
    assert {JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED} == TERMINAL
    assert set(JobStatus) == TERMINAL | ACTIVE
    assert not TERMINAL & ACTIVE
    assert IN_FLIGHT <= ACTIVE
    assert all(s.is_terminal for s in TERMINAL)
    assert not any(s.is_terminal for s in ACTIVE)


# The happy path a job takes, in order; every later state outranks every earlier one.
FORWARD = [
    JobStatus.VALIDATING_INPUTS,
    JobStatus.PENDING,
    JobStatus.PROVISIONING,
    JobStatus.PROVISIONED,
    JobStatus.EXECUTING,
    JobStatus.EXECUTED,
    JobStatus.PARSING,
    JobStatus.SUCCESS,
]


@pytest.mark.parametrize("index", range(len(FORWARD) - 1))
def test_forward_moves_apply(index: int) -> None:
    current = FORWARD[index]
    for target in FORWARD[index + 1 :]:
        assert can_transition(current, 1, target, 1), f"{current.label} -> {target.label}"


@pytest.mark.parametrize("index", range(1, len(FORWARD)))
def test_backward_and_duplicate_moves_are_ignored(index: int) -> None:
    current = FORWARD[index]
    for target in FORWARD[: index + 1]:
        assert not can_transition(current, 1, target, 1), f"{current.label} -> {target.label}"


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("target", list(JobStatus))
def test_terminal_is_never_left(terminal: JobStatus, target: JobStatus) -> None:
    assert not can_transition(terminal, 1, target, 1)
    assert not can_transition(terminal, 2, target, 2)


def test_any_active_state_can_fail_or_be_cancelled() -> None:
    for current in ACTIVE:
        for target in TERMINAL:
            assert can_transition(current, 3, target, 3), f"{current.label} -> {target.label}"


def test_an_event_of_another_attempt_never_applies() -> None:
    # A late event of attempt 1 must not finish attempt 2, nor a future attempt's event apply.
    assert not can_transition(JobStatus.EXECUTING, 2, JobStatus.FAILURE, 1)
    assert not can_transition(JobStatus.EXECUTING, 2, JobStatus.SUCCESS, 3)
    assert can_transition(JobStatus.EXECUTING, 2, JobStatus.SUCCESS, 2)


def test_requeued_ranks_as_queued() -> None:
    # A requeued job restarts the pipeline: it must be able to provision again, and a
    # duplicate "Queued" must not apply on top of it.
    assert can_transition(JobStatus.RETRY, 2, JobStatus.PROVISIONING, 2)
    assert not can_transition(JobStatus.RETRY, 2, JobStatus.PENDING, 2)


def test_started_and_executing_are_the_same_step() -> None:
    assert not can_transition(JobStatus.EXECUTING, 1, JobStatus.STARTED, 1)
    assert not can_transition(JobStatus.STARTED, 1, JobStatus.EXECUTING, 1)


def test_check_transition_explains_the_refusal() -> None:
    check_transition(JobStatus.PENDING, 1, JobStatus.PROVISIONING, 1)
    with pytest.raises(TransitionRejected, match=r"Succeeded \(attempt 1\) -> Executing"):
        check_transition(JobStatus.SUCCESS, 1, JobStatus.EXECUTING, 1)


def test_requeue_attempt_stops_at_the_maximum() -> None:
    assert requeue_attempt(1, 3) == 2
    assert requeue_attempt(2, 3) == 3
    assert requeue_attempt(3, 3) is None
