"""Labels from the DICOM readers save (``labeling/intake.py``), through the real server and real clients.

A project with two readers: rita (``annotator``, who may not ingest, with a workstation AE title for
3D Slicer) and raj (``radiologist``). What they save arrives as OHIF does it (STOW-RS of an Enhanced SR
built with highdicom: TID 1500, the label a CORNERSTONEJS free-text code, a RectangleROI as a closed
5-point POLYLINE), as 3D Slicer does it (C-STORE with dcmtk's storescu; DICOMweb one file per POST with
dicomweb-client), or as a highdicom SEG (bitmap and label map). Each test looks where a user would: the
task's labels over the API, the STOW-RS response and its Warning header, the C-STORE status and its
Error Comment, QIDO.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from radstack.config import Settings
from radstack.labeling.models import LabelObjectRow
from radstack.security.audit import AuditOutcomeValues
from tests import authed
from tests.ai.results import ingest, radiograph
from tests.conftest import RunningServer, require_binary, server_settings, start_server
from tests.dimse.helpers import EXPLICIT_LE, association
from tests.helpers import dicom_body, part10, synthetic_ct

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
RITA_AE = "RITA_SLICER"
SCHEMA: dict[str, Any] = {
    "labels": [
        {
            "key": "fracture",
            "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
            "geometry": ["box", "point", "mask"],
        },
        {
            "key": "dislocation",
            "code": {"value": "87642003", "scheme": "SCT", "meaning": "Dislocation of joint"},
            "geometry": ["box", "class"],
        },
    ]
}


@dataclass
class World:
    """The server, the readers' tokens, the studies (0–2 in the cohort, 3 outside it) and tasks."""

    server: RunningServer
    tokens: dict[str, str]
    studies: list[Dataset]
    #: (reader, study index) → task id
    tasks: dict[tuple[str, int], int]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(server_settings(tmp_path / "data"))


def _world(settings: Settings) -> Iterator[World]:
    for server in start_server(settings):
        accounts = server.platform.accounts
        accounts.create_user("rita", "annotator", ae_title=RITA_AE)
        accounts.create_user("raj", "radiologist")
        accounts.create_user("cleo", "radiologist")
        tokens = {name: accounts.create_token(name) for name in ("rita", "raj", "cleo")}
        studies = [_complete(radiograph(seed)) for seed in range(1, 5)]
        ingest(server.platform.store, *studies)
        created = authed.post(
            f"{server.url}/api/v1/labeling/projects",
            json={
                "name": "wrists",
                "schema": SCHEMA,
                "cohort": [str(ds.StudyInstanceUID) for ds in studies[:3]],
                "readers": ["rita", "raj"],
                "readers_per_item": 1,
            },
        )
        assert created.status_code == 201, created.text
        by_study = {str(ds.StudyInstanceUID): i for i, ds in enumerate(studies)}
        tasks = {}
        for reader, token in tokens.items():
            mine = httpx.get(f"{server.url}/api/v1/labeling/tasks", headers=_bearer(token))
            tasks.update({(reader, by_study[t["study_uid"]]): t["id"] for t in mine.json()})
        # Round robin: rita reads studies 0 and 2, raj study 1.
        assert set(tasks) == {("rita", 0), ("raj", 1), ("rita", 2)}
        yield World(server, tokens, studies, tasks)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _complete(ds: Dataset) -> Dataset:
    """Type-2 attributes highdicom copies from an image (empty in the synthetic radiograph)."""
    for keyword in ("StudyID", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _read_back(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(part10(ds)))


# ----------------------------------------------------------------------------- what readers save
def ohif_sr(
    image: Dataset,
    boxes: Sequence[tuple[str, tuple[float, float, float, float]]],
    *,
    series_uid: str | None = None,
    instance_number: int = 1,
    previous: Sequence[Dataset] = (),
) -> Dataset:
    """An Enhanced SR as OHIF's "Create SR" stores it for a 2D image: TID 1500, one TID 1410 group per
    RectangleROI (a closed 5-point POLYLINE), the label a free-text code (scheme CORNERSTONEJS); a
    save into an existing SR series names the older report in PredecessorDocumentsSequence."""
    groups = []
    for text, (x0, y0, x1, y1) in boxes:
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=image.SOPClassUID,
                referenced_sop_instance_uid=image.SOPInstanceUID,
            ),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier="Cornerstone3DTools@^0.1.0:RectangleROI"
                ),
                referenced_region=region,
                finding_type=hd.sr.CodedConcept("CORNERSTONEFREETEXT", "CORNERSTONEJS", text),
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name="unknown^unknown"
                ),
            )
        ),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups,
    )
    sr = hd.sr.EnhancedSR(
        evidence=[image],
        content=report[0],
        series_instance_uid=series_uid or generate_uid(),
        series_number=4700,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="OHIF",
        is_complete=True,
        previous_versions=list(previous) or None,
    )
    assert sr.SOPClassUID == ENHANCED_SR
    return _read_back(sr)


