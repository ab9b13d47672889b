"""Where bytes and records live: blob stores, the SQL index, instance records, studies, metadata
documents, versions and matching, and reading them back for every protocol (``retrieve``, ``search``)."""

__all__: list[str] = []
