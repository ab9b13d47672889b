"""Blinding (``labeling/blinding.py``) through the real server: a reader of a blinded project sees only
their own label objects and no AI result, over QIDO-RS, WADO-RS (retrieve, metadata, frames), C-FIND,
C-GET and the pages; a reviewer, the owner and an administrator see every one; ``show_ai`` shows the AI
result to readers; an unblinded project shows readers each other's objects; an outsider sees none."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from radstack.ai.findings import priority_of
from radstack.ai.results import fracture_report
from radstack.errors import Conflict, NotFound
from radstack.labeling.blinding import Blinding
from radstack.labeling.models import LabelObjectRow
from radstack.security.policy import Principal
from radstack.store.worklist import HIGH_PRIORITY
from tests import authed
from tests.ai.results import DEFINITE, SUSPICIOUS, radiograph
from tests.conftest import RunningServer
from tests.dimse.helpers import EXPLICIT_LE, IMPLICIT_LE, STUDY_FIND, STUDY_GET, association, query
from tests.helpers import dicom_body, response_parts, stow
from tests.labeling.test_projects import SCHEMA

DX = "1.2.840.10008.5.1.4.1.1.1.1"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
OWNER = Principal("dana", "data-scientist", "token")
#: The readers (annotators; rita also a DICOM service account), the reviewer and an outsider.
PEOPLE = {"rita": "annotator", "raj": "annotator", "reva": "radiologist", "otto": "annotator"}


@dataclass
class Study:
    """One radiograph study: the image, each reader's label object (raj's SR and an image he saved
    into the image's series), and the AI's SR."""

    image: Dataset
    rita_sr: Dataset
    raj_sr: Dataset
    raj_image: Dataset
    ai_sr: Dataset
    #: The AI result's priority (0–100) of the study.
    priority: int = 0

    @property
    def uid(self) -> str:
        return str(self.image.StudyInstanceUID)

    def sops(self, *names: str) -> set[str]:
        return {str(getattr(self, name).SOPInstanceUID) for name in names}


def _report(image: Dataset, series_number: int) -> Dataset:
    return fracture_report(
        [image],
        [],
        model="fracture",
        version=1,
        probability=0.1,
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        series_number=series_number,
    )


def _stored(server: RunningServer, seed: int) -> Study:
    image = radiograph(seed)
    raj_image = radiograph(seed, 1)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName", "PatientBirthDate"):
        setattr(raj_image, keyword, image.get(keyword))
    study = Study(image, _report(image, 7001), _report(image, 7002), raj_image, _report(image, 9001))
    # Stored by an administrator (as an ingest account would), then recorded as the readers' objects.
    response = stow(server, dicom_body(image, raj_image, study.rita_sr, study.raj_sr, study.ai_sr))
    assert response.status_code == 200, response.text
    score = 0.8
    priority, level = priority_of(score, SUSPICIOUS, DEFINITE)
    study.priority = priority
    server.platform.ai_results.record(
        study_uid=study.uid,
        model="fracture",
        model_version=1,
        probability=score,
        priority=priority,
        level=level,
        findings=[],
        input_key=generate_uid()[-40:],
        sr_series_uid=str(study.ai_sr.SeriesInstanceUID),
        sr_sop_uid=str(study.ai_sr.SOPInstanceUID),
        trigger="rule:test",
    )
    return study


def _project(server: RunningServer, study: Study, name: str, **options: Any) -> None:
    platform = server.platform
    project = platform.labeling.create(
        OWNER,
        name,
        schema=SCHEMA,
        cohort=[study.uid],
        readers=["rita", "raj"],
        reviewers=["reva"],
        readers_per_item=2,
        **options,
    )
    for reader, ds in (("rita", study.rita_sr), ("raj", study.raj_sr), ("raj", study.raj_image)):
        assert platform.blinding.record_object(
            sop_uid=str(ds.SOPInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            study_uid=study.uid,
            project_id=project.id,
            reader=reader,
        )


@pytest.fixture
def tokens(server: RunningServer) -> dict[str, str]:
    accounts = server.platform.accounts
    for name, role in PEOPLE.items():
        accounts.create_user(name, role, ae_title="RITA" if name == "rita" else None)
    return {name: accounts.create_token(name) for name in PEOPLE} | {"admin": server.token}


@pytest.fixture
def study(server: RunningServer) -> Study:
    return _stored(server, 11)


class Client:
    """DICOMweb calls to the server as one person."""

    def __init__(self, server: RunningServer, token: str) -> None:
        self.root = server.dicomweb
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, accept: str = "application/dicom+json", **params: str) -> httpx.Response:
        return authed.get(
            self.root + path, params=params, headers={**self.headers, "Accept": accept}, timeout=30
        )

    def json(self, path: str, **params: str) -> list[dict[str, Any]]:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    def sops(self, path: str, **params: str) -> set[str]:
        return {m["00080018"]["Value"][0] for m in self.json(path, **params)}

    def series(self, study: Study) -> dict[str, int]:
        """The study's series (QIDO-RS) and NumberOfSeriesRelatedInstances of each."""
        matches = self.json(f"/studies/{study.uid}/series")
        return {m["0020000E"]["Value"][0]: m["00201209"]["Value"][0] for m in matches}

    def counts(self, study: Study) -> tuple[int, int, list[str]]:
        """NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances and ModalitiesInStudy."""
        [match] = self.json("/studies", StudyInstanceUID=study.uid)
        return (
            match["00201206"]["Value"][0],
            match["00201208"]["Value"][0],
            match["00080061"].get("Value", []),
        )

    def retrieved(self, path: str) -> set[str]:
        response = self.get(path, accept='multipart/related; type="application/dicom"')
        assert response.status_code == 200, response.text
        return {
            str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) for _t, data in response_parts(response)
        }


