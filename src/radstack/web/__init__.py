"""HTTP: the FastAPI application factory and its thin routes."""

__all__: list[str] = []
