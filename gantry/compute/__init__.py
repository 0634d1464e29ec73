"""Compute backends: where one attempt of a job runs (AWS Batch, SageMaker, this machine).

``backend_for(settings, clients)`` picks one by ``settings.compute_backend``; every backend
offers ``submit``, ``cancel`` and ``describe`` (``ComputeBackend``). Event parsing for the job
callback lives in ``gantry.compute.events`` (``state_from_event``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gantry.compute.base import (
    CapacityError,
    ComputeBackend,
    ComputeError,
    ComputeState,
    SubmitError,
    compute_name,
    parse_compute_name,
    sagemaker_name,
)
from gantry.compute.events import batch_state, sagemaker_state, state_from_event

if TYPE_CHECKING:
    from gantry.aws import Clients
    from gantry.compute.local import EventSink
    from gantry.settings import Settings

__all__ = [
    "CapacityError",
    "ComputeBackend",
    "ComputeError",
    "ComputeState",
    "SubmitError",
    "backend_for",
    "batch_state",
    "compute_name",
    "parse_compute_name",
    "sagemaker_name",
    "sagemaker_state",
    "state_from_event",
]


def backend_for(
    settings_or_ctx: Any, clients: Clients | None = None, on_event: EventSink | None = None
) -> ComputeBackend:
    """The backend that ``settings.compute_backend`` names.

    Accepts a Settings or anything with ``settings`` and ``clients`` (a Context). The local
    backend needs ``on_event`` to report job state changes; it owns a thread pool, so build
    it once per process and call its ``shutdown`` at exit.
    """
    settings: Settings = getattr(settings_or_ctx, "settings", settings_or_ctx)
    if clients is None:
        clients = getattr(settings_or_ctx, "clients", None)
    kind = settings.compute_backend
    if kind == "local":
        from gantry.compute.local import LocalBackend

        return LocalBackend(settings, on_event)
    if clients is None:
        raise ValueError(f"the {kind} backend needs AWS clients")
    if kind == "batch":
        from gantry.compute.batch import BatchBackend

        return BatchBackend(settings, clients.batch)
    if kind == "sagemaker":
        from gantry.compute.sagemaker import SageMakerBackend

        return SageMakerBackend(settings, clients.sagemaker, sandbox=settings.sagemaker_sandbox)
    raise ValueError(f"unknown compute backend {kind!r}")
