"""C-GET and C-MOVE: every retrieve level, transfer syntaxes the receiver accepted, sub-operation
counts and failures, dcmtk's storescp and movescu as real peers, PostgreSQL (PS3.4 §C.4.2, §C.4.3)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import evt

from radstack.config import PeerSetting, Settings
from tests import authed
from tests.conftest import RunningServer, start_server
from tests.dimse.helpers import (
    CT_STORAGE,
    EXPLICIT_LE,
    HTJ2K_RPCL,
    IMPLICIT_LE,
    MR_STORAGE,
    PATIENT_MOVE,
    STUDY_GET,
    STUDY_MOVE,
    StorageSCP,
    association,
    pixels,
    query,
    run_tool,
    store,
    storescp,
)
from tests.helpers import synthetic_ct


@dataclass
class Study:
    """A CT series of two instances and an MR series of one, as sent."""

    uid: str
    ct_series: str
    instances: dict[str, Dataset]  # by SOP Instance UID

    @property
    def ct(self) -> list[str]:
        return [uid for uid, ds in self.instances.items() if ds.SOPClassUID == CT_STORAGE]

    @property
    def mr(self) -> str:
        return next(uid for uid, ds in self.instances.items() if ds.SOPClassUID == MR_STORAGE)


def put_study(server: RunningServer, patient_id: str = "RET-1") -> Study:
    study, ct_series = generate_uid(), generate_uid()
    datasets = [
        synthetic_ct(study=study, series=ct_series, patient_id=patient_id, rows=24, columns=20, seed=n)
        for n in (1, 2)
    ]
    mr = synthetic_ct(study=study, patient_id=patient_id, rows=16, columns=16, seed=3)
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    mr.Modality = "MR"
    datasets.append(mr)
    assert [s.Status for s in store(server, *datasets)] == [0, 0, 0]
    return Study(study, ct_series, {ds.SOPInstanceUID: ds for ds in datasets})


@pytest.fixture
def study(server: RunningServer) -> Study:
    return put_study(server)


def same_pixels(received: Dataset, study: Study) -> bool:
    return bool(np.array_equal(pixels(received), pixels(study.instances[received.SOPInstanceUID])))


@dataclass
class Outcome:
    statuses: list[Dataset]
    identifiers: list[Dataset | None]

    @property
    def final(self) -> Dataset:
        return self.statuses[-1]

    def counts(self) -> tuple[int, int, int]:
        """(completed, failed, warning) sub-operations of the final response."""
        final = self.final
        return (
            final.get("NumberOfCompletedSuboperations", 0),
            final.get("NumberOfFailedSuboperations", 0),
            final.get("NumberOfWarningSuboperations", 0),
        )

    @property
    def failed_uids(self) -> list[str]:
        last = self.identifiers[-1]
        if last is None or "FailedSOPInstanceUIDList" not in last:
            return []
        value = last.FailedSOPInstanceUIDList
        return [value] if isinstance(value, str) else list(value)


# ----------------------------------------------------------------------------- C-GET
def c_get(
    server: RunningServer,
    identifier: Dataset,
    contexts: list[tuple[str, list[str]]],
    *,
    refuse: frozenset[str] = frozenset(),
) -> tuple[Outcome, list[Dataset]]:
    """C-GET with pynetdicom, taking the SCP role for the given storage contexts."""
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if ds.SOPInstanceUID in refuse:
            return 0xA700
        received.append(ds)
        return 0x0000

    sop_classes = list(dict.fromkeys(uid for uid, _syntaxes in contexts))
    with association(
        server,
        [STUDY_GET, *contexts],
        roles=sop_classes,
        handlers=[(evt.EVT_C_STORE, on_store)],
    ) as assoc:
        responses = list(assoc.send_c_get(identifier, STUDY_GET))
    return Outcome([s for s, _i in responses], [i for _s, i in responses]), received


LITTLE_ENDIAN = [EXPLICIT_LE, IMPLICIT_LE]


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE", "IMAGES"])
def test_get_each_level(server: RunningServer, study: Study, level: str) -> None:
    identifier, expected = {
        "STUDY": (query(QueryRetrieveLevel="STUDY", StudyInstanceUID=study.uid), set(study.instances)),
        "SERIES": (
            query(QueryRetrieveLevel="SERIES", StudyInstanceUID=study.uid, SeriesInstanceUID=study.ct_series),
            set(study.ct),
        ),
        "IMAGE": (query(QueryRetrieveLevel="IMAGE", SOPInstanceUID=study.mr), {study.mr}),
        "IMAGES": (query(QueryRetrieveLevel="IMAGE", SOPInstanceUID=study.ct), set(study.ct)),  # a UID list
    }[level]
    outcome, received = c_get(server, identifier, [(CT_STORAGE, LITTLE_ENDIAN), (MR_STORAGE, LITTLE_ENDIAN)])
    assert outcome.final.Status == 0x0000
    assert outcome.counts() == (len(expected), 0, 0)
    assert {ds.SOPInstanceUID for ds in received} == expected
    # Stored as HTJ2K, sent as what the requestor accepted: explicit VR little endian.
    assert {ds.file_meta.TransferSyntaxUID for ds in received} == {EXPLICIT_LE}
    assert all(same_pixels(ds, study) for ds in received)
    remaining = [s.get("NumberOfRemainingSuboperations") for s in outcome.statuses[:-1]]
    assert remaining == list(range(len(expected) - 1, -1, -1))  # one pending response per sub-operation


def test_getscu(server: RunningServer, study: Study, tmp_path: Path) -> None:
    """dcmtk's getscu (role selection for its storage contexts) receives the CT series."""
    received = tmp_path / "received"
    received.mkdir()
    result = run_tool(
        "getscu",
        "-S",
        "-aec",
        "RADSTACK",
        "-od",
        str(received),
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"SeriesInstanceUID={study.ct_series}",
        "127.0.0.1",
        str(server.dicom_port),
    )
    assert result.returncode == 0, result.stderr
    files = [pydicom.dcmread(path) for path in received.iterdir()]
    assert sorted(ds.SOPInstanceUID for ds in files) == sorted(study.ct)
    assert all(same_pixels(ds, study) for ds in files)


