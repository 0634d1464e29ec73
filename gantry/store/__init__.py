"""DynamoDB-backed stores, one per entity, over the one table."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from gantry.store.table import Table

if TYPE_CHECKING:
    from gantry.aws import Clients
    from gantry.settings import Settings
    from gantry.store.algorithm_models import AlgorithmModelStore
    from gantry.store.algorithms import AlgorithmStore
    from gantry.store.archive_runs import ArchiveRunStore
    from gantry.store.archives import ArchiveStore
    from gantry.store.images import ImageStore
    from gantry.store.jobs import JobStore
    from gantry.store.sockets import SocketStore
    from gantry.store.upload_sessions import UploadSessionStore
    from gantry.store.uploads import UploadStore
    from gantry.store.users import UserStore


class Store:
    """The store of each entity, built on first use with its module and the domain models that
    module imports: a cold API request imports the stores it touches (every request the users
    store, for its caller's token), not all eleven."""

    def __init__(self, table: Table) -> None:
        self.table = table

    @classmethod
    def create(cls, clients: Clients, settings: Settings) -> Store:
        return cls(Table(clients, settings.table_name))

    @cached_property
    def sockets(self) -> SocketStore:
        from gantry.store.sockets import SocketStore

        return SocketStore(self.table)

    @cached_property
    def algorithms(self) -> AlgorithmStore:
        from gantry.store.algorithms import AlgorithmStore

        return AlgorithmStore(self.table)

    @cached_property
    def models(self) -> AlgorithmModelStore:
        from gantry.store.algorithm_models import AlgorithmModelStore

        return AlgorithmModelStore(self.table)

    @cached_property
    def jobs(self) -> JobStore:
        from gantry.store.jobs import JobStore

        return JobStore(self.table)

    @cached_property
    def images(self) -> ImageStore:
        from gantry.store.images import ImageStore

        return ImageStore(self.table)

    @cached_property
    def uploads(self) -> UploadStore:
        from gantry.store.uploads import UploadStore

        return UploadStore(self.table)

    @cached_property
    def users(self) -> UserStore:
        from gantry.store.users import UserStore

        return UserStore(self.table)

    @cached_property
    def archives(self) -> ArchiveStore:
        from gantry.store.archives import ArchiveStore

        return ArchiveStore(self.table)

    @cached_property
    def upload_sessions(self) -> UploadSessionStore:
        from gantry.store.upload_sessions import UploadSessionStore

        return UploadSessionStore(self.table)

    @cached_property
    def archive_runs(self) -> ArchiveRunStore:
        from gantry.store.archive_runs import ArchiveRunStore

        return ArchiveRunStore(self.table)
