"""Every way data comes in goes through :mod:`radstack.ingest.pipeline`."""

__all__: list[str] = []