def _series(ds: Dataset) -> str:
    return str(ds.SeriesInstanceUID)


def _path(ds: Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


ALL = ("image", "raj_image", "rita_sr", "raj_sr", "ai_sr")


# ----------------------------------------------------------------------------- DICOMweb
def test_a_blinded_reader_sees_only_their_own_label_objects_and_no_ai(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "blind")
    rita = Client(server, tokens["rita"])
    mine = study.sops("image", "rita_sr")
    # QIDO-RS: instances of the study, of every study, of a series; the series with their counts.
    assert rita.sops(f"/studies/{study.uid}/instances") == mine
    assert study.sops(*ALL) & rita.sops("/instances") == mine
    assert rita.sops(f"/studies/{study.uid}/series/{_series(study.raj_sr)}/instances") == set()
    assert rita.sops(f"/studies/{study.uid}/series/{_series(study.image)}/instances") == study.sops("image")
    assert rita.series(study) == {_series(study.image): 1, _series(study.rita_sr): 1}
    everywhere = {m["0020000E"]["Value"][0] for m in rita.json("/series")}
    assert _series(study.raj_sr) not in everywhere and _series(study.ai_sr) not in everywhere
    assert rita.counts(study) == (2, 2, ["DX", "SR"])
    # WADO-RS: the study's metadata and retrieve leave the others out; naming them is a 404.
    metadata = rita.json(f"/studies/{study.uid}/metadata")
    assert {item["00080018"]["Value"][0] for item in metadata} == mine
    assert rita.json(f"/studies/{study.uid}/series/{_series(study.image)}/metadata")[0]["00080018"][
        "Value"
    ] == [str(study.image.SOPInstanceUID)]
    assert rita.retrieved(f"/studies/{study.uid}") == mine
    assert rita.retrieved(f"/studies/{study.uid}/series/{_series(study.image)}") == study.sops("image")
    for hidden in (study.raj_sr, study.ai_sr, study.raj_image):
        assert (
            rita.get(_path(hidden), accept='multipart/related; type="application/dicom"').status_code == 404
        )
        assert rita.get(_path(hidden) + "/metadata").status_code == 404
    for series in (study.raj_sr, study.ai_sr):
        assert rita.get(f"/studies/{study.uid}/series/{_series(series)}/metadata").status_code == 404
        assert (
            rita.get(
                f"/studies/{study.uid}/series/{_series(series)}",
                accept='multipart/related; type="application/dicom"',
            ).status_code
            == 404
        )
    # Pixels of an image that is raj's label object: neither frames nor rendered nor thumbnail.
    for tail in ("/frames/1", "/rendered", "/thumbnail"):
        assert rita.get(_path(study.raj_image) + tail, accept="*/*").status_code == 404
        assert rita.get(_path(study.image) + tail, accept="*/*").status_code == 200
    # The study's rendered image is one she may see.
    rendered = rita.get(f"/studies/{study.uid}/rendered", accept="image/png")
    assert rendered.content == rita.get(_path(study.image) + "/rendered", accept="image/png").content
    # Her own SR is hers to read.
    assert rita.retrieved(_path(study.rita_sr)) == study.sops("rita_sr")
    # The other reader is blinded the same way.
    raj = Client(server, tokens["raj"])
    assert raj.sops(f"/studies/{study.uid}/instances") == study.sops("image", "raj_image", "raj_sr")
    assert raj.series(study) == {_series(study.image): 2, _series(study.raj_sr): 1}
    assert raj.counts(study) == (2, 3, ["DX", "SR"])


def test_the_reviewer_owner_and_administrator_see_every_object(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "blind")
    for who in ("reva", "admin"):
        client = Client(server, tokens[who])
        assert client.sops(f"/studies/{study.uid}/instances") == study.sops(*ALL)
        assert {item["00080018"]["Value"][0] for item in client.json(f"/studies/{study.uid}/metadata")} == (
            study.sops(*ALL)
        )
        assert client.counts(study) == (4, 5, ["DX", "SR"])
        assert client.get(_path(study.raj_sr) + "/metadata").status_code == 200
    # The owner (a de-identified role: pseudonymous UIDs) sees as many.
    dana = server.platform.view(server.platform.policy.role(OWNER), OWNER)
    assert not dana.hidden(study.uid)


def test_an_outsider_sees_no_label_object_but_the_ai(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "blind")
    otto = Client(server, tokens["otto"])
    assert otto.sops(f"/studies/{study.uid}/instances") == study.sops("image", "ai_sr")
    assert otto.counts(study) == (2, 2, ["DX", "SR"])
    assert otto.get(_path(study.rita_sr) + "/metadata").status_code == 404


def test_show_ai_shows_readers_the_ai_result_but_not_each_other(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "with-ai", show_ai=True)
    rita = Client(server, tokens["rita"])
    assert rita.sops(f"/studies/{study.uid}/instances") == study.sops("image", "rita_sr", "ai_sr")
    assert rita.retrieved(_path(study.ai_sr)) == study.sops("ai_sr")
    assert rita.get(_path(study.raj_sr) + "/metadata").status_code == 404


def test_an_unblinded_project_lets_readers_see_each_other(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "open", blinded=False)
    rita = Client(server, tokens["rita"])
    assert rita.sops(f"/studies/{study.uid}/instances") == study.sops(*ALL)
    assert rita.retrieved(f"/studies/{study.uid}") == study.sops(*ALL)


def test_ai_is_shown_again_once_the_project_is_closed(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "blind")
    server.platform.labeling.close(OWNER, "blind")
    rita = Client(server, tokens["rita"])
    # Research labels stay in their project; the AI is hidden only while the reading goes on.
    assert rita.sops(f"/studies/{study.uid}/instances") == study.sops("image", "rita_sr", "ai_sr")


# ----------------------------------------------------------------------------- DIMSE
def test_c_find_and_c_get_from_a_readers_service_account_hide_the_others(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "blind")
    with association(server, [STUDY_FIND], calling="RITA") as assoc:
        responses = list(
            assoc.send_c_find(
                query(QueryRetrieveLevel="IMAGE", StudyInstanceUID=study.uid, SOPInstanceUID=""), STUDY_FIND
            )
        )
        series = list(
            assoc.send_c_find(
                query(
                    QueryRetrieveLevel="SERIES",
                    StudyInstanceUID=study.uid,
                    SeriesInstanceUID="",
                    NumberOfSeriesRelatedInstances="",
                ),
                STUDY_FIND,
            )
        )
        studies = list(
            assoc.send_c_find(
                query(
                    QueryRetrieveLevel="STUDY", StudyInstanceUID=study.uid, NumberOfStudyRelatedInstances=""
                ),
                STUDY_FIND,
            )
        )
    assert {str(i.SOPInstanceUID) for _s, i in responses if i} == study.sops("image", "rita_sr")
    assert {str(i.SeriesInstanceUID): int(i.NumberOfSeriesRelatedInstances) for s, i in series if i} == {
        _series(study.image): 1,
        _series(study.rita_sr): 1,
    }
    assert [int(i.NumberOfStudyRelatedInstances) for _s, i in studies if i] == [2]
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    syntaxes = [EXPLICIT_LE, IMPLICIT_LE]
    with association(
        server,
        [STUDY_GET, (DX, syntaxes), (COMPREHENSIVE_3D_SR, syntaxes)],
        calling="RITA",
        roles=[DX, COMPREHENSIVE_3D_SR],
        handlers=[(evt.EVT_C_STORE, on_store)],
    ) as assoc:
        statuses = [
            status
            for status, _i in assoc.send_c_get(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID=study.uid), STUDY_GET
            )
        ]
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 2
    assert set(received) == study.sops("image", "rita_sr")


