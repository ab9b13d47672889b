"""Where bytes and records live: blob stores, the SQL index, instance records, studies, metadata
documents, versions and matching."""

__all__: list[str] = []
