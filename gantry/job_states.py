"""The job state machine: statuses, their grand-challenge numbers and labels, allowed moves.

Pure module. Stores apply a transition with a conditional write on ``(attempt, rank)``: within
an attempt a job only moves to a higher rank, so duplicate or reordered events cannot move it
back, and a terminal state (highest rank) is never left except by an explicit requeue, which
starts attempt + 1.
"""

from __future__ import annotations

from enum import IntEnum


class JobStatus(IntEnum):
    # Numbers as grand-challenge's ComponentJob uses them.
    PENDING = 0
    STARTED = 1
    RETRY = 2
    FAILURE = 3
    SUCCESS = 4
    CANCELLED = 5
    PROVISIONING = 6
    PROVISIONED = 7
    EXECUTING = 8
    EXECUTED = 9
    PARSING = 10
    EXECUTING_PREREQUISITES = 11
    VALIDATING_INPUTS = 12

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def rank(self) -> int:
        return _RANKS[self]

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @classmethod
    def from_label(cls, label: str) -> JobStatus:
        for status, text in _LABELS.items():
            if text.lower() == label.strip().lower():
                return status
        raise ValueError(f"unknown job status {label!r}")


_LABELS = {
    JobStatus.PENDING: "Queued",
    JobStatus.STARTED: "Started",
    JobStatus.RETRY: "Re-Queued",
    JobStatus.FAILURE: "Failed",
    JobStatus.SUCCESS: "Succeeded",
    JobStatus.CANCELLED: "Cancelled",
    JobStatus.PROVISIONING: "Provisioning",
    JobStatus.PROVISIONED: "Provisioned",
    JobStatus.EXECUTING: "Executing",
    JobStatus.EXECUTED: "Executed",
    JobStatus.PARSING: "Parsing Outputs",
    JobStatus.EXECUTING_PREREQUISITES: "Executing Algorithm",
    JobStatus.VALIDATING_INPUTS: "Validating inputs",
}

TERMINAL_RANK = 100
_RANKS = {
    JobStatus.VALIDATING_INPUTS: 10,
    JobStatus.PENDING: 20,
    JobStatus.RETRY: 20,
    JobStatus.PROVISIONING: 30,
    JobStatus.PROVISIONED: 40,
    JobStatus.EXECUTING_PREREQUISITES: 45,
    JobStatus.STARTED: 50,
    JobStatus.EXECUTING: 50,
    JobStatus.EXECUTED: 60,
    JobStatus.PARSING: 70,
    JobStatus.SUCCESS: TERMINAL_RANK,
    JobStatus.FAILURE: TERMINAL_RANK,
    JobStatus.CANCELLED: TERMINAL_RANK,
}

TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED})
ACTIVE = frozenset(set(JobStatus) - TERMINAL)
# States in which a compute job may be running and the sweeper should look.
IN_FLIGHT = frozenset(
    {JobStatus.PROVISIONED, JobStatus.STARTED, JobStatus.EXECUTING, JobStatus.EXECUTED}
)


class TransitionRejected(Exception):
    """The move is not allowed from the current state (stale, duplicate or backwards)."""


def can_transition(
    current: JobStatus, current_attempt: int, target: JobStatus, attempt: int
) -> bool:
    """Whether an update for ``attempt`` moving to ``target`` applies to the current state."""
    if attempt != current_attempt:
        return False
    if current.is_terminal:
        return False
    return target.rank > current.rank


def check_transition(
    current: JobStatus, current_attempt: int, target: JobStatus, attempt: int
) -> None:
    if not can_transition(current, current_attempt, target, attempt):
        raise TransitionRejected(
            f"{current.label} (attempt {current_attempt}) -> {target.label} "
            f"(attempt {attempt}) is not allowed"
        )


def requeue_attempt(current_attempt: int, max_attempts: int) -> int | None:
    """The next attempt number, or None when the job has used all its attempts."""
    nxt = current_attempt + 1
    return nxt if nxt <= max_attempts else None
