"""A de-identified role (data-scientist) never sees who the patient is: every answer of QIDO-RS,
WADO-RS metadata, WADO-RS instances, rendered images, C-FIND and C-GET is searched for the original
patient name, ID, birth date and UIDs. It still navigates with the pseudonymous UIDs it is given,
and the pixels are the stored ones."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import evt

from tests.conftest import RunningServer, server_settings, start_server
from tests.dimse.helpers import (
    EXPLICIT_LE,
    PATIENT_FIND,
    STUDY_FIND,
    STUDY_GET,
    association,
    query,
)
from tests.helpers import DICOM_MULTIPART, dicom_body, response_parts, synthetic_ct

NAME, PATIENT_ID, BIRTH = "Leakmann^Lisbeth", "PID-LEAK-7731", "19610203"


@dataclass
class Case:
    server: RunningServer
    datasets: list[Dataset]
    token: str
    secrets: list[str]

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        response = httpx.get(f"{self.server.url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 200, (path, response.text)
        return response

    def assert_clean(self, what: str, data: bytes | str) -> None:
        blob = data.encode() if isinstance(data, str) else data
        for secret in self.secrets:
            for form in {secret, secret.upper(), secret.replace("^", " ")}:
                assert form.encode() not in blob, f"{what} shows {secret!r}"


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    settings = server_settings(
        tmp_path_factory.mktemp("leak") / "data",
        no_workers=True,
    )
    datasets = []
    study = "1.2.826.0.1.3680043.8.498.77310"
    for n in range(2):
        ds = synthetic_ct(study=study, series=f"{study}.1", seed=n, patient_name=NAME, patient_id=PATIENT_ID)
        ds.PatientBirthDate = BIRTH
        ds.InstanceNumber = n + 1
        ds.ReferringPhysicianName = "Referrer^Rolf"
        ds.InstitutionName = "St. Leak Hospital"
        datasets.append(ds)
    real = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    datasets.append(real)
    for server in start_server(settings):
        stored = httpx.post(
            f"{server.dicomweb}/studies",
            content=dicom_body(*datasets),
            headers={**server.auth, "Content-Type": DICOM_MULTIPART},
            timeout=60,
        )
        assert stored.status_code == 200, stored.text
        token = server.token_for("data-scientist", ae_title="RESEARCH")
        secrets = [NAME, PATIENT_ID, BIRTH, "Referrer^Rolf", "St. Leak Hospital", study]
        for ds in datasets:
            secrets += [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
            secrets += [str(ds.PatientName), str(ds.PatientID)]
            if ds.get("PatientBirthDate"):
                secrets.append(str(ds.PatientBirthDate))
        yield Case(server, datasets, token, sorted(set(s for s in secrets if s)))


def test_dicomweb_answers_carry_no_identity(case: Case) -> None:
    studies = case.get("/dicomweb/studies", params={"includefield": "all"}).json()
    case.assert_clean("QIDO studies", json.dumps(studies))
    assert len(studies) == 2
    for match in studies:
        assert match["00100010"]["Value"][0]["Alphabetic"].startswith("ANON^")
        study = match["0020000D"]["Value"][0]
        assert study.startswith("2.25.")
        # Navigate with the pseudonyms, as a viewer would.
        series = case.get(f"/dicomweb/studies/{study}/series", params={"includefield": "all"}).json()
        case.assert_clean("QIDO series", json.dumps(series))
        instances = case.get(f"/dicomweb/studies/{study}/instances", params={"includefield": "all"}).json()
        case.assert_clean("QIDO instances", json.dumps(instances))
        metadata = case.get(f"/dicomweb/studies/{study}/metadata")
        case.assert_clean("study metadata", metadata.content)
        for item in instances:
            se, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
            path = f"/dicomweb/studies/{study}/series/{se}/instances/{sop}"
            case.assert_clean("instance metadata", case.get(f"{path}/metadata").content)
            case.assert_clean(
                "series metadata", case.get(f"/dicomweb/studies/{study}/series/{se}/metadata").content
            )
            retrieved = case.get(path, headers={"Accept": 'multipart/related; type="application/dicom"'})
            [(_type, part10)] = response_parts(retrieved)
            case.assert_clean("WADO instance", part10)
            shaped = pydicom.dcmread(io.BytesIO(part10))
            assert shaped.PatientIdentityRemoved == "YES"
            assert (
                str(shaped.SOPInstanceUID) == sop and str(shaped.file_meta.MediaStorageSOPInstanceUID) == sop
            )
            original = next(
                d
                for d in case.datasets
                if d.InstanceNumber == shaped.InstanceNumber and d.Rows == shaped.Rows
            )
            assert np.array_equal(shaped.pixel_array, original.pixel_array)
            case.assert_clean(
                "rendered", case.get(f"{path}/rendered", headers={"Accept": "image/png"}).content
            )
            case.assert_clean("versions", case.get(f"/api/v1/studies/{study}/versions").content)
    # The same patient's studies: one pseudonym, the same shifted dates.
    assert len({m["00100020"]["Value"][0] for m in studies}) == 2  # two patients, two pseudonyms


def test_identifying_matching_keys_are_refused(case: Case) -> None:
    for key, value in (("PatientName", "Leak*"), ("PatientID", PATIENT_ID), ("PatientBirthDate", BIRTH)):
        response = httpx.get(
            f"{case.server.dicomweb}/studies",
            params={key: value},
            headers={"Authorization": f"Bearer {case.token}"},
        )
        assert response.status_code == 400
        assert "de-identified view cannot match" in response.json()["detail"]
    real_study = str(case.datasets[0].StudyInstanceUID)
    hidden = httpx.get(
        f"{case.server.dicomweb}/studies/{real_study}/metadata",
        headers={"Authorization": f"Bearer {case.token}"},
    )
    assert hidden.status_code == 404  # the real UID names nothing in this view


def test_dimse_answers_carry_no_identity(case: Case) -> None:
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        out = io.BytesIO()
        event.dataset.file_meta = event.file_meta
        event.dataset.save_as(out, enforce_file_format=True)
        received.append(out.getvalue())
        return 0x0000

    sop_class = str(case.datasets[0].SOPClassUID)
    with association(
        case.server,
        [STUDY_FIND, PATIENT_FIND, STUDY_GET, (sop_class, [EXPLICIT_LE])],
        calling="RESEARCH",
        roles=[sop_class],
        handlers=[(evt.EVT_C_STORE, on_store)],
    ) as assoc:
        identifiers = []
        for level, model in (("PATIENT", PATIENT_FIND), ("STUDY", STUDY_FIND)):
            keys = query(
                QueryRetrieveLevel=level,
                PatientName="",
                PatientID="",
                PatientBirthDate="",
                StudyInstanceUID="",
            )
            if level == "PATIENT":
                del keys.StudyInstanceUID
            for status, identifier in assoc.send_c_find(keys, model):
                assert status.Status in (0x0000, 0xFF00), hex(status.Status)
                if identifier is not None:
                    identifiers.append(identifier)
                    out = io.BytesIO()
                    identifier.save_as(out, implicit_vr=True, little_endian=True)
                    case.assert_clean(f"C-FIND {level}", out.getvalue())
        refused = list(assoc.send_c_find(query(QueryRetrieveLevel="STUDY", PatientName="Leak*"), STUDY_FIND))
        assert refused[-1][0].Status == 0xA900
        pseudo_study = next(str(i.StudyInstanceUID) for i in identifiers if "StudyInstanceUID" in i)
        got = list(
            assoc.send_c_get(query(QueryRetrieveLevel="STUDY", StudyInstanceUID=pseudo_study), STUDY_GET)
        )
        assert got[-1][0].Status == 0x0000
    assert received
    for data in received:
        case.assert_clean("C-GET", data)


def test_hidden_attributes_of_a_configured_role(tmp_path: Path) -> None:
    roles = tmp_path / "roles.json"
    roles.write_text(
        json.dumps(
            {"front-desk": {"actions": ["read-metadata"], "hidden": ["PatientBirthDate", "PatientSex"]}}
        )
    )
    settings = server_settings(
        tmp_path / "data",
        dicom_port=0,
        no_workers=True,
        roles_file=roles,
    )
    ds = synthetic_ct(patient_name=NAME, patient_id=PATIENT_ID)
    ds.PatientBirthDate, ds.PatientSex = BIRTH, "F"
    for server in start_server(settings):
        assert (
            httpx.post(
                f"{server.dicomweb}/studies",
                content=dicom_body(ds),
                headers={**server.auth, "Content-Type": DICOM_MULTIPART},
            ).status_code
            == 200
        )
        headers = {"Authorization": f"Bearer {server.token_for('front-desk')}"}
        [match] = httpx.get(
            f"{server.dicomweb}/studies", params={"includefield": "all"}, headers=headers
        ).json()
        assert "00100030" not in match and "00100040" not in match
        assert match["00100010"]["Value"][0]["Alphabetic"] == NAME  # a full view otherwise
        metadata = httpx.get(
            f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/metadata", headers=headers
        ).json()
        assert all("00100030" not in item for item in metadata) and BIRTH not in json.dumps(metadata)
        pixels = httpx.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/rendered", headers=headers)
        assert pixels.status_code == 403  # no read-pixels in this role
