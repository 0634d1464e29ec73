"""backend_for picks the backend that the settings name."""

from __future__ import annotations

import pytest

from gantry.aws import Clients
from gantry.compute import backend_for
from gantry.compute.batch import BatchBackend
from gantry.compute.local import LocalBackend
from gantry.compute.sagemaker import SageMakerBackend
from gantry.settings import Settings


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("batch", BatchBackend), ("sagemaker", SageMakerBackend), ("local", LocalBackend)],
)
def test_backend_for_settings(kind, cls):
    settings = Settings(region="us-east-1", compute_backend=kind)
    backend = backend_for(settings, Clients(settings), on_event=lambda event: None)
    try:
        assert isinstance(backend, cls)
    finally:
        if isinstance(backend, LocalBackend):
            backend.shutdown(wait=True)


def test_backend_for_a_context_like_object():
    settings = Settings(region="us-east-1", compute_backend="batch")

    class Ctx:
        def __init__(self) -> None:
            self.settings = settings
            self.clients = Clients(settings)

    ctx = Ctx()
    backend = backend_for(ctx)
    assert isinstance(backend, BatchBackend)
    assert backend.client is ctx.clients.batch


def test_aws_backends_need_clients():
    with pytest.raises(ValueError, match="clients"):
        backend_for(Settings(compute_backend="sagemaker"))


@pytest.mark.parametrize("mode", ["required", "auto"])
def test_the_sagemaker_backend_gets_the_configured_sandbox_mode(mode):
    settings = Settings(region="us-east-1", compute_backend="sagemaker", sagemaker_sandbox=mode)
    backend = backend_for(settings, Clients(settings))
    assert isinstance(backend, SageMakerBackend) and backend.sandbox == mode


def test_sagemaker_jobs_require_the_sandbox_by_default():
    assert Settings().sagemaker_sandbox == "required"