def seg(image: Dataset, mask: np.ndarray, segmentation_type: str, *, label: str = "fracture") -> Dataset:
    """A highdicom SEG of one segment on ``image``: bitmap BINARY, or a Label Map Segmentation in RLE
    (as OHIF 3.13.2 saves it)."""
    code = next(item["code"] for item in SCHEMA["labels"] if item["key"] == label)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=hd.sr.CodedConcept(code["value"], code["scheme"], code["meaning"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    labelmap = segmentation_type == "LABELMAP"
    made = hd.seg.Segmentation(
        [image],
        mask.astype(np.uint8)[None],
        segmentation_type,
        [description],
        series_instance_uid=generate_uid(),
        series_number=4800,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="radstack",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        transfer_syntax_uid=RLELossless if labelmap else ExplicitVRLittleEndian,
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=[0.2, 0.2], slice_thickness=1.0),
    )
    return _read_back(made)


def _mask(ds: Dataset) -> np.ndarray:
    mask = np.zeros((int(ds.Rows), int(ds.Columns)), bool)
    mask[10:30, 5:25] = True
    return mask


# ----------------------------------------------------------------------------- how users see it
def _labels(world: World, reader: str, study: int, *, history: bool = False) -> dict[str, Any]:
    task = world.tasks[(reader, study)]
    response = httpx.get(
        f"{world.server.url}/api/v1/labeling/tasks/{task}/labels",
        params={"all": "true"} if history else None,
        headers=_bearer(world.tokens[reader]),
    )
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _stow(world: World, reader: str, *datasets: Dataset) -> httpx.Response:
    return httpx.post(
        f"{world.server.dicomweb}/studies",
        content=dicom_body(*datasets),
        headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=t3st-b0undary',
            **_bearer(world.tokens[reader]),
        },
        timeout=60,
    )


def _refused(response: httpx.Response, status: int, reason: str) -> None:
    """A STOW-RS response whose one instance failed with ``status``, the reason in the Warning header."""
    assert response.status_code == 409, response.text
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [status]
    assert reason in response.headers["warning"], response.headers["warning"]


def _in_qido(world: World, ds: Dataset, token: str | None = None) -> bool:
    response = authed.get(
        f"{world.server.dicomweb}/studies/{ds.StudyInstanceUID}/instances",
        params={"SOPInstanceUID": str(ds.SOPInstanceUID)},
        headers=_bearer(token) if token else None,
    )
    assert response.status_code in (200, 204), response.text
    return response.status_code == 200 and bool(response.json())


def _objects(world: World) -> list[tuple[str, str, str]]:
    with Session(world.server.platform.store.engine) as session:
        rows = session.scalars(select(LabelObjectRow).order_by(LabelObjectRow.id))
        return [(row.sop_uid, row.reader, row.study_uid) for row in rows]


