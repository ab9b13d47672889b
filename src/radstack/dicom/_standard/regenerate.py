"""Write ``table_e1_1.json`` from the standard's Part 15 DocBook: run by hand, never at run time.

The DICOM standard is published as DocBook XML, one file per part; Part 15 is ``part15.xml`` in the
edition's DocBook archive (for example 2024b). Save it anywhere, then::

    python -m radstack.dicom._standard.regenerate path/to/part15.xml

It reads Table E.1-1 (``xml:id="table_E.1-1"``), keeps every column under the standard's own header
text (Attribute Name, Tag, the Basic Prof. column and each option column), adds each attribute's
PS3.6 keyword from pydicom's data dictionary, sorts the rows by tag and writes the JSON next to this
module (``--output -`` writes it to standard output). The edition is read from the book's subtitle
(``DICOM PS3.15 2024b - …``) unless ``--edition`` names it. Rows whose Tag is not a tag, such as
the one for all private attributes (``(gggg,eeee) where gggg is odd``), are listed under
``"skipped"``: radstack handles those by its own rules. This script downloads nothing.

Check the result before committing it: ``git diff`` shows which actions changed between editions,
and ``tests/dicom/test_deid.py`` must still pass.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.datadict import keyword_for_tag

__all__ = ["dump", "main", "read_table"]

_XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
_TABLE_ID = "table_E.1-1"
_TAG = re.compile(r"\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)")
_EDITION = re.compile(r"PS\s?3\.15\s+(\d{4}[a-z]?)")
#: Zero-width and non-breaking spaces the DocBook puts inside names and headers.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff"), None) | {0xA0: " "}
_TITLE = "PS3.15 Table E.1-1, Application Level Confidentiality Profile Attributes"
_COMMAND = "python -m radstack.dicom._standard.regenerate part15.xml"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(element: ElementTree.Element) -> str:
    return " ".join("".join(element.itertext()).translate(_INVISIBLE).split())


def _cells(row: ElementTree.Element) -> list[str]:
    return [_text(cell) for cell in row if _local(cell.tag) in ("td", "th")]


def _keyword(group: str, element: str, name: str) -> str:
    """The PS3.6 keyword of a tag (``"60xx"`` groups too); from the name where pydicom lacks it."""
    # pydicom answers a repeating group's keyword for any tag of it, e.g. (6000,3000) OverlayData.
    keyword = keyword_for_tag(int((group + element).replace("x", "0"), 16))
    return keyword or re.sub(r"[^0-9A-Za-z]", "", name)


def read_table(part15: Path, edition: str | None = None) -> dict[str, Any]:
    """Table E.1-1 of a Part 15 DocBook file, as the document ``table_e1_1.json`` holds.

    Raises
    ------
    ValueError
        The file has no Table E.1-1, its header lacks the Tag or Basic Prof. column, a row has
        another number of cells than the header, or no edition is found or given.
    """
    root = ElementTree.parse(part15).getroot()
    if edition is None:
        subtitle = next((_text(e) for e in root.iter() if _local(e.tag) == "subtitle"), "")
        found = _EDITION.search(subtitle)
        if found is None:
            raise ValueError(f"no edition in the subtitle {subtitle!r} of {part15}: pass --edition")
        edition = found[1]
    table = next((e for e in root.iter() if _local(e.tag) == "table" and e.get(_XML_ID) == _TABLE_ID), None)
    if table is None:
        raise ValueError(f"{part15} has no table with xml:id {_TABLE_ID!r}: is it PS3.15 in DocBook?")
    rows = [e for e in table.iter() if _local(e.tag) == "tr"]
    if not rows:
        raise ValueError(f"{_TABLE_ID} in {part15} has no rows")
    header = _cells(rows[0])
    missing = [name for name in ("Attribute Name", "Tag", "Basic Prof.") if name not in header]
    if missing:
        raise ValueError(f"{_TABLE_ID} in {part15} has no column {missing}; its header is {header}")
    name_at, tag_at = header.index("Attribute Name"), header.index("Tag")
    kept: list[tuple[str, list[str]]] = []
    skipped: list[list[str]] = []
    for number, row in enumerate(rows[1:], start=2):
        cells = _cells(row)
        if len(cells) != len(header):
            raise ValueError(
                f"row {number} of {_TABLE_ID} has {len(cells)} cells where the header has {len(header)}: {cells}"
            )
        match = _TAG.fullmatch(cells[tag_at].replace(" ", ""))
        if match is None:
            skipped.append([cells[tag_at], cells[name_at]])
            continue
        group, element = (part.upper().replace("X", "x") for part in match.groups())
        tag = f"({group},{element})"
        others = [cell for at, cell in enumerate(cells) if at != tag_at]
        kept.append((group + element, [tag, _keyword(group, element, cells[name_at]), *others]))
    kept.sort(key=lambda item: item[0].replace("x", "0"))
    return {
        "table": _TITLE,
        "edition": edition,
        "source": f"DICOM PS3.15 {edition}, DocBook (part15.xml)",
        "regenerate": _COMMAND,
        "skipped": skipped,
        "columns": ["Tag", "Keyword", *(name for at, name in enumerate(header) if at != tag_at)],
        "rows": [row for _, row in kept],
    }


def dump(document: dict[str, Any]) -> str:
    """``document`` as JSON with one table row per line, so that a new edition diffs row by row."""
    head = "".join(
        f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n"
        for key, value in document.items()
        if key != "rows"
    )
    rows = ",\n".join(f"    {json.dumps(row, ensure_ascii=False)}" for row in document["rows"])
    return "{\n" + head + '  "rows": [\n' + rows + "\n  ]\n}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module's docstring."""
    parser = argparse.ArgumentParser(description="Write table_e1_1.json from PS3.15 in DocBook.")
    parser.add_argument("part15", type=Path, help="the standard's part15.xml (DocBook)")
    parser.add_argument("--edition", help="the edition, e.g. 2024b (default: read from the file)")
    parser.add_argument(
        "--output",
        default=str(Path(__file__).with_name("table_e1_1.json")),
        help="where to write (default: the packaged file; '-' for standard output)",
    )
    args = parser.parse_args(argv)
    try:
        document = read_table(args.part15, args.edition)
    except (OSError, ValueError, ElementTree.ParseError) as exc:
        sys.stderr.write(f"regenerate: {exc}\n")
        return 1
    text = dump(document)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    sys.stderr.write(
        f"{len(document['rows'])} rows of PS3.15 {document['edition']} Table E.1-1 "
        f"({len(document['columns'])} columns, {len(document['skipped'])} rows skipped) -> {args.output}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
