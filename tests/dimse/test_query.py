"""C-FIND on the QIDO matching engine: every level of Patient Root and Study Root, wildcards, date
ranges, bad identifiers, cancel, dcmtk's findscu, and PostgreSQL (PS3.4 §C.4.1, §C.6)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from radstack.config import Settings
from radstack.dimse._query import parse_find
from radstack.errors import IdentifierMismatch
from tests.conftest import RunningServer, free_port, start_server
from tests.dimse.helpers import (
    PATIENT_FIND,
    STUDY_FIND,
    association,
    query,
    run_tool,
    store,
)
from tests.helpers import synthetic_ct


@dataclass(frozen=True)
class Corpus:
    """Three patients, four studies, five series, six instances."""

    s1: str  # Doe^John, 20240105, CT: series a (2 instances) and b (1)
    s2: str  # Doe^John, 20231120, MR: 1 series, 1 instance
    s3: str  # Roe^Jane, 20240220, CT
    s4: str  # Müller^Jörg, 20240301, CT
    a: str
    b: str
    a_instances: tuple[str, ...]


def _instance(
    study: str,
    series: str,
    number: int,
    *,
    name: str,
    pid: str,
    date: str,
    modality: str = "CT",
    series_number: int = 1,
) -> Dataset:
    ds = synthetic_ct(
        study=study, series=series, patient_name=name, patient_id=pid, rows=8, columns=8, seed=number
    )
    ds.StudyDate, ds.InstanceNumber, ds.Modality = date, number, modality
    ds.SeriesNumber = series_number
    ds.PatientBirthDate, ds.PatientSex = {"P-001": ("19700101", "M"), "P-002": ("19800202", "F")}.get(
        pid, ("", "O")
    )
    ds.AccessionNumber = f"ACC-{study[-4:]}"
    ds.SpecificCharacterSet = "ISO_IR 192"
    if modality == "MR":
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    return ds


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Corpus]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("find") / "data",
        http_port=free_port(),
        dicom_port=free_port(),
        ingest_processes=0,
    )
    running = start_server(settings)
    server = next(running)
    s1, s2, s3, s4 = (generate_uid() for _ in range(4))
    a, b = generate_uid(), generate_uid()
    john: dict[str, Any] = {"name": "Doe^John", "pid": "P-001"}
    datasets = [
        _instance(s1, a, 1, date="20240105", **john),
        _instance(s1, a, 2, date="20240105", **john),
        _instance(s1, b, 1, date="20240105", series_number=2, **john),
        _instance(s2, generate_uid(), 1, date="20231120", modality="MR", **john),
        _instance(s3, generate_uid(), 1, name="Roe^Jane", pid="P-002", date="20240220"),
        _instance(s4, generate_uid(), 1, name="Müller^Jörg", pid="P-003", date="20240301"),
    ]
    assert [s.Status for s in store(server, *datasets)] == [0] * 6
    yield server, Corpus(s1, s2, s3, s4, a, b, (datasets[0].SOPInstanceUID, datasets[1].SOPInstanceUID))
    running.close()


def find(
    server: RunningServer, identifier: Dataset, model: str = STUDY_FIND
) -> tuple[list[Dataset], Dataset]:
    """The pending identifiers and the final status of one C-FIND."""
    with association(server, [model]) as assoc:
        responses = list(assoc.send_c_find(identifier, model))
    *pending, (final, _none) = responses
    assert all(status.Status in (0xFF00, 0xFF01) for status, _i in pending)
    return [identifier for _s, identifier in pending if identifier is not None], final


def values(matches: list[Dataset], keyword: str) -> list[Any]:
    return [m.get(keyword) for m in matches]


# ----------------------------------------------------------------------------- STUDY level
@pytest.mark.parametrize("model", [STUDY_FIND, PATIENT_FIND])
def test_study_level_wildcard(corpus_server: tuple[RunningServer, Corpus], model: str) -> None:
    server, corpus = corpus_server
    identifier = query(
        QueryRetrieveLevel="STUDY",
        PatientName="Doe*",
        StudyInstanceUID=None,
        StudyDate=None,
        ModalitiesInStudy=None,
        NumberOfStudyRelatedInstances=None,
        NumberOfStudyRelatedSeries=None,
        ReferringPhysicianName=None,
    )
    matches, final = find(server, identifier, model)
    assert final.Status == 0x0000
    assert values(matches, "StudyInstanceUID") == [corpus.s1, corpus.s2]  # newest first
    assert values(matches, "StudyDate") == ["20240105", "20231120"]
    assert values(matches, "ModalitiesInStudy") == ["CT", "MR"]
    assert values(matches, "NumberOfStudyRelatedInstances") == [3, 1]
    assert values(matches, "NumberOfStudyRelatedSeries") == [2, 1]
    assert all(m.QueryRetrieveLevel == "STUDY" for m in matches)
    assert all(str(m.PatientName) == "Doe^John" for m in matches)
    # A return key without a value is answered zero length (PS3.4 §C.4.1.1.3.2).
    assert all("ReferringPhysicianName" in m and not m.ReferringPhysicianName for m in matches)
    if model == PATIENT_FIND:
        assert values(matches, "PatientID") == ["P-001", "P-001"]  # the unique key of the level above


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        ("20240101-20240229", ["s3", "s1"]),
        ("-20231231", ["s2"]),
        ("20240301-", ["s4"]),
        ("20240105", ["s1"]),
        ("20240106-20240219", []),
    ],
)
def test_study_date_range(
    corpus_server: tuple[RunningServer, Corpus], dates: str, expected: list[str]
) -> None:
    server, corpus = corpus_server
    matches, final = find(server, query(QueryRetrieveLevel="STUDY", StudyDate=dates, StudyInstanceUID=None))
    assert final.Status == 0x0000
    assert values(matches, "StudyInstanceUID") == [getattr(corpus, name) for name in expected]


def test_non_ascii_names_in_utf8(corpus_server: tuple[RunningServer, Corpus]) -> None:
    server, corpus = corpus_server
    identifier = query(QueryRetrieveLevel="STUDY", PatientName="Müller*", StudyInstanceUID=None)
    identifier.SpecificCharacterSet = "ISO_IR 192"
    [match], final = find(server, identifier)
    assert final.Status == 0x0000
    assert (match.StudyInstanceUID, str(match.PatientName)) == (corpus.s4, "Müller^Jörg")
    assert match.SpecificCharacterSet == "ISO_IR 192"


def test_key_of_a_lower_level_is_warned_about(corpus_server: tuple[RunningServer, Corpus]) -> None:
    server, _corpus = corpus_server
    with association(server, [STUDY_FIND]) as assoc:
        identifier = query(QueryRetrieveLevel="STUDY", Modality="MR", StudyInstanceUID=None)
        statuses = [status.Status for status, _i in assoc.send_c_find(identifier, STUDY_FIND)]
    # Modality is a SERIES key: not matched at the STUDY level, which pending status 0xFF01 says.
    assert statuses == [0xFF01] * 4 + [0x0000]


# ----------------------------------------------------------------------------- SERIES, IMAGE
@pytest.mark.parametrize("model", [STUDY_FIND, PATIENT_FIND])
def test_series_level(corpus_server: tuple[RunningServer, Corpus], model: str) -> None:
    server, corpus = corpus_server
    identifier = query(
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=corpus.s1,
        Modality="C?",
        SeriesInstanceUID=None,
        SeriesNumber=None,
        NumberOfSeriesRelatedInstances=None,
    )
    matches, final = find(server, identifier, model)
    assert final.Status == 0x0000
    assert values(matches, "SeriesInstanceUID") == [corpus.a, corpus.b]
    assert values(matches, "SeriesNumber") == [1, 2]
    assert values(matches, "NumberOfSeriesRelatedInstances") == [2, 1]
    assert values(matches, "StudyInstanceUID") == [corpus.s1, corpus.s1]
    assert all(m.QueryRetrieveLevel == "SERIES" for m in matches)


@pytest.mark.parametrize("model", [STUDY_FIND, PATIENT_FIND])
def test_image_level(corpus_server: tuple[RunningServer, Corpus], model: str) -> None:
    server, corpus = corpus_server
    identifier = query(
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=corpus.s1,
        SeriesInstanceUID=corpus.a,
        SOPInstanceUID=None,
        SOPClassUID=None,
        InstanceNumber=None,
        ImageType=None,  # not indexed: answered from the stored attributes
        Rows=None,
    )
    matches, final = find(server, identifier, model)
    assert final.Status == 0x0000
    assert tuple(values(matches, "SOPInstanceUID")) == corpus.a_instances
    assert values(matches, "InstanceNumber") == [1, 2]
    assert values(matches, "Rows") == [8, 8]
    assert all(list(m.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] for m in matches)
    assert all(m.QueryRetrieveLevel == "IMAGE" for m in matches)


def test_image_level_list_of_uids(corpus_server: tuple[RunningServer, Corpus]) -> None:
    server, corpus = corpus_server
    identifier = query(QueryRetrieveLevel="IMAGE", SOPInstanceUID=list(corpus.a_instances))
    matches, _final = find(server, identifier)
    assert sorted(values(matches, "SOPInstanceUID")) == sorted(corpus.a_instances)


# ----------------------------------------------------------------------------- PATIENT level
def test_patient_level(corpus_server: tuple[RunningServer, Corpus]) -> None:
    server, _corpus = corpus_server
    identifier = query(
        QueryRetrieveLevel="PATIENT",
        PatientID="P-00?",
        PatientName=None,
        PatientBirthDate=None,
        PatientSex=None,
        NumberOfPatientRelatedStudies=None,
        NumberOfPatientRelatedSeries=None,
        NumberOfPatientRelatedInstances=None,
        StudyDate=None,  # a STUDY key: answered empty at the PATIENT level
    )
    matches, final = find(server, identifier, PATIENT_FIND)
    assert final.Status == 0x0000
    by_id = {m.PatientID: m for m in matches}
    assert sorted(by_id) == ["P-001", "P-002", "P-003"]
    john = by_id["P-001"]
    assert (str(john.PatientName), john.PatientBirthDate, john.PatientSex) == ("Doe^John", "19700101", "M")
    counts = (john.NumberOfPatientRelatedStudies, john.NumberOfPatientRelatedSeries)
    assert (*counts, john.NumberOfPatientRelatedInstances) == (2, 3, 4)
    assert by_id["P-002"].NumberOfPatientRelatedStudies == 1
    assert all(m.QueryRetrieveLevel == "PATIENT" and not m.StudyDate for m in matches)
    [jane], _final = find(
        server, query(QueryRetrieveLevel="PATIENT", PatientName="roe^jane", PatientID=None), PATIENT_FIND
    )
    assert jane.PatientID == "P-002"  # person names match case-insensitively, as in QIDO-RS


# ----------------------------------------------------------------------------- bad identifiers
@pytest.mark.parametrize(
    ("model", "keys", "comment"),
    [
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "PATIENT", "PatientID": None},
            "'PATIENT' must be STUDY/SERIES/IMAGE",
        ),
        (STUDY_FIND, {"PatientName": "Doe*"}, "QueryRetrieveLevel is missing"),
        (PATIENT_FIND, {"QueryRetrieveLevel": "FOO"}, "'FOO' must be PATIENT/STUDY/SERIES/IMAGE"),
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-01-01"},
            "StudyDate '2024-01-01' is not a DA",
        ),
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"},
            "wildcards are not allowed",
        ),
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "SERIES", "SeriesNumber": b"one "},
            "SeriesNumber 'one' must be an",
        ),
    ],
)
def test_bad_identifier(
    corpus_server: tuple[RunningServer, Corpus], model: str, keys: dict[str, object], comment: str
) -> None:
    server, _corpus = corpus_server
    matches, final = find(server, query(**keys), model)
    assert matches == []
    assert final.Status == 0xA900
    assert comment in final.ErrorComment and len(final.ErrorComment) <= 64, final.ErrorComment


def test_undecodable_key_is_named() -> None:
    """A value that cannot be decoded in its VR (pydicom decodes lazily) names the key and value."""
    identifier = query(QueryRetrieveLevel="IMAGE", Rows=b"abc")  # 3 bytes cannot be a US
    with pytest.raises(IdentifierMismatch, match=r"Rows 'abc' is not a valid US value"):
        parse_find(identifier, STUDY_FIND)


# ----------------------------------------------------------------------------- cancel
CANCELLING_SCU = """
import socket, sys
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