# ----------------------------------------------------------------------------- OHIF: STOW-RS
def test_an_ohif_sr_from_a_reader_becomes_the_labels_of_their_task(world: World) -> None:
    image = world.studies[0]
    sr = ohif_sr(image, [("fracture", (10, 20, 40, 50)), ("Dislocation of joint", (50.5, 60, 70, 90))])

    # The annotator may not ingest; a label object of her own task she may store.
    DICOMwebClient(world.server.dicomweb, headers=_bearer(world.tokens["rita"])).store_instances([sr])

    labels = _labels(world, "rita", 0)
    assert labels["revision"] == 1
    assert [
        (lb["label"], lb["geometry"], lb["data"], lb["sop_uid"], lb["frame"], lb["source"], lb["source_uid"])
        for lb in labels["labels"]
    ] == [
        (
            "fracture",
            "box",
            {"box": [10.0, 20.0, 40.0, 50.0]},
            image.SOPInstanceUID,
            None,
            "sr",
            sr.SOPInstanceUID,
        ),
        (
            "dislocation",
            "box",
            {"box": [50.5, 60.0, 70.0, 90.0]},
            image.SOPInstanceUID,
            None,
            "sr",
            sr.SOPInstanceUID,
        ),
    ]
    assert all(lb["reader"] == "rita" for lb in labels["labels"])
    assert _in_qido(world, sr, world.tokens["rita"])
    # What blinding reads: the object is rita's, in her project.
    assert _objects(world) == [(sr.SOPInstanceUID, "rita", image.StudyInstanceUID)]
    platform = world.server.platform
    platform.audit.flush()
    [entry] = [r for r in platform.audit.log.records(limit=1000) if r.resource.get("source") == "sr"]
    assert entry.actor == "rita" and entry.outcome is AuditOutcomeValues.SUCCESS
    assert entry.resource["labeling_task"] == world.tasks[("rita", 0)] and entry.resource["revision"] == 1


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_a_seg_becomes_a_mask_label_and_keeps_the_readers_boxes(world: World, segmentation_type: str) -> None:
    image = world.studies[1]
    sr = ohif_sr(image, [("fracture", (10, 20, 40, 50))])
    mask = _mask(image)
    segmentation = seg(image, mask, segmentation_type)
    expected_class = "1.2.840.10008.5.1.4.1.1.66." + ("7" if segmentation_type == "LABELMAP" else "4")
    assert segmentation.SOPClassUID == expected_class
    client = DICOMwebClient(world.server.dicomweb, headers=_bearer(world.tokens["raj"]))

    # 3D Slicer's DICOMweb path: one file per POST.
    client.store_instances([sr])
    client.store_instances([segmentation])

    labels = _labels(world, "raj", 1)
    assert labels["revision"] == 2
    by_source = {lb["source"]: lb for lb in labels["labels"]}
    assert set(by_source) == {"sr", "seg"}, "the SEG kept the boxes of the SR"
    assert by_source["sr"]["data"] == {"box": [10.0, 20.0, 40.0, 50.0]}
    masked = by_source["seg"]
    assert (masked["label"], masked["geometry"], masked["source_uid"], masked["frame"]) == (
        "fracture",
        "mask",
        segmentation.SOPInstanceUID,
        None,
    )
    rle = masked["data"]["mask"]["rle"]
    assert (masked["data"]["mask"]["rows"], masked["data"]["mask"]["columns"]) == mask.shape
    decoded = np.repeat(np.arange(len(rle["counts"])) % 2 == 1, rle["counts"]).reshape(mask.shape, order="F")
    np.testing.assert_array_equal(decoded, mask)
    assert [row[0] for row in _objects(world)] == [sr.SOPInstanceUID, segmentation.SOPInstanceUID]


