"""Where bytes and records live: blob stores, the SQL index, matching, studies and versions."""

__all__: list[str] = []
