"""Query parsing and SQL matching (PS3.4 §C.2.2.2) without HTTP, on a migrated SQLite index."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from radstack.errors import BadRequest
from radstack.store.index import create_index_engine, migrate
from radstack.store.matching import (
    MatchKindValues,
    QueryLevelValues,
    Term,
    conditions,
    like_pattern,
    parse_query,
)
from radstack.store.models import SeriesRow, StudyRow

STUDY = QueryLevelValues.STUDY


def test_keyword_and_tag_forms_are_the_same_key() -> None:
    by_keyword = parse_query([("PatientID", "P1")], STUDY)
    by_tag = parse_query([("00100020", "P1")], STUDY)
    lower_tag = parse_query([("00100020".lower(), "P1")], STUDY)
    assert by_keyword.matches == by_tag.matches == lower_tag.matches
    assert by_keyword.matches[0].attribute.keyword == "PatientID"


def test_value_kinds() -> None:
    query = parse_query(
        [
            ("StudyInstanceUID", "1.2.3,1.2.4\\1.2.5"),
            ("StudyInstanceUID", "1.2.6"),
            ("PatientName", "Doe*"),
            ("StudyDate", "20200101-"),
            ("StudyTime", "-1200"),
            ("AccessionNumber", "A1"),
        ],
        STUDY,
    )
    terms = {m.attribute.keyword: m.terms for m in query.matches}
    assert [t.value for t in terms["StudyInstanceUID"]] == ["1.2.3", "1.2.4", "1.2.5", "1.2.6"]
    assert terms["PatientName"] == (Term(MatchKindValues.WILDCARD, "Doe*"),)
    assert terms["StudyDate"] == (Term(MatchKindValues.RANGE, low="20200101"),)
    assert terms["StudyTime"] == (Term(MatchKindValues.RANGE, high="1200"),)
    assert terms["AccessionNumber"] == (Term(MatchKindValues.SINGLE_VALUE, "A1"),)


def test_empty_and_star_are_universal_but_returned() -> None:
    query = parse_query(
        [("PatientName", ""), ("AccessionNumber", "*"), ("includefield", "00101010,all")], STUDY
    )
    assert query.matches == ()
    assert query.include == ("00100010", "00080050", "00101010")
    assert query.include_all


def test_keys_of_lower_levels_are_ignored_with_a_warning() -> None:
    query = parse_query([("Modality", "CT"), ("PatientAge", "030Y"), ("PatientID", "P")], STUDY)
    assert [m.attribute.keyword for m in query.matches] == ["PatientID"]
    assert len(query.warnings) == 2
    assert "Modality" in query.warnings[0] and "PatientAge" in query.warnings[1]
    # At the series level Modality is a real key, and study keys are allowed too.
    series = parse_query([("Modality", "CT"), ("PatientID", "P")], QueryLevelValues.SERIES)
    assert [m.attribute.keyword for m in series.matches] == ["Modality", "PatientID"]
    assert series.warnings == ()


@pytest.mark.parametrize(
    ("params", "shown"),
    [
        ([("NotAKeyword", "x")], "'NotAKeyword'"),
        ([("0010002", "x")], "'0010002'"),
        ([("includefield", "PatientName,Bogus")], "'Bogus'"),
        ([("StudyInstanceUID", "1.2.03")], "'1.2.03'"),
        ([("StudyInstanceUID", "1.2.*")], "'1.2.*'"),
        ([("StudyDate", "2020-01-01")], "'2020-01-01'"),
        ([("StudyDate", "20201231-20200101")], "'20201231-20200101'"),
        ([("StudyDate", "-")], "'-'"),
        ([("StudyTime", "25:00")], "'25:00'"),
        ([("limit", "-5")], "'-5'"),
        ([("offset", "")], "''"),
        ([("fuzzymatching", "1")], "'1'"),
    ],
)
def test_malformed_queries_name_the_bad_value(params: list[tuple[str, str]], shown: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_query(params, STUDY)
    assert shown in raised.value.message


def test_paging_parameters() -> None:
    query = parse_query([("limit", "25"), ("offset", "50"), ("fuzzymatching", "true")], STUDY)
    assert (query.limit, query.offset, query.fuzzy) == (25, 50, True)
    assert parse_query([], STUDY).limit is None


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert like_pattern("A_1%\\*?") == "A\\_1\\%\\\\%_"


# ----------------------------------------------------------------------------- SQL
@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    now = datetime.now(UTC)
    rows = [
        # study_uid, name, accession, date, time, modalities, instances
        ("1.1", "Doe^John", "A_1", "20200115", "101500", "CT\\MR", 3),
        ("1.2", "Doe^Jane", "AX1", "20201231", "080000", "CTX", 1),
        ("1.3", "Smith^Anna", "a%1", "20190601", "235959.5", "OCT", 1),
        ("1.4", "Gone^Deleted", "A_1", "20200115", "101500", "", 0),
    ]
    with Session(engine) as session, session.begin():
        for uid, name, accession, date, time, modalities, count in rows:
            study = StudyRow(
                study_uid=uid,
                patient_name=name,
                accession_number=accession,
                study_date=date,
                study_time=time,
                modalities=modalities,
                num_series=1,
                num_instances=count,
                version=1,
                change_seq=1,
                attrs="{}",
                updated_at=now,
            )
            session.add(study)
            session.flush()
            for index, modality in enumerate(modalities.split("\\") if modalities else []):
                session.add(
                    SeriesRow(
                        study_pk=study.id,
                        series_uid=f"{uid}.{index}",
                        study_uid=uid,
                        modality=modality,
                        num_instances=1,
                        attrs="{}",
                    )
                )
    yield engine
    engine.dispose()


def found(engine: Engine, *params: tuple[str, str]) -> list[str]:
    query = parse_query(list(params), STUDY)
    statement = (
        select(StudyRow.study_uid)
        .where(StudyRow.num_instances > 0, *conditions(query))
        .order_by(StudyRow.study_uid)
    )
    with Session(engine) as session:
        return list(session.scalars(statement))


def test_wildcards_are_literal_about_sql_metacharacters(engine: Engine) -> None:
    assert found(engine, ("AccessionNumber", "A_1")) == ["1.1"]  # _ is not a wildcard
    assert found(engine, ("AccessionNumber", "A?1")) == ["1.1", "1.2"]
    assert found(engine, ("AccessionNumber", "A*")) == ["1.1", "1.2"]  # case-sensitive: not a%1
    assert found(engine, ("AccessionNumber", "a%*")) == ["1.3"]
    assert found(engine, ("AccessionNumber", "*%*")) == ["1.3"]


def test_person_names(engine: Engine) -> None:
    assert found(engine, ("PatientName", "DOE^JOHN")) == ["1.1"]
    assert found(engine, ("PatientName", "d?e*")) == ["1.1", "1.2"]
    assert found(engine, ("PatientName", "ann")) == []
    assert found(engine, ("PatientName", "ann"), ("fuzzymatching", "true")) == ["1.3"]
    assert found(engine, ("PatientName", "oh"), ("fuzzymatching", "true")) == []  # prefixes only


def test_modalities_in_study_matches_whole_entries(engine: Engine) -> None:
    assert found(engine, ("ModalitiesInStudy", "CT")) == ["1.1"]
    assert found(engine, ("ModalitiesInStudy", "MR")) == ["1.1"]
    assert found(engine, ("ModalitiesInStudy", "CTX\\OCT")) == ["1.2", "1.3"]
    assert found(engine, ("ModalitiesInStudy", "CT*")) == ["1.1", "1.2"]
    assert found(engine, ("ModalitiesInStudy", "T")) == []


def test_date_and_time_ranges(engine: Engine) -> None:
    assert found(engine, ("StudyDate", "20200115-20201231")) == ["1.1", "1.2"]
    assert found(engine, ("StudyDate", "-20200114")) == ["1.3"]
    assert found(engine, ("StudyTime", "-1015")) == ["1.1", "1.2"]  # 10:15:00 is within "1015"
    assert found(engine, ("StudyTime", "2359-")) == ["1.3"]
    assert found(engine, ("StudyDate", "20200115"), ("StudyTime", "10")) == []  # single value is exact
