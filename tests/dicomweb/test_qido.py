"""QIDO-RS (PS3.18 §10.6) against a running server, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import copy
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from radstack.config import Settings
from tests import authed
from tests.conftest import RunningServer, free_port, start_server

JsonDict = dict[str, Any]

#: Study return attributes of PS3.18 Table 10.6.3-3 that must be present in every study match.
STUDY_REQUIRED = {
    "00080020": "DA",  # StudyDate
    "00080030": "TM",  # StudyTime
    "00080050": "SH",  # AccessionNumber
    "00080061": "CS",  # ModalitiesInStudy
    "00080090": "PN",  # ReferringPhysicianName
    "00081190": "UR",  # RetrieveURL
    "00100010": "PN",  # PatientName
    "00100020": "LO",  # PatientID
    "00100030": "DA",  # PatientBirthDate
    "00100040": "CS",  # PatientSex
    "0020000D": "UI",  # StudyInstanceUID
    "00200010": "SH",  # StudyID
    "00201206": "IS",  # NumberOfStudyRelatedSeries
    "00201208": "IS",  # NumberOfStudyRelatedInstances
}
SERIES_REQUIRED = {
    "00080060": "CS",  # Modality
    "0008103E": "LO",  # SeriesDescription
    "00081190": "UR",  # RetrieveURL
    "0020000E": "UI",  # SeriesInstanceUID
    "00200011": "IS",  # SeriesNumber
    "00201209": "IS",  # NumberOfSeriesRelatedInstances
    "00400244": "DA",  # PerformedProcedureStepStartDate
    "00400245": "TM",  # PerformedProcedureStepStartTime
}
INSTANCE_REQUIRED = {
    "00080016": "UI",  # SOPClassUID
    "00080018": "UI",  # SOPInstanceUID
    "00081190": "UR",  # RetrieveURL
    "00200013": "IS",  # InstanceNumber
    "00280008": "IS",  # NumberOfFrames
    "00280010": "US",  # Rows
    "00280011": "US",  # Columns
    "00280100": "US",  # BitsAllocated
}


@dataclass
class Corpus:
    """Four studies: A (CT + MR, 3 instances), B (PT), C (OCT, not CT!) and D (CT)."""

    studies: dict[str, str] = field(default_factory=dict)  #: label → StudyInstanceUID
    series: dict[str, str] = field(default_factory=dict)  #: label → SeriesInstanceUID
    instances: dict[str, str] = field(default_factory=dict)  #: label → SOPInstanceUID
    datasets: list[Dataset] = field(default_factory=list)


_STUDIES = {
    # label: PatientName, PatientID, StudyDate, StudyTime, AccessionNumber
    "A": ("Doe^John", "PID-A", "20200115", "101500", "ACC-1"),
    "B": ("Doe^Jane", "PID-B", "20201231", "080000", "ACC_2"),
    "C": ("Smith^Anna", "PID-C", "20190601", "120000", "ACCX2"),
    "D": ("van Dyke^Bob", "PID-D", "20210301", "090000", "acc-4"),
}
# label: study, Modality, SeriesNumber, instance numbers
_SERIES = {
    "A1": ("A", "CT", 1, (2, 1)),
    "A2": ("A", "MR", 2, (1,)),
    "B1": ("B", "PT", 1, (1,)),
    "C1": ("C", "OCT", 1, (1,)),
    "D1": ("D", "CT", 3, (1,)),
}


def make_corpus() -> Corpus:
    corpus = Corpus()
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    template = pydicom.dcmread(path)
    corpus.studies = {label: generate_uid() for label in _STUDIES}
    corpus.series = {label: generate_uid() for label in _SERIES}
    for series_label, (study_label, modality, series_number, numbers) in _SERIES.items():
        name, patient_id, date, time, accession = _STUDIES[study_label]
        for number in numbers:
            ds = copy.deepcopy(template)  # Dataset.copy() shares its elements
            ds.PatientName = name
            ds.PatientID = patient_id
            ds.StudyDate = date
            ds.StudyTime = time
            ds.AccessionNumber = accession
            ds.StudyDescription = f"study {study_label}"
            ds.Modality = modality
            ds.SeriesNumber = series_number
            ds.SeriesDescription = f"series {series_label}"
            ds.InstanceNumber = number
            ds.StudyInstanceUID = corpus.studies[study_label]
            ds.SeriesInstanceUID = corpus.series[series_label]
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            if study_label == "B":
                ds.PatientAge = "042Y"
            corpus.instances[f"{series_label}.{number}"] = ds.SOPInstanceUID
            corpus.datasets.append(ds)
    return corpus


def store(server: RunningServer) -> Corpus:
    corpus = make_corpus()
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances(corpus.datasets)
    return corpus


@pytest.fixture
def loaded(backend_server: RunningServer) -> tuple[RunningServer, Corpus]:
    return backend_server, store(backend_server)


def get(server: RunningServer, path: str, **params: Any) -> httpx.Response:
    return authed.get(f"{server.dicomweb}{path}", params=params, timeout=30)


def results(server: RunningServer, path: str, **params: Any) -> list[JsonDict]:
    response = get(server, path, **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    body: list[JsonDict] = response.json()
    return body


def value(match: JsonDict, tag: str) -> Any:
    element = match.get(tag, {})
    return element.get("Value", [None])[0]


def uids(matches: list[JsonDict], tag: str = "0020000D") -> list[str]:
    return [value(m, tag) for m in matches]


def raw_get(server: RunningServer, path: str) -> tuple[int, str, dict[str, str]]:
    """GET without client-side path normalisation (httpx would collapse ``..``)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path, headers=server.auth)
        response = connection.getresponse()
        return response.status, response.read().decode(), dict(response.headers)
    finally:
        connection.close()


