"""DynamoDB-backed stores, one per entity, over the one table."""

from __future__ import annotations

from dataclasses import dataclass

from gantry.aws import Clients
from gantry.settings import Settings
from gantry.store.algorithm_models import AlgorithmModelStore
from gantry.store.algorithms import AlgorithmStore
from gantry.store.archive_runs import ArchiveRunStore
from gantry.store.archives import ArchiveStore
from gantry.store.images import ImageStore
from gantry.store.jobs import JobStore
from gantry.store.sockets import SocketStore
from gantry.store.table import Table
from gantry.store.upload_sessions import UploadSessionStore
from gantry.store.uploads import UploadStore
from gantry.store.users import UserStore


@dataclass
class Store:
    table: Table
    sockets: SocketStore
    algorithms: AlgorithmStore
    models: AlgorithmModelStore
    jobs: JobStore
    images: ImageStore
    uploads: UploadStore
    users: UserStore
    archives: ArchiveStore
    upload_sessions: UploadSessionStore
    archive_runs: ArchiveRunStore

    @classmethod
    def create(cls, clients: Clients, settings: Settings) -> Store:
        table = Table(clients, settings.table_name)
        return cls(
            table=table,
            sockets=SocketStore(table),
            algorithms=AlgorithmStore(table),
            models=AlgorithmModelStore(table),
            jobs=JobStore(table),
            images=ImageStore(table),
            uploads=UploadStore(table),
            users=UserStore(table),
            archives=ArchiveStore(table),
            upload_sessions=UploadSessionStore(table),
            archive_runs=ArchiveRunStore(table),
        )