def test_get_in_the_stored_syntax(server: RunningServer, study: Study) -> None:
    """A requestor that accepts HTJ2K gets the stored frames as they are."""
    outcome, received = c_get(
        server,
        query(QueryRetrieveLevel="SERIES", SeriesInstanceUID=study.ct_series),
        [(CT_STORAGE, [HTJ2K_RPCL]), (CT_STORAGE, [EXPLICIT_LE])],
    )
    assert outcome.final.Status == 0x0000
    assert {ds.file_meta.TransferSyntaxUID for ds in received} == {HTJ2K_RPCL}
    assert all(same_pixels(ds, study) for ds in received)


def test_get_sub_operation_failures(server: RunningServer, study: Study) -> None:
    """One instance refused by the requestor, one of a SOP class it has no context for: 0xB000
    with both in the Failed SOP Instance UID List, the third completed."""
    refused = study.ct[1]
    outcome, received = c_get(
        server,
        query(QueryRetrieveLevel="STUDY", StudyInstanceUID=study.uid),
        [(CT_STORAGE, LITTLE_ENDIAN)],
        refuse=frozenset({refused}),
    )
    assert outcome.final.Status == 0xB000
    assert outcome.counts() == (1, 2, 0)
    assert sorted(outcome.failed_uids) == sorted([refused, study.mr])
    assert [ds.SOPInstanceUID for ds in received] == [study.ct[0]]


@pytest.mark.parametrize(
    ("keys", "comment"),
    [
        ({"QueryRetrieveLevel": "STUDY", "PatientID": "RET-1"}, "StudyInstanceUID is required to retrieve"),
        ({"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2.3*"}, "no wildcards"),
        ({"StudyInstanceUID": "1.2.3"}, "QueryRetrieveLevel is missing"),
    ],
)
def test_get_bad_identifier(server: RunningServer, keys: dict[str, object], comment: str) -> None:
    outcome, received = c_get(server, query(**keys), [(CT_STORAGE, LITTLE_ENDIAN)])
    assert outcome.final.Status == 0xA900
    assert comment in outcome.final.ErrorComment
    assert received == []


def test_get_nothing_matches(server: RunningServer) -> None:
    outcome, received = c_get(
        server,
        query(QueryRetrieveLevel="STUDY", StudyInstanceUID=generate_uid()),
        [(CT_STORAGE, LITTLE_ENDIAN)],
    )
    assert (outcome.final.Status, outcome.counts(), received) == (0x0000, (0, 0, 0), [])


# ----------------------------------------------------------------------------- C-MOVE
def c_move(server: RunningServer, identifier: Dataset, destination: str, model: str = STUDY_MOVE) -> Outcome:
    with association(server, [model]) as assoc:
        responses = list(assoc.send_c_move(identifier, destination, model))
    return Outcome([s for s, _i in responses], [i for _s, i in responses])


