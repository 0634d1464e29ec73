"""Normalise Batch and SageMaker job descriptions, and their EventBridge events, to ComputeState.

A "Batch Job State Change" event's ``detail`` is the JobDetail that DescribeJobs returns, and
a "SageMaker Training Job State Change" event's ``detail`` is DescribeTrainingJob's response
(timestamps as epoch milliseconds): one function per service reads both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gantry.compute.base import ComputeState, ComputeStatus, parse_compute_name
from gantry.resources import (
    BATCH_DETAIL_TYPE,
    BATCH_EVENT_SOURCE,
    SAGEMAKER_DETAIL_TYPE,
    SAGEMAKER_EVENT_SOURCE,
)

BATCH_STATUS: dict[str, ComputeStatus] = {
    "SUBMITTED": "running",
    "PENDING": "running",
    "RUNNABLE": "running",
    "STARTING": "running",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
}
SAGEMAKER_STATUS: dict[str, ComputeStatus] = {
    "InProgress": "running",
    # Still holds the instance; the final Stopped event follows.
    "Stopping": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "Stopped": "failed",
}

# Batch reasons that mean the host or the capacity went away, not the algorithm:
# spot reclaims and instance failures ("Host EC2 (instance i-...) terminated."), jobs the
# queue cancelled after waiting too long for capacity, and container start-up faults.
_BATCH_RETRYABLE = re.compile(
    r"^Host EC2|CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY|CannotPullContainerError: .*"
    r"(timeout|i/o timeout|TooManyRequests)|DockerTimeoutError|CannotStartContainerError|"
    r"ResourceInitializationError|Task failed to start",
    re.IGNORECASE,
)
# SageMaker failure reasons that are the service's, not the algorithm's.
_SAGEMAKER_RETRYABLE = re.compile(
    r"^(CapacityError|InternalServerError|ResourceLimitExceeded|InsufficientCapacity)",
    re.IGNORECASE,
)
_EXIT_CODE = re.compile(r"exit(?:ed with)? code[: ]+(-?\d+)", re.IGNORECASE)


def _ms(value: Any) -> int | None:
    """Epoch ms from an event (int) or from boto3 (datetime)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int | float):
        return int(value)
    return None


def batch_exit_code(detail: Mapping[str, Any]) -> int | None:
    """The exit code from either shape: ``container`` or ``ecsProperties`` jobs.

    The job's own ``container.exitCode`` first, then the last attempt's (containerProperties
    jobs: ``attempts[].container.exitCode``; ecsProperties jobs:
    ``attempts[].taskProperties[].containers[].exitCode`` and
    ``ecsProperties.taskProperties[].containers[].exitCode``). For several containers the
    first non-zero code wins: the job failed if any essential container did.
    """
    container = detail.get("container") or {}
    if container.get("exitCode") is not None:
        return int(container["exitCode"])
    tasks = (detail.get("ecsProperties") or {}).get("taskProperties") or []
    attempts = detail.get("attempts") or []
    if attempts:
        last = attempts[-1]
        code = (last.get("container") or {}).get("exitCode")
        if code is not None:
            return int(code)
        tasks = last.get("taskProperties") or tasks
    codes = [
        int(c["exitCode"])
        for task in tasks
        for c in task.get("containers") or []
        if c.get("exitCode") is not None
    ]
    if not codes:
        return None
    return next((c for c in codes if c != 0), codes[0])


def _batch_reasons(detail: Mapping[str, Any]) -> list[str]:
    reasons = [detail.get("statusReason") or ""]
    for attempt in (detail.get("attempts") or [])[-1:]:
        reasons.append(attempt.get("statusReason") or "")
        reasons.append((attempt.get("container") or {}).get("reason") or "")
        for task in attempt.get("taskProperties") or []:
            reasons.extend(c.get("reason") or "" for c in task.get("containers") or [])
    reasons.append((detail.get("container") or {}).get("reason") or "")
    return [r for r in reasons if r]


def batch_state(detail: Mapping[str, Any]) -> ComputeState:
    """A DescribeJobs JobDetail or a Batch event's detail as a ComputeState."""
    raw = str(detail.get("status", ""))
    status = BATCH_STATUS.get(raw, "running")
    reasons = _batch_reasons(detail)
    name = str(detail.get("jobName", ""))
    parsed = parse_compute_name(name)
    attempts = detail.get("attempts") or []
    return ComputeState(
        compute_job_id=str(detail.get("jobId", "")),
        name=name,
        status=status,
        raw_status=raw,
        exit_code=batch_exit_code(detail),
        # The job's own reason when it has one; else the most specific one found.
        reason=reasons[0] if reasons else "",
        retryable=status == "failed" and any(_BATCH_RETRYABLE.search(r) for r in reasons),
        job_pk=parsed[0] if parsed else None,
        attempt=parsed[1] if parsed else None,
        started_at=_ms(detail.get("startedAt"))
        or (_ms(attempts[-1].get("startedAt")) if attempts else None),
        stopped_at=_ms(detail.get("stoppedAt")),
    )


def sagemaker_state(detail: Mapping[str, Any]) -> ComputeState:
    """A DescribeTrainingJob response or a SageMaker event's detail as a ComputeState."""
    raw = str(detail.get("TrainingJobStatus", ""))
    status = SAGEMAKER_STATUS.get(raw, "running")
    reason = str(detail.get("FailureReason") or "")
    if not reason and raw == "Stopped":
        secondary = detail.get("SecondaryStatus") or "Stopped"
        reason = (
            "MaxRuntimeExceeded: the job exceeded its time limit"
            if secondary == "MaxRuntimeExceeded"
            else "The training job was stopped"
        )
    match = _EXIT_CODE.search(reason)
    exit_code: int | None = int(match.group(1)) if match else None
    if raw == "Completed":
        exit_code = 0
    name = str(detail.get("TrainingJobName", ""))
    parsed = parse_compute_name(name)
    return ComputeState(
        compute_job_id=name,
        name=name,
        status=status,
        raw_status=raw,
        exit_code=exit_code,
        reason=reason,
        retryable=status == "failed" and bool(_SAGEMAKER_RETRYABLE.search(reason)),
        job_pk=parsed[0] if parsed else None,
        attempt=parsed[1] if parsed else None,
        started_at=_ms(detail.get("TrainingStartTime")),
        stopped_at=_ms(detail.get("TrainingEndTime")),
    )


def state_from_event(event: Mapping[str, Any]) -> ComputeState | None:
    """The compute state an EventBridge event reports, or None for any other event."""
    source, kind = event.get("source"), event.get("detail-type")
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        return None
    if source == BATCH_EVENT_SOURCE and kind == BATCH_DETAIL_TYPE:
        return batch_state(detail)
    if source == SAGEMAKER_EVENT_SOURCE and kind == SAGEMAKER_DETAIL_TYPE:
        return sagemaker_state(detail)
    return None
