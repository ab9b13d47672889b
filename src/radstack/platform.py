"""The running platform: settings plus the services built from them, created once per process."""

from __future__ import annotations

from dataclasses import dataclass

from radstack.config import Settings
from radstack.ingest.pool import IngestPool
from radstack.store.blobs import open_blob_store
from radstack.store.index import create_index_engine, migrate
from radstack.store.studies import StudyStore

__all__ = ["Platform"]


@dataclass
class Platform:
    settings: Settings
    store: StudyStore
    analyser: IngestPool | None = None

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        """Create the data dir, migrate the index to the newest schema and open the blob store."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_index_engine(settings.resolved_database_url)
        migrate(engine)
        blob_url = settings.resolved_blob_url
        store = StudyStore(engine, open_blob_store(blob_url))
        analyser = IngestPool(settings.ingest_processes, blob_url) if settings.ingest_processes else None
        return cls(settings=settings, store=store, analyser=analyser)

    def close(self) -> None:
        if self.analyser is not None:
            self.analyser.close()
        self.store.close()