# ----------------------------------------------------------------------------- pages and AI results
def test_the_worklist_and_the_ai_pages_keep_the_ai_and_the_others_from_a_blinded_reader(
    server: RunningServer, tokens: dict[str, str], study: Study
) -> None:
    _project(server, study, "blind")

    def page(who: str, path: str) -> str:
        response = authed.get(
            server.url + path, headers={"Authorization": f"Bearer {tokens[who]}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.text

    rita, reva = page("rita", "/"), page("reva", "/")
    scored = f"AI priority {study.priority}"
    assert '<td class="num">2 / 2</td>' in rita and scored not in rita and "no finding" not in rita
    assert '<td class="num">4 / 5</td>' in reva and scored in reva and "no finding" in reva
    # The "AI positive" filter (and the AI order) does not tell a blinded reader what the AI found.
    assert study.priority >= HIGH_PRIORITY
    assert study.uid not in page("rita", "/?ai_positive=1") and study.uid in page("reva", "/?ai_positive=1")
    api = f"/api/v1/studies/{study.uid}/ai-results"
    assert authed.get(server.url + api, headers={"Authorization": f"Bearer {tokens['rita']}"}).json() == []
    assert (
        len(authed.get(server.url + api, headers={"Authorization": f"Bearer {tokens['reva']}"}).json()) == 1
    )
    assert "fracture v1" not in page("rita", f"/studies/{study.uid}/ai")
    assert "fracture v1" in page("reva", f"/studies/{study.uid}/ai")


# ----------------------------------------------------------------------------- the records
def test_a_label_object_is_recorded_once(server: RunningServer, study: Study) -> None:
    _project(server, study, "blind")
    blinding: Blinding = server.platform.blinding
    project = server.platform.labeling.get(OWNER, "blind")
    sop, series = str(study.rita_sr.SOPInstanceUID), _series(study.rita_sr)

    def record(sop: str, project: int, reader: str) -> bool:
        return blinding.record_object(
            sop_uid=sop, series_uid=series, study_uid=study.uid, project_id=project, reader=reader
        )

    assert record(sop, project.id, "rita") is False  # sent again: nothing new
    with pytest.raises(Conflict, match="is a label object of rita"):
        record(sop, project.id, "raj")
    with pytest.raises(NotFound, match="labeling project 999 not found"):
        record(generate_uid(), 999, "rita")
    with Session(server.platform.store.engine) as session:
        assert session.scalar(select(func.count()).select_from(LabelObjectRow)) == 3