# ----------------------------------------------------------------------------- study level
def test_study_matching_by_patient_and_dates(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    s = corpus.studies
    assert uids(results(server, "/studies")) == [s["D"], s["B"], s["A"], s["C"]]  # newest first
    assert uids(results(server, "/studies", PatientID="PID-B")) == [s["B"]]
    assert uids(results(server, "/studies", **{"00100020": "PID-B"})) == [s["B"]]  # tag form
    assert results(server, "/studies", PatientID="PID") == []  # single value match is exact
    assert uids(results(server, "/studies", PatientName="Doe*")) == [s["B"], s["A"]]
    assert uids(results(server, "/studies", PatientName="*oe^J?hn")) == [s["A"]]
    assert uids(results(server, "/studies", PatientName="doe^JOHN")) == [s["A"]]  # case-insensitive
    assert results(server, "/studies", PatientName="john") == []
    assert uids(results(server, "/studies", PatientName="john", fuzzymatching="true")) == [s["A"]]
    assert uids(results(server, "/studies", PatientName="dyk", fuzzymatching="true")) == [s["D"]]
    assert uids(results(server, "/studies", PatientName="DOE", fuzzymatching="true")) == [s["B"], s["A"]]
    assert uids(results(server, "/studies", StudyDate="20200101-20201231")) == [s["B"], s["A"]]
    assert uids(results(server, "/studies", StudyDate="-20200115")) == [s["A"], s["C"]]
    assert uids(results(server, "/studies", StudyDate="20201231-")) == [s["D"], s["B"]]
    assert uids(results(server, "/studies", StudyDate="20200115")) == [s["A"]]
    # "0900" as an upper bound includes 09:00:00 (a partial time covers its whole minute).
    assert uids(results(server, "/studies", StudyTime="0800-0900")) == [s["D"], s["B"]]
    # Wildcards are case-sensitive outside names; _ and % are literal characters, not LIKE ones.
    assert uids(results(server, "/studies", AccessionNumber="ACC?2")) == [s["B"], s["C"]]
    assert uids(results(server, "/studies", AccessionNumber="ACC_*")) == [s["B"]]
    assert uids(results(server, "/studies", AccessionNumber="acc*")) == [s["D"]]
    assert results(server, "/studies", AccessionNumber="ACC%") == []


def test_study_uid_lists_and_modalities(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    s = corpus.studies
    assert uids(results(server, "/studies", StudyInstanceUID=f"{s['C']},{s['A']}")) == [s["A"], s["C"]]
    assert uids(results(server, "/studies", StudyInstanceUID=f"{s['C']}\\{s['D']}")) == [s["D"], s["C"]]
    repeated = authed.get(
        f"{server.dicomweb}/studies", params=[("StudyInstanceUID", s["B"]), ("StudyInstanceUID", s["C"])]
    )
    assert uids(repeated.json()) == [s["B"], s["C"]]
    # OCT contains "CT" but is not CT: the backslash-joined column must not leak substrings.
    assert uids(results(server, "/studies", ModalitiesInStudy="CT")) == [s["D"], s["A"]]
    assert uids(results(server, "/studies", ModalitiesInStudy="MR")) == [s["A"]]
    assert uids(results(server, "/studies", ModalitiesInStudy="OCT")) == [s["C"]]
    assert uids(results(server, "/studies", ModalitiesInStudy="PT\\MR")) == [s["B"], s["A"]]
    assert uids(results(server, "/studies", ModalitiesInStudy="*CT")) == [s["D"], s["A"], s["C"]]
    assert results(server, "/studies", ModalitiesInStudy="C") == []
    both = results(server, "/studies", ModalitiesInStudy="CT", PatientName="Doe*")
    assert uids(both) == [s["A"]]


def test_study_return_attributes(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    matches = results(server, "/studies")
    for match in matches:
        for tag, vr in STUDY_REQUIRED.items():
            assert match.get(tag, {}).get("vr") == vr, (tag, match.get(tag))
        assert list(match) == sorted(match)
    study_a = results(server, "/studies", PatientID="PID-A")[0]
    assert value(study_a, "00100010") == {"Alphabetic": "Doe^John"}
    assert study_a["00080061"]["Value"] == ["CT", "MR"]
    assert value(study_a, "00201206") == 2
    assert value(study_a, "00201208") == 3
    assert value(study_a, "00081190") == f"{server.dicomweb}/studies/{corpus.studies['A']}"
    assert study_a["00080090"] == {"vr": "PN"}  # empty in the data, present without Value
    assert "00101010" not in study_a  # PatientAge is not a return attribute unless asked for


def test_deleted_study_never_matches(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    response = authed.delete(f"{server.dicomweb}/studies/{corpus.studies['C']}", timeout=30)
    assert response.status_code == 204, response.text
    assert corpus.studies["C"] not in uids(results(server, "/studies"))
    assert results(server, "/studies", PatientID="PID-C") == []
    assert results(server, "/series", PatientID="PID-C") == []
    assert results(server, "/instances", PatientID="PID-C") == []


# ----------------------------------------------------------------------------- series level
def test_series_search(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    s, r = corpus.studies, corpus.series
    in_a = results(server, f"/studies/{s['A']}/series")
    assert uids(in_a, "0020000E") == [r["A1"], r["A2"]]  # by SeriesNumber
    assert [value(m, "00201209") for m in in_a] == [2, 1]
    assert [value(m, "00080060") for m in in_a] == ["CT", "MR"]
    assert value(in_a[0], "00081190") == f"{server.dicomweb}/studies/{s['A']}/series/{r['A1']}"
    for match in in_a:
        for tag, vr in SERIES_REQUIRED.items():
            assert match.get(tag, {}).get("vr") == vr, (tag, match.get(tag))
    assert uids(results(server, f"/studies/{s['A']}/series", Modality="MR"), "0020000E") == [r["A2"]]
    assert results(server, f"/studies/{s['B']}/series", SeriesInstanceUID=r["A1"]) == []

    one = results(server, "/series", SeriesInstanceUID=r["A2"])
    assert uids(one, "0020000E") == [r["A2"]]
    # Across studies, each series carries its study's attributes (PS3.18 Table 10.6.3-4).
    assert value(one[0], "00100020") == "PID-A"
    assert value(one[0], "0020000D") == s["A"]
    assert uids(results(server, "/series", Modality="CT"), "0020000E") == [r["D1"], r["A1"]]
    assert uids(results(server, "/series", PatientID="PID-A"), "0020000E") == [r["A1"], r["A2"]]
    assert uids(results(server, "/series", ModalitiesInStudy="C*"), "0020000E") == [r["D1"], r["A1"], r["A2"]]
    assert results(server, f"/studies/{generate_uid()}/series") == []


# ----------------------------------------------------------------------------- instance level
def test_instance_search(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    s, r, i = corpus.studies, corpus.series, corpus.instances
    in_a1 = results(server, f"/studies/{s['A']}/series/{r['A1']}/instances")
    assert uids(in_a1, "00080018") == [i["A1.1"], i["A1.2"]]  # by InstanceNumber
    first = in_a1[0]
    for tag, vr in INSTANCE_REQUIRED.items():
        assert first.get(tag, {}).get("vr") == vr, (tag, first.get(tag))
    assert (value(first, "00280010"), value(first, "00280011"), value(first, "00280100")) == (128, 128, 16)
    assert value(first, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
    assert value(first, "00081190") == (
        f"{server.dicomweb}/studies/{s['A']}/series/{r['A1']}/instances/{i['A1.1']}"
    )

    in_a = results(server, f"/studies/{s['A']}/instances")
    assert uids(in_a, "00080018") == [i["A1.1"], i["A1.2"], i["A2.1"]]
    assert value(in_a[2], "00080060") == "MR"  # series attributes when spanning series

    listed = results(server, "/instances", SOPInstanceUID=f"{i['D1.1']},{i['A1.2']}")
    assert uids(listed, "00080018") == [i["D1.1"], i["A1.2"]]
    assert value(listed[0], "00100020") == "PID-D"  # study attributes when spanning studies
    assert uids(results(server, "/instances", InstanceNumber="2"), "00080018") == [i["A1.2"]]
    assert uids(results(server, "/instances", Modality="MR", PatientID="PID-A"), "00080018") == [i["A2.1"]]


def test_dicomweb_client_searches(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    client = DICOMwebClient(server.dicomweb, headers=server.auth)
    found = client.search_for_studies(search_filters={"PatientID": "PID-D"})
    assert uids(found) == [corpus.studies["D"]]
    series = client.search_for_series(study_instance_uid=corpus.studies["A"])
    assert uids(series, "0020000E") == [corpus.series["A1"], corpus.series["A2"]]
    instances = client.search_for_instances(
        study_instance_uid=corpus.studies["A"], series_instance_uid=corpus.series["A2"]
    )
    assert uids(instances, "00080018") == [corpus.instances["A2.1"]]


# ----------------------------------------------------------------------------- includefield
def test_includefield(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    study_b = results(server, "/studies", PatientID="PID-B", includefield="PatientAge,00080080")[0]
    assert value(study_b, "00101010") == "042Y"
    assert value(study_b, "00080080") == "JFK IMAGING CENTER"
    everything = results(server, "/studies", PatientID="PID-B", includefield="all")[0]
    assert value(everything, "00101010") == "042Y"
    assert value(everything, "00081030") == "study B"

    series_a = results(server, f"/studies/{corpus.studies['A']}/series", includefield="all")
    assert value(series_a[0], "00080070") == "GE MEDICAL SYSTEMS"  # Manufacturer, a series attribute

    path = f"/studies/{corpus.studies['A']}/series/{corpus.series['A1']}/instances"
    position = results(server, path, includefield="ImagePositionPatient")[0]
    assert position["00200032"]["Value"] == pytest.approx([-158.135803, -179.035797, -75.699997])
    assert "00180050" not in position  # only what was asked for
    whole = results(server, path, includefield="all")[0]
    assert value(whole, "00180050") is not None  # SliceThickness: from the stored instance JSON
    assert whole["7FE00010"].get("BulkDataURI")  # pixel data by reference, never inline
    assert value(whole, "00081190").endswith(corpus.instances["A1.1"])


# ----------------------------------------------------------------------------- paging
def test_limit_and_offset(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    s = corpus.studies
    first = get(server, "/studies", limit=2)
    assert uids(first.json()) == [s["D"], s["B"]]
    assert first.headers["warning"].startswith('299 radstack "')
    assert "limit" in first.headers["warning"]
    rest = get(server, "/studies", limit=2, offset=2)
    assert uids(rest.json()) == [s["A"], s["C"]]
    assert "warning" not in rest.headers  # nothing more to page
    assert uids(results(server, "/studies", offset=3)) == [s["C"]]
    assert results(server, "/studies", offset=10) == []
    assert uids(results(server, "/series", limit=1, offset=1), "0020000E") == [corpus.series["B1"]]


@pytest.fixture
def capped_server(backend_settings: Settings) -> Iterator[RunningServer]:
    settings = backend_settings.model_copy(update={"qido_max_limit": 3, "http_port": free_port()})
    yield from start_server(settings)


def test_server_cap_truncates_with_warning(capped_server: RunningServer) -> None:
    corpus = store(capped_server)
    s = corpus.studies
    for params in ({}, {"limit": "100"}):
        response = get(capped_server, "/studies", **params)
        assert response.status_code == 200
        assert uids(response.json()) == [s["D"], s["B"], s["A"]]
        assert "(3)" in response.headers["warning"]
    rest = get(capped_server, "/studies", offset=3)
    assert uids(rest.json()) == [s["C"]]
    assert "warning" not in rest.headers
    assert len(get(capped_server, "/instances").json()) == 3


# ----------------------------------------------------------------------------- errors
def _problem(status: int, body: str) -> JsonDict:
    problem: JsonDict = json.loads(body)
    assert problem["status"] == status
    return problem


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/dicomweb/studies/../series", "'..'"),
        ("/dicomweb/studies/1.2.a/series", "'1.2.a'"),
        ("/dicomweb/studies/%2e%2e/instances", "'..'"),
        ("/dicomweb/studies/1.2/series/1.02/instances", "'1.02'"),
    ],
)
def test_invalid_path_uid_is_400(server: RunningServer, path: str, shown: str) -> None:
    status, body, headers = raw_get(server, path)
    assert status == 400, body
    assert headers["content-type"] == "application/problem+json"
    assert shown in _problem(400, body)["detail"]


@pytest.mark.parametrize(
    ("params", "shown"),
    [
        ({"limit": "-1"}, "'-1'"),
        ({"limit": "ten"}, "'ten'"),
        ({"offset": "1.5"}, "'1.5'"),
        ({"fuzzymatching": "yes"}, "'yes'"),
        ({"PatientNme": "Doe"}, "'PatientNme'"),
        ({"includefield": "NoSuchThing"}, "'NoSuchThing'"),
        ({"StudyDate": "2020-01-01"}, "'2020-01-01'"),
        ({"StudyInstanceUID": "1.2.a"}, "'1.2.a'"),
        ({"SeriesNumber": "one"}, "'one'"),
    ],
)
def test_bad_query_is_400(server: RunningServer, params: dict[str, str], shown: str) -> None:
    response = get(server, "/studies" if "SeriesNumber" not in params else "/series", **params)
    assert response.status_code == 400, response.text
    assert shown in _problem(400, response.text)["detail"]


def test_unsupported_key_is_ignored_with_warning(loaded: tuple[RunningServer, Corpus]) -> None:
    server, corpus = loaded
    response = get(server, "/studies", PatientAge="042Y", PatientID="PID-A")
    assert response.status_code == 200
    assert uids(response.json()) == [corpus.studies["A"]]  # PatientAge did not filter
    assert "PatientAge" in response.headers["warning"]
    # A series key is valid DICOM but not a study-level key.
    response = get(server, "/studies", Modality="MR")
    assert len(response.json()) == 4
    assert "Modality" in response.headers["warning"]
    assert "warning" not in get(server, "/studies", PatientID="PID-A").headers


def test_accept_negotiation(server: RunningServer) -> None:
    refused = authed.get(f"{server.dicomweb}/studies", headers={"Accept": "application/xml"})
    assert refused.status_code == 406
    assert "application/xml" in _problem(406, refused.text)["detail"]
    for accept in ("application/dicom+json", "application/json", "*/*"):
        response = authed.get(f"{server.dicomweb}/series", headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/dicom+json"
        assert response.json() == []
