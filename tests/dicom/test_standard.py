"""Tables of the standard kept as data (dicom/_standard/): the packaged PS3.15 Table E.1-1 and the
script that writes it from the standard's Part 15 DocBook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radstack.dicom._standard import StandardTable, regenerate, table_e1_1

DOCBOOK = "http://docbook.org/ns/docbook"
HEADER = [
    "Attribute Name",
    "Tag",
    "Retd. (from PS3.6)",
    "In Std. Comp. IOD (from PS3.3)",
    "Basic Prof.",
    "Rtn. Safe Priv. Opt.",
    "Rtn. UIDs Opt.",
    "Rtn. Dev. Id. Opt.",
    "Rtn. Inst. Id. Opt.",
    "Rtn. Pat. Chars. Opt.",
    "Rtn. Long. Full Dates Opt.",
    "Rtn. Long. Modif. Dates Opt.",
    "Clean Desc. Opt.",
    "Clean Struct. Cont. Opt.",
    "Clean Graph. Opt.",
]


def _row(cells: list[str], cell: str = "td") -> str:
    return "<tr>" + "".join(f"<{cell}><para>{text}</para></{cell}>" for text in cells) + "</tr>"


def _part15(
    rows: list[list[str]], subtitle: str = "DICOM PS3.15 2024b - Security and System Management"
) -> str:
    head = _row([f'<emphasis role="bold">{name}</emphasis>' for name in HEADER], "th")
    body = "".join(_row(row) for row in rows)
    return (
        f'<?xml version="1.0" encoding="utf-8"?><book xmlns="{DOCBOOK}" '
        f'xmlns:xml="http://www.w3.org/XML/1998/namespace"><info><subtitle>{subtitle}</subtitle></info>'
        f'<chapter><table label="E.1-1" xml:id="table_E.1-1"><caption>Application Level Confidentiality '
        f"Profile Attributes</caption><thead>{head}</thead><tbody>{body}</tbody></table></chapter></book>"
    )


def _regenerate(tmp_path: Path, text: str, *args: str) -> StandardTable:
    source, output = tmp_path / "part15.xml", tmp_path / "table_e1_1.json"
    source.write_text(text, encoding="utf-8")
    assert regenerate.main([str(source), "--output", str(output), *args]) == 0
    data = json.loads(output.read_text(encoding="utf-8"))
    return StandardTable(
        data["table"], data["edition"], tuple(data["columns"]), tuple(map(tuple, data["rows"]))
    )


def test_packaged_table_names_its_edition_and_columns() -> None:
    table = table_e1_1()
    assert table is table_e1_1()  # read once
    assert table.edition == "2024b" and "E.1-1" in table.name
    assert table.columns[:2] == ("Tag", "Keyword") and "Basic Prof." in table.columns
    basic = table.column("Basic Prof.")
    assert basic["(0010,0010)"] == "Z" and basic["(0008,1140)"] == "X/Z/U*" and basic["(60xx,3000)"] == "X"
    assert len(basic) == len(table.rows) > 600
    with pytest.raises(KeyError, match=r"Rtn\. Nothing Opt\."):
        table.column("Rtn. Nothing Opt.")


def test_regenerate_reads_every_column_of_the_docbook(tmp_path: Path) -> None:
    blank = [""] * 10
    rows = [
        ["Patient\u200b's Name", "(0010,0010)", "N", "Y", "Z", *blank],
        ["Study Date", "(0008,0020)", "N", "Y", "Z", "", "", "", "", "", "K", "C", "", "", ""],
        ["Overlay Data", "(60xx,3000)", "N", "Y", "X", *blank],
        ["Private Attributes", "(gggg,eeee) where gggg is odd", "N", "Y", "X", "C", *blank[1:]],
    ]

    table = _regenerate(tmp_path, _part15(rows))

    assert table.edition == "2024b"
    assert table.columns == ("Tag", "Keyword", *(name for name in HEADER if name != "Tag"))
    assert table.rows[0][:3] == ("(0008,0020)", "StudyDate", "Study Date")  # sorted by tag
    assert table.rows[1][:3] == ("(0010,0010)", "PatientName", "Patient's Name")  # no zero-width space
    assert table.rows[2][:2] == ("(60xx,3000)", "OverlayData")
    assert table.column("Basic Prof.") == {"(0008,0020)": "Z", "(0010,0010)": "Z", "(60xx,3000)": "X"}
    assert table.column("Rtn. Long. Full Dates Opt.") == {"(0008,0020)": "K"}
    assert table.column("Rtn. Long. Modif. Dates Opt.") == {"(0008,0020)": "C"}
    data = json.loads((tmp_path / "table_e1_1.json").read_text(encoding="utf-8"))
    assert data["skipped"] == [["(gggg,eeee) where gggg is odd", "Private Attributes"]]


def test_regenerate_keeps_the_packaged_actions(tmp_path: Path) -> None:
    # The packaged table written out as the standard's DocBook and read back: every action survives.
    packaged = table_e1_1()
    basic = packaged.column("Basic Prof.")
    keyword = packaged.column("Keyword")
    rows = [[keyword[tag], tag, "N", "Y", action, *[""] * 10] for tag, action in basic.items()]

    table = _regenerate(tmp_path, _part15(rows, subtitle="no edition here"), "--edition", "2024b")

    assert table.column("Basic Prof.") == basic
    assert table.column("Keyword") == keyword


def test_regenerate_refuses_what_is_not_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "part15.xml"
    source.write_text(_part15([["Patient's Name", "(0010,0010)", "N"]]), encoding="utf-8")
    assert regenerate.main([str(source), "--output", str(tmp_path / "out.json")]) == 1
    assert "3 cells where the header has 15" in capsys.readouterr().err
    source.write_text(f'<book xmlns="{DOCBOOK}"><subtitle>DICOM PS3.15 2024b</subtitle></book>')
    assert regenerate.main([str(source), "--output", str(tmp_path / "out.json")]) == 1
    assert "no table with xml:id 'table_E.1-1'" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
