"""Exports of a labeling project (``labeling/export.py``, ``web/labeling_data.py``): a data set version
whose split keeps every patient in one partition and that trains; COCO, MONAI and nnU-Net files that
hold the right boxes, masks, sizes and categories, split by patient and de-identified; the majority
rule where there is no consensus; an empty project refused with nothing made; who may export."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
from pydicom.dataset import Dataset

from radstack.config import Settings
from radstack.errors import Conflict
from radstack.labeling.export import LABEL_EXPORT_KIND, LabelsFrom
from radstack.platform import Platform
from tests import authed
from tests.ai.results import ingest, radiograph
from tests.ai.test_training import CONFIG
from tests.conftest import RunningServer, server_settings, start_server
from tests.labeling.labeled import OWNER, box, consensus, make_project, mask, present, read, skip

FINAL = {"SUCCEEDED", "FAILED", "DEAD", "CANCELLED"}
#: Study i (0-based) has a fracture box here (rita's read); the rest have none.
BOXES: dict[int, list[float]] = {
    0: [10, 20, 30, 44],
    2: [12, 8, 40, 30],
    4: [5, 5, 25, 25],
    6: [30, 40, 70, 90],
    8: [0, 0, 80, 96],
    9: [20, 20, 21.5, 60],
    10: [44, 50, 60, 70],
    11: [1, 1, 9, 9],  # the consensus overrules it: study 11 has no fracture
}


# ----------------------------------------------------------------------------- data
def _studies() -> list[Dataset]:
    """16 radiographs (96 rows × 80 columns) of 12 patients: studies 0–7 are four patients' two
    studies each (one with a fracture, one without), 8–15 one patient each."""
    studies = []
    for index in range(16):
        ds = radiograph(index + 1)
        if index < 8:
            ds.PatientID = f"PAIRED-{index // 2}"
            ds.PatientName = f"Paired^Patient{index // 2}"
        studies.append(ds)
    return studies


def _labels_of(ds: Dataset, index: int) -> list[dict[str, Any]]:
    labels = [box(ds, BOXES[index])] if index in BOXES else []
    if index in (0, 8):
        labels.append(mask(ds, slice(20, 44), slice(10, 30)))  # rows 20–43, columns 10–29
    if index == 8:
        labels.append(
            {
                "label": "fracture",
                "geometry": "point",
                "data": {"point": [40, 48]},
                "sop_uid": str(ds.SOPInstanceUID),
            }
        )
    if index == 9:
        labels.append(present(ds, "dislocation"))
    return labels


@pytest.fixture(scope="module")
def studies() -> list[Dataset]:
    return _studies()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, studies: list[Dataset]) -> Iterator[RunningServer]:
    """A server (running export and training jobs) with the 16 studies and project ``wrists`` read by
    rita alone, study 11 decided by the consensus (nothing)."""
    settings = server_settings(tmp_path_factory.mktemp("export") / "data", dicom_port=0)
    for running in start_server(settings):
        platform = running.platform
        ingest(platform.store, *studies)
        make_project(platform.labeling, "wrists", studies, ["rita"], 1)
        for index, ds in enumerate(studies):
            read(platform.labeling, "wrists", ds, "rita", _labels_of(ds, index))
        consensus(platform.labeling, "wrists", studies[11], [])
        yield running


def headers_of(server: RunningServer, user: str, role: str) -> dict[str, str]:
    if user not in {u.username for u in server.platform.accounts.users()}:
        server.platform.accounts.create_user(user, role)
    return {"Authorization": f"Bearer {server.platform.accounts.create_token(user)}"}


def export(server: RunningServer, headers: dict[str, str], project: str = "wrists", **body: Any) -> Any:
    return authed.post(
        f"{server.url}/api/v1/labeling/projects/{project}/exports", json=body, headers=headers, timeout=120
    )


def wait(server: RunningServer, url: str, headers: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = authed.get(url, headers=headers).json()
        if job.get("state") in FINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


# ----------------------------------------------------------------------------- data set
def test_a_data_set_export_keeps_each_patient_in_one_split_and_trains(
    server: RunningServer, studies: list[Dataset]
) -> None:
    platform = server.platform
    dana = headers_of(server, "dana", "data-scientist")  # the owner: de-identified
    answer = export(server, dana, format="dataset", name="wrists-labels", split="50/25/25", seed=3)
    assert answer.status_code == 201, answer.text
    version = answer.json()
    assert (version["name"], version["version"], version["item_count"]) == ("wrists-labels", 1, 16)
    assert (
        "labeling project wrists: 16 studies labeled (1 by consensus, 15 by reader)"
        in authed.get(f"{server.url}/api/v1/datasets", headers=dana).text
    )
    # Seven patients have a fracture (the four paired ones, studies 8, 9, 10; 11's consensus is none).
    assert version["counts"]["all"] == {
        "patients": 12,
        "images": 16,
        "positive": 7,  # the 8 studies with a box, less study 11
        "negative": 9,
        "types": {"unknown": 7},
    }
    items = authed.get(
        f"{server.url}/api/v1/datasets/wrists-labels/versions/1/items?limit=100", headers=dana
    ).json()["items"]
    # Every patient is in exactly one split, the paired patients' two studies included.
    splits_of: dict[str, set[str]] = defaultdict(set)
    for item in items:
        splits_of[item["patient_key"]].add(item["split"])
    assert len(splits_of) == 12 and all(len(s) == 1 for s in splits_of.values())
    assert {item["split"] for item in items} == {"train", "validation", "test"}
    # The labels: rita's boxes (in the data set's form), none where the consensus says none. The data
    # scientist names images by their pseudonyms.
    pseudonym = platform.deidentifier.uid
    by_sop = {item["sop_uid"]: item for item in items}
    assert str(studies[0].SOPInstanceUID) not in by_sop
    for index, ds in enumerate(studies):
        label = by_sop[pseudonym(str(ds.SOPInstanceUID))]["label"]
        expected = [BOXES[index]] if index in BOXES and index != 11 else []
        assert label == {"fracture": bool(expected), "type": None, "boxes": expected}, index
    # The same labels again are the same version.
    again = export(server, dana, format="dataset", name="wrists-labels", split="50/25/25", seed=3)
    assert again.status_code == 200 and again.json()["version"] == 1

    # Training from the export runs: the existing training job on that version, tiny and quick.
    config = {**CONFIG, "epochs": 2}
    job = authed.post(
        f"{server.url}/api/v1/training-jobs",
        json={"dataset": "wrists-labels", "model": "wrists-fracture", "config": config},
        headers=dana,
    )
    assert job.status_code == 201, job.text
    done = wait(server, f"{server.url}/api/v1/training-jobs/{job.json()['id']}", dana)
    assert done["state"] == "SUCCEEDED", done["error"]
    assert [e["epoch"] for e in done["epochs"]] == [1, 2]
    assert done["result"]["test_images"] == version["counts"]["test"]["images"]
    registered = authed.get(f"{server.url}/api/v1/models/wrists-fracture/versions/1", headers=dana).json()
    assert registered["lineage"]["dataset_version"] == "wrists-labels@1"


# ----------------------------------------------------------------------------- files
def _file_export(
    server: RunningServer, headers: dict[str, str], fmt: str
) -> tuple[dict[str, Any], zipfile.ZipFile]:
    answer = export(server, headers, format=fmt, split="50/25/25", seed=3)
    assert answer.status_code == 202, answer.text
    location = answer.headers["location"]
    assert location == f"{server.url}/api/v1/labeling/exports/{answer.json()['id']}"
    job = wait(server, location, headers)
    assert job["state"] == "SUCCEEDED", job["last_error"]
    assert (job["progress"]["images_done"], job["progress"]["images_total"]) == (16, 16)
    zipped = authed.get(f"{location}/file", headers=headers)
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    return job, zipfile.ZipFile(io.BytesIO(zipped.content))


def _json(archive: zipfile.ZipFile, name: str) -> Any:
    return json.loads(archive.read(name))


def _case_of(
    archive: zipfile.ZipFile, root: str, server: RunningServer, ds: Dataset
) -> tuple[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = _json(archive, f"{root}cases.json")
    wanted = server.platform.deidentifier.uid(str(ds.SOPInstanceUID))
    return next((name, case) for name, case in cases.items() if case["sop_instance_uid"] == wanted)


def _check_split_and_deidentified(
    archive: zipfile.ZipFile, root: str, server: RunningServer, studies: list[Dataset]
) -> None:
    """Every patient in one split; no real name, ID or UID anywhere; pixels as stored."""
    cases: dict[str, dict[str, Any]] = _json(archive, f"{root}cases.json")
    assert len(cases) == 16
    splits_of: dict[str, set[str]] = defaultdict(set)
    for case in cases.values():
        splits_of[case["patient"]].add(case["split"])
        assert case["patient"].startswith("ANON-")
    assert len(splits_of) == 12 and all(len(s) == 1 for s in splits_of.values())
    secrets = {str(ds.PatientID) for ds in studies} | {str(ds.PatientName).split("^")[-1] for ds in studies}
    secrets |= {str(ds.StudyInstanceUID) for ds in studies} | {str(ds.SOPInstanceUID) for ds in studies}
    for name in archive.namelist():
        if name.endswith(".json"):
            text = archive.read(name).decode()
            leaked = [s for s in secrets if s in text]
            assert not leaked, (name, leaked[:3])
    name, _case = _case_of(archive, root, server, studies[0])
    header = _json(archive, f"{root}headers/{name}.json")
    assert header["00100020"]["Value"][0].startswith("ANON-")  # Patient ID
    assert header["00100010"]["Value"][0]["Alphabetic"].startswith("ANON^")  # Patient's Name


def test_coco_files_have_boxes_as_xywh_image_sizes_and_the_schema_categories(
    server: RunningServer, studies: list[Dataset]
) -> None:
    dana = headers_of(server, "dana", "data-scientist")
    job, archive = _file_export(server, dana, "coco")
    root = "coco/"
    _check_split_and_deidentified(archive, root, server, studies)
    documents = {
        split: _json(archive, f"{root}annotations/{split}.json") for split in ("train", "validation", "test")
    }
    categories = documents["train"]["categories"]
    assert [(c["id"], c["name"], c["code"]["value"], c["code"]["scheme"]) for c in categories] == [
        (1, "fracture", "125605004", "SCT"),
        (2, "dislocation", "87642003", "SCT"),
    ]
    images = [image for d in documents.values() for image in d["images"]]
    assert len(images) == 16 and len({i["id"] for i in images}) == 16
    assert all((i["width"], i["height"]) == (80, 96) for i in images)
    # No patient's images are in two split files.
    patients = {split: {i["patient"] for i in d["images"]} for split, d in documents.items()}
    assert not (patients["train"] & patients["validation"] or patients["train"] & patients["test"])
    assert not patients["validation"] & patients["test"]
    name, case = _case_of(archive, root, server, studies[0])
    document = documents[case["split"]]
    image = next(i for i in document["images"] if i["file_name"] == f"images/{name}.png")
    annotations = [a for a in document["annotations"] if a["image_id"] == image["id"]]
    # rita's box [10, 20, 30, 44] is [x, y, w, h] = [10, 20, 20, 24]; her mask (rows 20–43, columns
    # 10–29) has 24 × 20 pixels, that extent, and its RLE as stored.
    assert [(a["category_id"], a["bbox"], a["area"]) for a in annotations] == [
        (1, [10.0, 20.0, 20.0, 24.0], 480.0),
        (1, [10, 20, 20, 24], 480),
    ]
    assert annotations[1]["segmentation"]["size"] == [96, 80]
    assert image["classes"] == [1] and image["study_instance_uid"] == case["study_instance_uid"]
    name9, case9 = _case_of(archive, root, server, studies[9])
    image9 = next(i for i in documents[case9["split"]]["images"] if i["file_name"] == f"images/{name9}.png")
    assert image9["classes"] == [1, 2]  # a fracture box and an image-level dislocation
    # Study 11: rita's box, but the consensus is that there is nothing.
    name11, case11 = _case_of(archive, root, server, studies[11])
    image11 = next(
        i for i in documents[case11["split"]]["images"] if i["file_name"] == f"images/{name11}.png"
    )
    assert image11["classes"] == [] and not [
        a for a in documents[case11["split"]]["annotations"] if a["image_id"] == image11["id"]
    ]
    # The image is the stored pixels, losslessly.
    png = imagecodecs.png_decode(archive.read(f"{root}images/{name}.png"))
    assert png.dtype == np.uint16 and np.array_equal(png, studies[0].pixel_array)
    summary = _json(archive, f"{root}export.json")
    assert summary["labels_from"] == {"reader": 15, "consensus": 1} and summary["images"] == 16
    assert summary["left_out_labels"] == {"point labels (COCO has no point)": 1}
    assert job["progress"]["splits"] == summary["splits"]


def test_a_monai_datalist_loads_with_monai_and_holds_boxes_and_label_maps(
    server: RunningServer, studies: list[Dataset], tmp_path: Path
) -> None:
    from monai.data.decathlon_datalist import load_decathlon_datalist

    reva = headers_of(server, "reva", "radiologist")  # a reviewer may export files
    _job, archive = _file_export(server, reva, "monai")
    root = "monai/"
    _check_split_and_deidentified(archive, root, server, studies)
    archive.extractall(tmp_path)
    datalist = tmp_path / "monai" / "datalist.json"
    loaded = {
        key: load_decathlon_datalist(datalist, data_list_key=key)
        for key in ("training", "validation", "test")
    }
    assert sum(len(entries) for entries in loaded.values()) == 16
    name, case = _case_of(archive, root, server, studies[0])
    key = {"train": "training", "validation": "validation", "test": "test"}[case["split"]]
    entry = next(e for e in loaded[key] if e["case"] == name)
    assert entry["image"] == str(tmp_path / "monai" / "images" / f"{name}.png")
    assert entry["box"] == [[10.0, 20.0, 30.0, 44.0]] and entry["label"] == [0]
    assert entry["classes"] == [1, 0]
    labels = imagecodecs.png_decode((tmp_path / "monai" / "labels" / f"{name}.png").read_bytes())
    expected = np.zeros((96, 80), np.uint8)
    expected[20:44, 10:30] = 1
    assert np.array_equal(labels, expected)
    document = _json(archive, f"{root}datalist.json")
    assert document["labels"] == {"0": "fracture", "1": "dislocation"} and document["box_mode"] == "xyxy"


def test_an_nnunet_folder_has_its_dataset_json_images_label_maps_and_the_patient_split(
    server: RunningServer, studies: list[Dataset]
) -> None:
    dana = headers_of(server, "dana", "data-scientist")
    _job, archive = _file_export(server, dana, "nnunet")
    root = "Dataset501_Wrists/"
    _check_split_and_deidentified(archive, root, server, studies)
    dataset = _json(archive, f"{root}dataset.json")
    assert dataset["labels"] == {"background": 0, "fracture": 1} and dataset["file_ending"] == ".png"
    assert dataset["channel_names"] == {"0": "radiograph"}
    cases: dict[str, dict[str, Any]] = _json(archive, f"{root}cases.json")
    training = sorted(name for name, case in cases.items() if case["split"] != "test")
    assert dataset["numTraining"] == len(training)
    names = set(archive.namelist())
    for name, case in cases.items():
        part = "Ts" if case["split"] == "test" else "Tr"
        assert {f"{root}images{part}/{name}_0000.png", f"{root}labels{part}/{name}.png"} <= names
    folds = _json(archive, f"{root}splits_final.json")
    assert sorted(folds[0]["train"] + folds[0]["val"]) == training
    patients = {fold: {cases[n]["patient"] for n in folds[0][fold]} for fold in ("train", "val")}
    assert not patients["train"] & patients["val"]
    name, case = _case_of(archive, root, server, studies[8])
    part = "Ts" if case["split"] == "test" else "Tr"
    labels = imagecodecs.png_decode(archive.read(f"{root}labels{part}/{name}.png"))
    expected = np.zeros((96, 80), np.uint8)
    expected[20:44, 10:30] = 1  # the mask; study 8's box and point are no segmentation
    assert np.array_equal(labels, expected)
    image = imagecodecs.png_decode(archive.read(f"{root}images{part}/{name}_0000.png"))
    assert np.array_equal(image, studies[8].pixel_array)


# ----------------------------------------------------------------------------- refusals
def test_an_empty_project_is_refused_and_nothing_is_made(
    server: RunningServer, studies: list[Dataset]
) -> None:
    platform = server.platform
    dana = headers_of(server, "dana", "data-scientist")
    make_project(platform.labeling, "unread", studies[:4], ["rita"], 1)
    make_project(platform.labeling, "clean", studies[:2], ["rita"], 1)
    for ds in studies[:2]:
        read(platform.labeling, "clean", ds, "rita", [])
    jobs_before = len(platform.jobs.records.find(kind=LABEL_EXPORT_KIND, limit=1000))
    for project, reason in (
        (
            "unread",
            "labeling project 'unread' has nothing to export: no item has final labels (4 not read yet)",
        ),
        ("clean", "labeling project 'clean' has no labels to export: its 2 decided item(s) carry none"),
    ):
        for body in ({"format": "dataset", "name": f"{project}-set"}, {"format": "coco"}):
            answer = export(server, dana, project, **body)
            assert answer.status_code == 409, answer.text
            assert answer.json()["detail"].startswith(reason)
        assert authed.get(f"{server.url}/api/v1/datasets/{project}-set", headers=dana).status_code == 404
    assert len(platform.jobs.records.find(kind=LABEL_EXPORT_KIND, limit=1000)) == jobs_before
    # An nnU-Net export of a schema with no masks, an unknown format, a data set without a name.
    boxes_only = {
        "labels": [
            {
                "key": "fracture",
                "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
                "geometry": ["box"],
            }
        ]
    }
    make_project(platform.labeling, "boxes", studies[:1], ["rita"], 1, schema=boxes_only)
    read(platform.labeling, "boxes", studies[0], "rita", [box(studies[0], BOXES[0])])
    refused = export(server, dana, "boxes", format="nnunet")
    assert refused.status_code == 400 and "has no label that takes masks" in refused.json()["detail"]
    assert export(server, dana, "boxes", format="tiff").status_code == 400
    nameless = export(server, dana, "boxes", format="dataset")
    assert nameless.status_code == 400 and "needs 'name'" in nameless.json()["detail"]
    assert len(platform.jobs.records.find(kind=LABEL_EXPORT_KIND, limit=1000)) == jobs_before


def test_only_the_owner_or_a_reviewer_who_may_export_exports(server: RunningServer) -> None:
    rita = headers_of(server, "rita", "annotator")  # the reader
    reva = headers_of(server, "reva", "radiologist")  # the reviewer: export, not manage-datasets
    otto = headers_of(server, "otto", "radiologist")  # no part in the project
    dora = headers_of(server, "dora", "data-scientist")  # may export, but no part in the project
    assert export(server, rita, format="coco").status_code == 403
    assert export(server, otto, format="coco").status_code == 404
    assert export(server, dora, format="coco").status_code == 404
    refused = export(server, reva, format="dataset", name="by-reva")
    assert refused.status_code == 403 and "may not manage datasets" in refused.json()["detail"]
    # An export job and its file are the submitter's.
    answer = export(server, reva, format="coco")
    assert answer.status_code == 202
    location = answer.headers["location"]
    assert authed.get(location, headers=otto).status_code == 404
    assert authed.get(f"{location}/file", headers=dora).status_code == 404
    assert wait(server, location, reva)["state"] == "SUCCEEDED"
    # The project page lists reva's exports with a download link.
    page = authed.get(f"{server.url}/labeling/projects/wrists", headers=reva).text
    assert f'href="/api/v1/labeling/exports/{answer.json()["id"]}/file"' in page


# ----------------------------------------------------------------------------- majority
@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    opened = Platform.open(settings)
    try:
        yield opened
    finally:
        opened.close()


def test_without_a_consensus_several_reads_are_left_out_or_decided_by_the_majority(
    platform: Platform,
) -> None:
    studies = [radiograph(seed) for seed in range(1, 5)]
    ingest(platform.store, *studies)
    service = platform.labeling
    make_project(service, "trio", studies, ["rita", "raj", "rex"], 3)
    s1, s2, s3, s4 = studies
    # Study 1: two of three draw overlapping boxes (IoU ≥ 0.5), rex a box elsewhere.
    read(service, "trio", s1, "rita", [box(s1, [10, 10, 30, 30])])
    read(service, "trio", s1, "raj", [box(s1, [12, 10, 32, 30])])
    read(service, "trio", s1, "rex", [box(s1, [50, 50, 60, 60])])
    # Study 2: one of three says fracture (a class): absent by the majority.
    read(service, "trio", s2, "rita", [present(s2)])
    read(service, "trio", s2, "raj", [])
    read(service, "trio", s2, "rex", [])
    # Study 3: two of three; study 4: one read missing.
    read(service, "trio", s3, "rita", [present(s3)])
    read(service, "trio", s3, "raj", [present(s3)])
    read(service, "trio", s3, "rex", [])
    read(service, "trio", s4, "rita", [present(s4)])
    skip(service, "trio", s4, "raj")
    with pytest.raises(Conflict, match=r"no item has final labels \(4 several reads and no consensus yet"):
        platform.label_exports.plan(OWNER, "trio")
    plan = platform.label_exports.plan(OWNER, "trio", majority=True)
    assert [item.study_uid for item in plan.items] == [str(s.StudyInstanceUID) for s in (s1, s2, s3)]
    assert {item.source for item in plan.items} == {LabelsFrom.MAJORITY}
    assert plan.left_out == {"not all its reads are in yet": 1}
    first, second, third = plan.items
    # The two overlapping boxes fuse into their mean; rex's lone box is below the quorum of 2.
    assert [(lb.label, lb.geometry.value, lb.data) for lb in first.labels] == [
        ("fracture", "box", {"box": [11.0, 10.0, 31.0, 30.0]})
    ]
    assert second.labels == ()
    assert [(lb.label, lb.geometry.value) for lb in third.labels] == [("fracture", "class")]
    # The consensus, when it comes, decides instead.
    consensus(service, "trio", s2, [present(s2)])
    decided = platform.label_exports.plan(OWNER, "trio", majority=True)
    assert decided.items[1].source is LabelsFrom.CONSENSUS and len(decided.items[1].labels) == 1
    # Two readers split evenly: a tie, left out for adjudication.
    make_project(service, "duo", studies[:1], ["rita", "raj"], 2)
    read(service, "duo", s1, "rita", [present(s1)])
    read(service, "duo", s1, "raj", [])
    with pytest.raises(Conflict, match=r"1 the readers are split on a label \(tie\): it needs adjudication"):
        platform.label_exports.plan(OWNER, "duo", majority=True)