def test_a_re_save_is_a_new_revision_and_a_duplicate_is_none(world: World) -> None:
    image = world.studies[0]
    first = ohif_sr(image, [("fracture", (10, 20, 40, 50))])
    assert _stow(world, "rita", first).status_code == 200
    # OHIF saving into the SR series it loaded: a new instance that names the old one.
    second = ohif_sr(
        image,
        [("fracture", (12, 22, 42, 52)), ("fracture", (60, 10, 70, 20))],
        series_uid=first.SeriesInstanceUID,
        instance_number=2,
        previous=[first],
    )
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0
    ].ReferencedSOPInstanceUID == str(first.SOPInstanceUID)
    assert _stow(world, "rita", second).status_code == 200

    current = _labels(world, "rita", 0)
    assert current["revision"] == 2
    assert [lb["data"]["box"] for lb in current["labels"]] == [
        [12.0, 22.0, 42.0, 52.0],
        [60.0, 10.0, 70.0, 20.0],
    ]
    history = _labels(world, "rita", 0, history=True)
    assert [(lb["revision"], lb["source_uid"], lb["superseded_at"] is None) for lb in history["labels"]] == [
        (1, first.SOPInstanceUID, False),
        (2, second.SOPInstanceUID, True),
        (2, second.SOPInstanceUID, True),
    ]

    # The same instance again (a retry): stored once, no new revision, even once the task is submitted.
    again = _stow(world, "rita", second)
    assert again.status_code == 200 and "00081198" not in again.json()
    assert _labels(world, "rita", 0, history=True) == history
    submitted = httpx.post(
        f"{world.server.url}/api/v1/labeling/tasks/{world.tasks[('rita', 0)]}/submit",
        headers=_bearer(world.tokens["rita"]),
    )
    assert submitted.status_code == 200
    assert _stow(world, "rita", second).status_code == 200
    assert _labels(world, "rita", 0, history=True)["revision"] == 2
    # A new save of a submitted task is refused: the task takes no more labels.
    third = ohif_sr(
        image, [("fracture", (1, 2, 3, 4))], series_uid=first.SeriesInstanceUID, previous=[second]
    )
    _refused(_stow(world, "rita", third), 0xC000, "is submitted; labels go to an assigned task")
    assert not _in_qido(world, third)