def register(server: RunningServer, ae_title: str, port: int) -> None:
    response = authed.put(f"{server.url}/api/v1/peers/{ae_title}", json={"host": "127.0.0.1", "port": port})
    assert response.status_code in (200, 201), response.text


def test_move_to_storescp(server: RunningServer, study: Study, tmp_path: Path) -> None:
    """dcmtk's storescp (no HTJ2K in dcmtk 3.6.7) receives explicit VR little endian files whose
    pixels equal the originals."""
    received = tmp_path / "received"
    with storescp(received) as port:
        register(server, "STORESCP", port)
        outcome = c_move(server, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=study.uid), "STORESCP")
    assert outcome.final.Status == 0x0000
    assert outcome.counts() == (3, 0, 0)
    files = [pydicom.dcmread(path) for path in received.iterdir()]
    assert {ds.SOPInstanceUID for ds in files} == set(study.instances)
    assert {ds.file_meta.TransferSyntaxUID for ds in files} == {EXPLICIT_LE}
    assert all(same_pixels(ds, study) for ds in files)


def test_movescu(server: RunningServer, study: Study, tmp_path: Path) -> None:
    received = tmp_path / "received"
    with storescp(received, "DCMTKDEST") as port:
        register(server, "DCMTKDEST", port)
        result = run_tool(
            "movescu",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            "RADSTACK",
            "-aem",
            "DCMTKDEST",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={study.uid}",
            "-k",
            f"SeriesInstanceUID={study.ct_series}",
            "127.0.0.1",
            str(server.dicom_port),
        )
        assert result.returncode == 0, result.stderr
    files = [pydicom.dcmread(path) for path in received.iterdir()]
    assert sorted(ds.SOPInstanceUID for ds in files) == sorted(study.ct)
    assert all(same_pixels(ds, study) for ds in files)


def test_move_unknown_destination(server: RunningServer, study: Study) -> None:
    outcome = c_move(server, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=study.uid), "NOSUCHAE")
    assert outcome.final.Status == 0xA801  # Refused: Move Destination unknown


@pytest.fixture
def destination() -> Iterator[StorageSCP]:
    scp = StorageSCP("PYSCP")
    yield scp
    scp.close()


@pytest.fixture
def configured(settings: Settings, destination: StorageSCP) -> Iterator[RunningServer]:
    """A server whose peers come from configuration (``RADSTACK_PEERS``)."""
    peer = PeerSetting(ae_title=destination.ae_title, host="127.0.0.1", port=destination.port)
    yield from start_server(settings.model_copy(update={"peers": [peer]}))


def test_move_sub_operation_failure(configured: RunningServer, destination: StorageSCP) -> None:
    study = put_study(configured)
    destination.refuse = {study.mr}
    outcome = c_move(
        configured, query(QueryRetrieveLevel="PATIENT", PatientID="RET-1"), "PYSCP", PATIENT_MOVE
    )
    assert outcome.final.Status == 0xB000
    assert outcome.counts() == (2, 1, 0)
    assert outcome.failed_uids == [study.mr]
    assert sorted(ds.SOPInstanceUID for ds in destination.received) == sorted(study.ct)


def test_move_bad_identifier(configured: RunningServer, destination: StorageSCP) -> None:
    outcome = c_move(configured, query(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3"), "PYSCP")
    assert outcome.final.Status == 0xA900
    assert "SeriesInstanceUID is required" in outcome.final.ErrorComment
    assert destination.received == []


def test_move_on_each_backend(backend_server: RunningServer) -> None:
    destination = StorageSCP("PGDEST", syntaxes=[HTJ2K_RPCL, EXPLICIT_LE])
    try:
        study = put_study(backend_server, patient_id="RET-PG")
        register(backend_server, "PGDEST", destination.port)
        identifier = query(
            QueryRetrieveLevel="SERIES", StudyInstanceUID=study.uid, SeriesInstanceUID=study.ct_series
        )
        outcome = c_move(backend_server, identifier, "PGDEST")
    finally:
        destination.close()
    assert outcome.final.Status == 0x0000
    assert outcome.counts() == (2, 0, 0)
    # A receiver that takes HTJ2K gets the stored frames; pixels are the same.
    assert {ds.file_meta.TransferSyntaxUID for ds in destination.received} == {HTJ2K_RPCL}
    assert sorted(ds.SOPInstanceUID for ds in destination.received) == sorted(study.ct)
    assert all(
        np.array_equal(pixels(ds), pixels(study.instances[ds.SOPInstanceUID])) for ds in destination.received
    )
