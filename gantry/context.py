"""What a handler needs, built once per process: settings, AWS clients, stores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gantry.aws import Clients
from gantry.settings import Settings
from gantry.store import Store

if TYPE_CHECKING:
    # Imported by the modules that make jobs: an API request that reads users or images does
    # not build the algorithm, interface and job models.
    from gantry.algorithms import Algorithm, AlgorithmImage
    from gantry.interfaces import Interface
    from gantry.jobs import Job


@dataclass(frozen=True)
class JobCatalog:
    """What a job's creator read to create it: its algorithm, image and the algorithm's
    sockets. Handed to the job's listeners, so that provisioning in the same process does not
    read them again."""

    algorithm: Algorithm
    image: AlgorithmImage
    sockets: dict[str, Interface]


@dataclass
class Context:
    settings: Settings
    clients: Clients
    store: Store
    # Called after a job is stored; the pipeline starts provisioning from here.
    job_listeners: list[Callable[[Context, Job, JobCatalog | None], None]] = field(
        default_factory=list
    )
    # The compute backend (gantry.compute); built from the settings on first use.
    compute_backend: Any = None
    # Stores an imported container image where the compute backend runs it
    # (gantry.pipeline.image_import.Publisher); None: imports fail with a message.
    image_publisher: Any = None
    # Deletes a removed image from that registry (gantry.pipeline.image_import.Remover).
    image_remover: Any = None
    # Epoch seconds: claims in progress taken before then belong to handlers that are gone (a
    # one-machine stack sets its start time; on AWS only a claim's lease tells).
    claims_orphaned_before: int | None = None

    @property
    def compute(self) -> Any:
        if self.compute_backend is None:
            from gantry.compute import backend_for

            self.compute_backend = backend_for(self.settings, self.clients)
        return self.compute_backend

    @classmethod
    def create(cls, settings: Settings) -> Context:
        clients = Clients(settings)
        return cls(settings=settings, clients=clients, store=Store.create(clients, settings))

    def job_created(self, job: Job, catalog: JobCatalog | None = None) -> None:
        for listener in self.job_listeners:
            listener(self, job, catalog)