def no_delay(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

ae = AE(ae_title="CANCELSCU")
ae.add_requested_context(sys.argv[2])
assoc = ae.associate(
    "127.0.0.1", int(sys.argv[1]), ae_title="RADSTACK", evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)]
)
identifier = Dataset()
identifier.QueryRetrieveLevel, identifier.SOPInstanceUID = "IMAGE", ""
statuses = []
for status, _identifier in assoc.send_c_find(identifier, sys.argv[2], msg_id=7):
    statuses.append(status.Status)
    if len(statuses) == 1:  # the SCP is answering: cancel (pynetdicom drops an earlier cancel)
        assoc.send_c_cancel(7, query_model=sys.argv[2])
print(" ".join(str(s) for s in statuses))
assoc.release()
"""


def test_cancel(server: RunningServer) -> None:
    """A C-CANCEL ends the matching (status 0xFE00) with matches still unsent. The SCU runs in its
    own process (no shared interpreter lock) and cancels after the first of 40 matches."""
    study, series = generate_uid(), generate_uid()
    many = [synthetic_ct(study=study, series=series, rows=4, columns=4, seed=n) for n in range(40)]
    assert {s.Status for s in store(server, *many)} == {0}
    result = subprocess.run(
        [sys.executable, "-c", CANCELLING_SCU, str(server.dicom_port), STUDY_FIND],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    statuses = [int(s) for s in result.stdout.split()]
    assert statuses[-1] == 0xFE00  # Matching terminated due to Cancel request
    assert len(statuses) - 1 < len(many)  # fewer pending responses than matches


# ----------------------------------------------------------------------------- dcmtk findscu
def findscu(server: RunningServer, directory: Path, *args: str) -> list[Dataset]:
    directory.mkdir()
    result = run_tool(
        "findscu", "-aec", "RADSTACK", "-X", "-od", str(directory), *args, "127.0.0.1", str(server.dicom_port)
    )
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(path) for path in sorted(directory.glob("rsp*.dcm"))]


def test_findscu(corpus_server: tuple[RunningServer, Corpus], tmp_path: Path) -> None:
    server, corpus = corpus_server
    studies = findscu(
        server,
        tmp_path / "studies",
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=Doe*",
        "-k",
        "StudyDate=20240101-",
        "-k",
        "StudyInstanceUID",
        "-k",
        "NumberOfStudyRelatedInstances",
    )
    assert [(m.StudyInstanceUID, m.NumberOfStudyRelatedInstances) for m in studies] == [(corpus.s1, 3)]
    patients = findscu(
        server,
        tmp_path / "patients",
        "-P",
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=P-00*",
        "-k",
        "PatientName",
    )
    assert sorted(str(m.PatientName) for m in patients) == ["Doe^John", "Müller^Jörg", "Roe^Jane"]


# ----------------------------------------------------------------------------- both backends
def test_find_on_each_backend(backend_server: RunningServer) -> None:
    study = generate_uid()
    datasets = [
        _instance(study, generate_uid(), n, name="Backend^Test", pid="B-1", date="20220615") for n in (1, 2)
    ]
    other = _instance(generate_uid(), generate_uid(), 1, name="Other^Test", pid="B-2", date="20200101")
    assert [s.Status for s in store(backend_server, *datasets, other)] == [0, 0, 0]
    identifier = query(
        QueryRetrieveLevel="STUDY", PatientName="back*", StudyDate="20220101-20221231", StudyInstanceUID=None
    )
    [match], final = find(backend_server, identifier)
    assert (final.Status, match.StudyInstanceUID) == (0x0000, study)
    images, _final = find(
        backend_server, query(QueryRetrieveLevel="IMAGE", StudyInstanceUID=study, SOPInstanceUID=None)
    )
    assert sorted(values(images, "SOPInstanceUID")) == sorted(ds.SOPInstanceUID for ds in datasets)
    patients, _final = find(
        backend_server, query(QueryRetrieveLevel="PATIENT", PatientID="B-*"), PATIENT_FIND
    )
    assert sorted(values(patients, "PatientID")) == ["B-1", "B-2"]
