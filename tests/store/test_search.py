"""The one search of QIDO-RS and C-FIND (:mod:`radstack.store.search`), without a protocol."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from radstack.config import Settings
from radstack.ingest.pipeline import ingest_file
from radstack.platform import Platform
from radstack.store import search
from radstack.store.matching import QueryLevelValues, parse_query
from radstack.store.models import StudyRow
from radstack.store.records import Batch, BatchReason
from tests.helpers import part10, synthetic_ct

STUDY, SERIES, IMAGE = QueryLevelValues.STUDY, QueryLevelValues.SERIES, QueryLevelValues.IMAGE
BASE = "https://pacs.example/dicomweb"
#: (study UID, patient ID, study date, instances): three studies of two patients.
STUDIES = (
    ("1.2.826.0.1.3680043.8.498.101", "PAT-A", "20240301", 2),
    ("1.2.826.0.1.3680043.8.498.102", "PAT-A", "20240302", 1),
    ("1.2.826.0.1.3680043.8.498.103", "PAT-B", "20240303", 1),
)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    opened = Platform.open(Settings(data_dir=tmp_path_factory.mktemp("search"), ingest_processes=0))
    seed = 0
    for study, patient, date, count in STUDIES:
        series = f"{study}.1"
        for number in range(1, count + 1):
            ds = synthetic_ct(study=study, series=series, patient_id=patient, rows=8, columns=8, seed=seed)
            ds.StudyDate, ds.InstanceNumber = date, number
            seed += 1
            assert ingest_file(opened.store, part10(ds), Batch(BatchReason.STOW)).ok
    yield opened
    opened.close()


def _uids(result: search.SearchResult, tag: str = "0020000D") -> list[str]:
    return [match[tag]["Value"][0] for match in result.matches]


def test_studies_newest_first_with_counts_and_retrieve_url(platform: Platform) -> None:
    result = search.search_studies(platform.store, parse_query([], STUDY), base_url=BASE, max_limit=10)
    assert _uids(result) == [s[0] for s in reversed(STUDIES)]
    first = result.matches[-1]
    assert first["00201208"] == {"vr": "IS", "Value": [2]}, "NumberOfStudyRelatedInstances"
    assert first["00081190"]["Value"] == [f"{BASE}/studies/{STUDIES[0][0]}"]
    assert not result.truncated and not result.warnings


def test_the_servers_cap_pages_with_a_warning(platform: Platform) -> None:
    query = parse_query([], STUDY)
    first = search.search_studies(platform.store, query, base_url="", max_limit=2)
    assert first.truncated and len(first.matches) == 2
    assert "(2)" in first.warnings[0] and "offset" in first.warnings[0]
    rest = search.search_studies(
        platform.store, parse_query([("offset", "2")], STUDY), base_url="", max_limit=2
    )
    assert _uids(first) + _uids(rest) == [s[0] for s in reversed(STUDIES)]
    assert not rest.truncated


def test_scope_keeps_the_caller_within_its_studies(platform: Platform) -> None:
    scope = StudyRow.patient_id == "PAT-A"
    query = parse_query([], STUDY)
    result = search.search_studies(platform.store, query, base_url="", max_limit=10, scope=scope)
    assert sorted(_uids(result)) == [STUDIES[0][0], STUDIES[1][0]]
    assert search.count_studies(platform.store, query, cap=100, scope=scope) == 2
    assert search.count_studies(platform.store, query, cap=2) == 2, "the count stops at the cap"
    instances = search.search_instances(
        platform.store, parse_query([], IMAGE), base_url="", max_limit=10, scope=scope
    )
    assert len(instances.matches) == 3


def test_instances_of_one_series_in_instance_number_order(platform: Platform) -> None:
    study = STUDIES[0][0]
    result = search.search_instances(
        platform.store,
        parse_query([("includefield", "PatientID")], IMAGE),
        study_uid=study,
        series_uid=f"{study}.1",
        base_url=BASE,
        max_limit=10,
    )
    assert [m["00200013"]["Value"] for m in result.matches] == [[1], [2]]
    assert all(m["00100020"]["Value"] == ["PAT-A"] for m in result.matches), "includefield from storage"
    assert "00201208" not in result.matches[0], "no study attributes within one study"


def test_series_across_studies_carry_their_study(platform: Platform) -> None:
    result = search.search_series(
        platform.store, parse_query([("PatientID", "PAT-B")], SERIES), base_url=BASE, max_limit=10
    )
    [match] = result.matches
    assert match["0020000D"]["Value"] == [STUDIES[2][0]]
    assert match["00201209"]["Value"] == [1], "NumberOfSeriesRelatedInstances"
    assert match["00081190"]["Value"] == [f"{BASE}/studies/{STUDIES[2][0]}/series/{STUDIES[2][0]}.1"]


def test_a_query_of_another_level_is_a_callers_bug(platform: Platform) -> None:
    with pytest.raises(ValueError, match="SERIES query cannot search the STUDY level"):
        search.search_studies(platform.store, parse_query([], SERIES), base_url="", max_limit=10)
