"""Tables of the DICOM standard kept as data, each with the edition it was taken from.

``table_e1_1.json`` is PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes):
one row per attribute, its columns named as the standard names them (``"Tag"``, ``"Basic Prof."``,
the option columns such as ``"Rtn. Dev. Id. Opt."`` where present), and ``"Keyword"`` from PS3.6.
:mod:`radstack.dicom._standard.regenerate` writes it from the standard's Part 15 DocBook; the file
says which edition and how.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib.resources import files

__all__ = ["StandardTable", "table_e1_1"]


@dataclass(frozen=True)
class StandardTable:
    """A table of the standard: its edition, its column names and its rows of cell text."""

    name: str
    edition: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def column(self, name: str) -> dict[str, str]:
        """The non-empty cells of column ``name``, by the row's ``"Tag"`` text (``"(0010,0010)"``).

        Raises
        ------
        KeyError
            The table has no such column (the message lists the ones it has).
        """
        if name not in self.columns:
            raise KeyError(f"{self.name} ({self.edition}) has no column {name!r}; it has {self.columns}")
        tag, wanted = self.columns.index("Tag"), self.columns.index(name)
        return {row[tag]: row[wanted] for row in self.rows if row[wanted]}


@functools.cache
def table_e1_1() -> StandardTable:
    """PS3.15 Table E.1-1, read from the package once."""
    data = json.loads(files(__name__).joinpath("table_e1_1.json").read_text(encoding="utf-8"))
    return StandardTable(
        data["table"],
        data["edition"],
        tuple(data["columns"]),
        tuple(tuple(row) for row in data["rows"]),
    )