# ----------------------------------------------------------------------------- 3D Slicer: C-STORE
def test_storescu_from_a_readers_workstation_labels_her_task(world: World, tmp_path: Path) -> None:
    require_binary("storescu")
    image = world.studies[2]
    sr = ohif_sr(image, [("fracture", (5, 6, 25, 26))])
    path = tmp_path / "sr.dcm"
    path.write_bytes(part10(sr))
    port = str(world.server.dicom_port)
    sent = subprocess.run(
        ["storescu", "-aet", RITA_AE, "-aec", "RADSTACK", "127.0.0.1", port, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    labels = _labels(world, "rita", 2)
    assert [(lb["label"], lb["data"], lb["source"], lb["source_uid"]) for lb in labels["labels"]] == [
        ("fracture", {"box": [5.0, 6.0, 25.0, 26.0]}, "sr", sr.SOPInstanceUID)
    ]


def test_c_store_refusals_are_a_status_with_an_error_comment(world: World) -> None:
    outside = ohif_sr(world.studies[1], [("fracture", (5, 6, 25, 26))])  # raj's task, not rita's
    ct = synthetic_ct()
    with association(
        world.server,
        [(ENHANCED_SR, [EXPLICIT_LE]), ("1.2.840.10008.5.1.4.1.1.2", [EXPLICIT_LE])],
        calling=RITA_AE,
    ) as assoc:
        no_task = assoc.send_c_store(outside)
        image = assoc.send_c_store(ct)
    assert no_task.Status == 0x0124
    # The Error Comment is 64 characters at most: the study's UID does not fit.
    assert no_task.ErrorComment.startswith("no labeling task of rita in project 'wrists' holds study")
    assert image.Status == 0x0124
    assert image.ErrorComment.startswith("the annotator role may store only label objects")
    assert not _in_qido(world, outside) and not _in_qido(world, ct)
    assert _labels(world, "raj", 1)["revision"] == 0


# ----------------------------------------------------------------------------- refusals change nothing
def test_a_label_object_that_fits_no_task_is_refused_and_nothing_is_stored(world: World) -> None:
    image = world.studies[0]
    stored = ohif_sr(image, [("fracture", (10, 20, 40, 50))])
    assert _stow(world, "rita", stored).status_code == 200
    before = _labels(world, "rita", 0, history=True)
    outsider = world.studies[3]  # stored, not in the cohort
    foreign = _complete(outsider)
    # A SEG stored into rita's study whose mask lies on an image of another study.
    wrong_image = seg(foreign, _mask(foreign), "BINARY")
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
    ):
        setattr(wrong_image, keyword, image.get(keyword))
    cases = [
        (
            ohif_sr(world.studies[1], [("fracture", (10, 20, 40, 50))]),
            0x0124,
            f"no labeling task of rita in project 'wrists' holds study {world.studies[1].StudyInstanceUID}",
        ),
        (
            ohif_sr(image, [("fracture", (10, 20, 40, 50)), ("effusion", (1, 1, 9, 9))]),
            0xC000,
            "label 2 ('effusion', a box on image "
            f"{image.SOPInstanceUID}): 'effusion' is not a label of project 'wrists'; accepted: fracture, dislocation",
        ),
        (
            ohif_sr(image, [("fracture", (10, 20, 40, 500))]),
            0xC000,
            "data.box [10.0, 20.0, 40.0, 500.0]: (40, 500) is outside image",
        ),
        (
            seg(image, _mask(image), "BINARY", label="dislocation"),
            0xC000,
            "a mask is not allowed for 'dislocation' in project 'wrists'; it takes box, class",
        ),
        (
            wrong_image,
            0xC000,
            f"references image {outsider.SOPInstanceUID}, which is not an image of study {image.StudyInstanceUID}",
        ),
    ]
    for refused, status, reason in cases:
        _refused(_stow(world, "rita", refused), status, reason)
        assert not _in_qido(world, refused), "a refused label object is not stored"
    assert _labels(world, "rita", 0, history=True) == before
    assert _labels(world, "raj", 1)["revision"] == 0
    assert [row[0] for row in _objects(world)] == [stored.SOPInstanceUID]
    platform = world.server.platform
    platform.audit.flush()
    refusals = [
        r
        for r in platform.audit.log.records(limit=1000)
        if r.resource.get("event") == "labels" and r.outcome is AuditOutcomeValues.FAILURE
    ]
    assert len(refusals) == len(cases)


def test_the_annotator_stores_nothing_but_label_objects_of_her_tasks(world: World) -> None:
    outside = world.studies[3]
    clinical = ohif_sr(outside, [("fracture", (10, 20, 40, 50))])  # a study in no project
    ct = synthetic_ct(study=str(world.studies[0].StudyInstanceUID))
    for refused in (clinical, ct):
        _refused(
            _stow(world, "rita", refused),
            0x0124,
            "the annotator role may store only label objects (SR, SEG) for its labeling tasks",
        )
        assert not _in_qido(world, refused)
    # A role with neither ingest nor label is refused as a whole request, before the body is read.
    referrer = world.server.token_for("referring-physician", referring_name="Doe^J")
    whole = httpx.post(
        f"{world.server.dicomweb}/studies",
        content=dicom_body(ct),
        headers={"Content-Type": 'multipart/related; type="application/dicom"', **_bearer(referrer)},
    )
    assert whole.status_code == 403 and whole.headers["content-type"] == "application/problem+json"
    assert whole.json()["detail"] == "the referring-physician role may not ingest"


def test_an_sr_from_a_radiologist_in_no_project_is_clinical(world: World) -> None:
    # cleo reads in no project; raj reads, but not this study (outside the cohort).
    cleo = ohif_sr(world.studies[0], [("anything at all", (10, 20, 40, 50))])
    raj = ohif_sr(world.studies[3], [("anything at all", (10, 20, 40, 50))])
    assert _stow(world, "cleo", cleo).status_code == 200
    assert _stow(world, "raj", raj).status_code == 200
    assert _in_qido(world, cleo) and _in_qido(world, raj)
    assert _objects(world) == []
    assert _labels(world, "rita", 0)["revision"] == 0


def test_a_reader_in_two_projects_labels_the_task_whose_schema_fits(world: World) -> None:
    image = world.studies[0]
    elbows = authed.post(
        f"{world.server.url}/api/v1/labeling/projects",
        json={
            "name": "elbows",
            "schema": {
                "labels": [
                    {
                        "key": "effusion",
                        "code": {"value": "1", "scheme": "99X", "meaning": "Effusion"},
                        "geometry": ["box"],
                    },
                    SCHEMA["labels"][0],
                ]
            },
            "cohort": [str(image.StudyInstanceUID)],
            "readers": ["rita"],
        },
    )
    assert elbows.status_code == 201, elbows.text
    [task] = httpx.get(
        f"{world.server.url}/api/v1/labeling/tasks",
        params={"project": "elbows"},
        headers=_bearer(world.tokens["rita"]),
    ).json()
    effusion = ohif_sr(image, [("effusion", (10, 20, 40, 50))])
    dislocation = ohif_sr(image, [("dislocation", (10, 20, 40, 50))])
    assert _stow(world, "rita", effusion, dislocation).status_code == 200
    mine = httpx.get(
        f"{world.server.url}/api/v1/labeling/tasks/{task['id']}/labels", headers=_bearer(world.tokens["rita"])
    ).json()
    assert [(lb["label"], lb["source_uid"]) for lb in mine["labels"]] == [
        ("effusion", effusion.SOPInstanceUID)
    ]
    assert [(lb["label"], lb["source_uid"]) for lb in _labels(world, "rita", 0)["labels"]] == [
        ("dislocation", dislocation.SOPInstanceUID)
    ]
    # A fracture is a label of both projects: which task it is for cannot be told.
    both = ohif_sr(image, [("fracture", (10, 20, 40, 50))])
    _refused(
        _stow(world, "rita", both), 0xC000, "fits labeling tasks of rita in 2 projects ('wrists', 'elbows')"
    )
    assert not _in_qido(world, both)


def test_the_intake_on_each_backend(backend_settings: Settings) -> None:
    """SQLite and PostgreSQL: the labels commit in the instance's transaction (a group commit of
    several parts of one request too), a refusal rolls back nothing else of the request."""
    for world in _world(backend_settings.model_copy(update={"starter_model": False})):
        image = world.studies[0]
        sr = ohif_sr(image, [("fracture", (10, 20, 40, 50))])
        mask = seg(image, _mask(image), "LABELMAP")
        refused = ohif_sr(image, [("effusion", (10, 20, 40, 50))])
        response = _stow(world, "rita", sr, refused, mask)
        assert response.status_code == 202, response.text
        assert [item["00081155"]["Value"][0] for item in response.json()["00081198"]["Value"]] == [
            refused.SOPInstanceUID
        ]
        labels = _labels(world, "rita", 0, history=True)
        assert sorted(lb["source"] for lb in labels["labels"] if lb["superseded_at"] is None) == ["seg", "sr"]
        assert labels["revision"] == 2
        assert _stow(world, "rita", sr, mask).status_code == 200
        assert _labels(world, "rita", 0, history=True) == labels
        assert sorted(row[0] for row in _objects(world)) == sorted([sr.SOPInstanceUID, mask.SOPInstanceUID])
        assert not _in_qido(world, refused)
        # Blinding on this backend: rita sees her SR, raj (the other reader) does not.
        assert _in_qido(world, sr, world.tokens["rita"]) and not _in_qido(world, sr, world.tokens["raj"])


def test_a_reviewers_sr_into_a_blinded_cohort_is_refused(world: World) -> None:
    """Stored as a clinical object it would be shown to the blinded readers: the reviewer is sent to the
    review page instead, and nothing is stored."""
    created = authed.post(
        f"{world.server.url}/api/v1/labeling/projects",
        json={
            "name": "second-look",
            "schema": SCHEMA,
            "cohort": [str(world.studies[0].StudyInstanceUID)],
            "readers": ["raj"],
            "reviewers": ["cleo"],
            "readers_per_item": 1,
            "blinded": True,
        },
    )
    assert created.status_code == 201, created.text
    sr = ohif_sr(world.studies[0], [("fracture", (10, 20, 40, 50))])
    _refused(_stow(world, "cleo", sr), 0x0124, "reviews the blinded labeling project 'second-look'")
    assert not _in_qido(world, sr)
