"""Data sets: split by patient, immutable versions, refusals, from a folder and from the store, the
reader in the de-identified view, the API's permissions, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from radstack.ai.datasets import LabeledInstance, SplitValues
from radstack.ai.models import DatasetItemRow, DatasetRow, DatasetVersionRow
from radstack.config import Settings
from radstack.errors import BadRequest, Forbidden
from radstack.ingest.pipeline import ingest_file
from radstack.platform import Platform
from radstack.security.policy import SYSTEM, Principal
from radstack.store.records import BatchReason
from tests import authed
from tests.conftest import RunningServer, server_settings

#: Digital X-Ray Image Storage - For Presentation (PS3.4 §B.5).
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
DATA_SCIENTIST = Principal("dora", "data-scientist", "token")
RADIOLOGIST = Principal("rita", "radiologist", "token")


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Image:
    sop_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    pixels: NDArray[np.uint16]
    label: dict[str, Any]


def dx_image(patient_id: str, study_uid: str, seed: int, rows: int = 24, columns: int = 32) -> Dataset:
    """A small 12-bit DX radiograph of ``patient_id`` whose pixels depend on ``seed``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = f"Test^{patient_id}", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.Modality, ds.StudyDate, ds.StudyTime, ds.InstanceNumber = "DX", "20240102", "101500", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
    return ds


def write_folder(
    folder: Path, positive_patients: int, negative_patients: int, *, images_per_patient: int = 2
) -> list[Image]:
    """A folder as ``radstack demo-data fractures`` writes it: ``dicom/<patient>/<uid>.dcm`` and
    ``truth.json`` (``{"images": {uid: {"fracture", "type", "boxes", "patient_id", "anatomy", …}}}``).

    A positive patient's first image has a fracture; the others have none.
    """
    images: list[Image] = []
    truth: dict[str, Any] = {}
    for number in range(positive_patients + negative_patients):
        patient = f"PAT{number:03d}"
        study = generate_uid()
        for view in range(images_per_patient):
            ds = dx_image(patient, study, seed=number * 10 + view)
            fracture = number < positive_patients and view == 0
            relative = f"dicom/{patient}/{ds.SOPInstanceUID}.dcm"
            label: dict[str, Any] = {
                "fracture": fracture,
                "type": "transverse" if fracture else None,
                "boxes": [[3, 4, 20, 18]] if fracture else [],
                "patient_id": patient,
                "anatomy": "forearm",
                "view": "AP" if view == 0 else "LAT",
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "file": relative,
            }
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            truth[str(ds.SOPInstanceUID)] = label
            pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
            images.append(
                Image(str(ds.SOPInstanceUID), study, str(ds.SeriesInstanceUID), patient, pixels, label)
            )
    document = {"generator": "tests", "version": 1, "seed": 0, "count": len(images), "images": truth}
    (folder / "truth.json").write_text(json.dumps(document, indent=1))
    return images


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    opened = Platform.open(Settings(data_dir=tmp_path / "data", ingest_processes=0))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "demo"


def dataset_rows(platform: Platform) -> tuple[int, int, int]:
    with platform.store.engine.connect() as connection:
        return tuple(  # type: ignore[return-value]
            connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (DatasetRow, DatasetVersionRow, DatasetItemRow)
        )


def test_a_folder_becomes_a_version_split_by_patient_never_by_image(platform: Platform, folder: Path) -> None:
    images = write_folder(folder, positive_patients=6, negative_patients=8)
    reports: list[dict[str, Any]] = []
    version = platform.datasets.create_from_folder(
        "wrists", folder, SYSTEM, seed=3, on_progress=reports.append
    )
    assert (version.name, version.version, version.created, version.item_count) == ("wrists", 1, True, 28)
    assert reports[-1]["files_done"] == reports[-1]["files_total"] == 28
    assert reports[-1]["stored"] == 28
    counts = version.counts
    assert counts["all"] == {
        "patients": 14,
        "images": 28,
        "positive": 6,
        "negative": 22,
        "types": {"transverse": 6},
    }
    for split in SplitValues:
        assert counts[split]["positive"] > 0 and counts[split]["negative"] > 0
    # Every image of the folder is in the store, ingested through the pipeline.
    for image in images:
        assert platform.store.get_instance(image.study_uid, None, image.sop_uid).sop_uid == image.sop_uid
    items = platform.datasets.items(SYSTEM, "wrists")
    assert len(items) == 28
    split_of: dict[str, set[SplitValues]] = {}
    for item in items:
        split_of.setdefault(item.patient_key, set()).add(item.split)
    assert len(split_of) == 14 and all(len(splits) == 1 for splits in split_of.values())
    # Patients are kept under their de-identified pseudonym, never the real Patient ID.
    assert all(key.startswith("ANON-") for key in split_of)
    by_sop = {image.sop_uid: image for image in images}
    for item in items:
        truth = by_sop[item.sop_uid].label
        assert item.label["fracture"] is truth["fracture"]
        assert item.label["boxes"] == truth["boxes"] and item.label["anatomy"] == "forearm"
        assert "patient_id" not in item.label and "file" not in item.label
    # Same seed: the same split and content.
    again = platform.datasets.create_from_folder("wrists-again", folder, SYSTEM, seed=3)
    assert again.content_hash == version.content_hash and again.counts == counts
    assert reports  # progress was reported while ingesting


def test_same_content_is_the_same_version_and_a_change_makes_a_new_one(
    platform: Platform, folder: Path
) -> None:
    images = write_folder(folder, positive_patients=4, negative_patients=4)
    first = platform.datasets.create_from_folder("legs", folder, SYSTEM, seed=1)
    same = platform.datasets.create_from_folder("legs", folder, SYSTEM, seed=1)
    assert (same.version, same.created, same.content_hash) == (1, False, first.content_hash)
    # Relabel one image and make the data set from the store: a new version, the old one unchanged.
    relabeled = images[1]
    instances = [
        LabeledInstance(
            i.study_uid,
            i.sop_uid,
            {"fracture": True, "type": "buckle", "boxes": [[0, 0, 5, 5]]} if i is relabeled else i.label,
        )
        for i in images
    ]
    second = platform.datasets.create_from_instances("legs", instances, SYSTEM, seed=1)
    assert (second.version, second.created) == (2, True)
    assert second.content_hash != first.content_hash
    assert second.counts["all"]["positive"] == first.counts["all"]["positive"] + 1
    old = {item.sop_uid: item for item in platform.datasets.items(SYSTEM, "legs", 1)}
    new = {item.sop_uid: item for item in platform.datasets.items(SYSTEM, "legs", 2)}
    assert old[relabeled.sop_uid].label["fracture"] is False
    assert new[relabeled.sop_uid].label == {"fracture": True, "type": "buckle", "boxes": [[0, 0, 5, 5]]}
    assert platform.datasets.version(SYSTEM, "legs").version == 2
    assert platform.datasets.version(SYSTEM, "legs", 1).content_hash == first.content_hash
    summary = platform.datasets.list_datasets(SYSTEM)
    assert [(s.name, s.latest_version, s.versions) for s in summary] == [("legs", 2, 2)]


def test_a_version_reads_the_pixels_it_was_made_with_after_the_instance_is_replaced(
    platform: Platform, folder: Path
) -> None:
    images = write_folder(folder, positive_patients=3, negative_patients=3, images_per_patient=1)
    platform.datasets.create_from_folder("pinned", folder, SYSTEM, seed=0)
    target = images[0]
    path = folder / target.label["file"]
    from pydicom import dcmread

    ds = dcmread(path)
    changed = (target.pixels + 1).astype(np.uint16)
    ds.PixelData = changed.tobytes()
    ds.save_as(path, enforce_file_format=True)
    with platform.store.batch(BatchReason.IMPORT) as batch:
        assert ingest_file(platform.store, path, batch).outcome is not None
    reader = platform.datasets.reader(SYSTEM, "pinned", 1, None)
    sample = next(s for s, item in zip(reader, reader.items, strict=True) if item.sop_uid == target.sop_uid)
    assert np.array_equal(sample.image, target.pixels)
    # Made again now, the content differs: a new version.
    assert platform.datasets.create_from_folder("pinned", folder, SYSTEM, seed=0).version == 2


# ----------------------------------------------------------------------------------------- refusals
def test_a_one_class_data_set_is_refused_and_nothing_is_stored(platform: Platform, folder: Path) -> None:
    write_folder(folder, positive_patients=0, negative_patients=6)
    with pytest.raises(
        BadRequest, match=r"one class: all 12 images are without a fracture \(0 positive, 12 negative\)"
    ):
        platform.datasets.create_from_folder("none", folder, SYSTEM)
    assert dataset_rows(platform) == (0, 0, 0)
    assert platform.store.study_count() == 0  # checked before anything was ingested


def test_an_empty_split_is_refused_with_the_counts_and_nothing_is_stored(
    platform: Platform, folder: Path
) -> None:
    write_folder(folder, positive_patients=1, negative_patients=1)
    with pytest.raises(BadRequest) as refused:
        platform.datasets.create_from_folder("tiny", folder, SYSTEM)
    message = refused.value.message
    assert "split 'validation' would be empty" in message
    assert "train: 2 patients, 1 positive and 3 negative images" in message
    assert dataset_rows(platform) == (0, 0, 0)
    assert platform.store.study_count() == 0


def test_a_split_without_a_class_is_refused(platform: Platform, folder: Path) -> None:
    write_folder(folder, positive_patients=2, negative_patients=6)
    with pytest.raises(BadRequest, match="split 'validation' would have no positive image"):
        platform.datasets.create_from_folder("few", folder, SYSTEM)
    assert dataset_rows(platform) == (0, 0, 0)


def test_bad_truth_and_labels_are_refused_naming_the_problem(platform: Platform, folder: Path) -> None:
    images = write_folder(folder, positive_patients=3, negative_patients=3)
    truth = json.loads((folder / "truth.json").read_text())
    truth["images"][images[0].sop_uid]["boxes"] = [[3, 4, 200, 18]]
    (folder / "truth.json").write_text(json.dumps(truth))
    with pytest.raises(BadRequest, match=r"box \[3, 4, 200, 18\] lies outside the 32×24 image"):
        platform.datasets.create_from_folder("bad", folder, SYSTEM)
    truth["images"]["1.2.3.4"] = {"fracture": False, "type": None, "boxes": []}
    (folder / "truth.json").write_text(json.dumps(truth))
    with pytest.raises(
        BadRequest, match=r"names 1 SOP instance\(s\) with no DICOM file in the folder: 1\.2\.3\.4"
    ):
        platform.datasets.create_from_folder("bad", folder, SYSTEM)
    with pytest.raises(BadRequest, match="must be an absolute directory"):
        platform.datasets.create_from_folder("bad", "relative/path", SYSTEM)
    with pytest.raises(BadRequest, match="data set name 'Bad Name' is not valid"):
        platform.datasets.create_from_folder("Bad Name", folder, SYSTEM)
    with platform.store.batch(BatchReason.IMPORT) as batch:
        ingest_file(platform.store, folder / images[0].label["file"], batch)
    instance = LabeledInstance(
        images[0].study_uid, images[0].sop_uid, {"fracture": False, "boxes": [[0, 0, 1, 1]]}
    )
    with pytest.raises(BadRequest, match="an image without a fracture has boxes"):
        platform.datasets.create_from_instances("bad", [instance], SYSTEM)
    assert dataset_rows(platform) == (0, 0, 0)


# ----------------------------------------------------------------------------------------- reading
def test_the_reader_gives_the_sent_pixels_in_the_de_identified_view(platform: Platform, folder: Path) -> None:
    images = write_folder(folder, positive_patients=3, negative_patients=3)
    platform.datasets.create_from_folder("view", folder, SYSTEM, seed=5)
    reader = platform.datasets.reader(DATA_SCIENTIST, "view", None, SplitValues.TRAIN)
    assert 0 < len(reader) < len(images)
    by_pseudonym = {platform.deidentifier.uid(i.sop_uid): i for i in images}
    for index, sample in enumerate(reader):
        image = by_pseudonym[sample.key]  # the data scientist sees the pseudonymous UID only
        assert sample.split is SplitValues.TRAIN
        assert sample.image.dtype == np.uint16 and sample.image.shape == (24, 32)
        assert np.array_equal(sample.image, image.pixels)
        assert sample.label is image.label["fracture"]
        assert sample.boxes.shape == ((1, 4) if image.label["fracture"] else (0, 4))
        assert sample.fracture_type == image.label["type"]
        assert sample.photometric == "MONOCHROME2"
        header = reader.header(index)
        assert header["00100020"]["Value"] == [sample.patient_id]  # Patient ID: the pseudonym
        assert sample.patient_id.startswith("ANON-") and sample.patient_id != image.patient_id
        assert header["00100010"]["Value"][0]["Alphabetic"] != f"Test^{image.patient_id}"
        assert header["00080018"]["Value"] == [sample.key]
    # Slices are readers too (nothing decoded until an item is asked for).
    assert len(reader[1:3]) == 2 and reader[1:3][0].key == reader[1].key
    # An admin (full view) sees the real UIDs.
    assert {s.key for s in platform.datasets.reader(SYSTEM, "view", None, None)} == {
        i.sop_uid for i in images
    }


def test_data_scientists_name_instances_by_their_pseudonyms(platform: Platform, folder: Path) -> None:
    images = write_folder(folder, positive_patients=3, negative_patients=3)
    with platform.store.batch(BatchReason.IMPORT) as batch:
        for image in images:
            ingest_file(platform.store, folder / image.label["file"], batch)
    pseudo = platform.deidentifier.uid
    instances = [LabeledInstance(pseudo(i.study_uid), pseudo(i.sop_uid), i.label) for i in images]
    version = platform.datasets.create_from_instances("from-store", instances, DATA_SCIENTIST, seed=2)
    assert version.item_count == 12 and version.source == {"kind": "instances"}
    shown = platform.datasets.items(DATA_SCIENTIST, "from-store")
    assert {item.sop_uid for item in shown} == {pseudo(i.sop_uid) for i in images}
    assert {item.sop_uid for item in platform.datasets.items(SYSTEM, "from-store")} == {
        i.sop_uid for i in images
    }


def test_a_radiologist_may_not_make_or_read_data_sets(platform: Platform, folder: Path) -> None:
    images = write_folder(folder, positive_patients=3, negative_patients=3)
    with pytest.raises(Forbidden, match="may not manage datasets"):
        platform.datasets.create_from_folder("x", folder, RADIOLOGIST)
    # Making one from a folder ingests: a data scientist may not ingest.
    with pytest.raises(Forbidden, match="data-scientist role may not ingest"):
        platform.datasets.create_from_folder("x", folder, DATA_SCIENTIST)
    platform.datasets.create_from_folder("x", folder, SYSTEM)
    with pytest.raises(Forbidden, match="may not read datasets"):
        platform.datasets.reader(RADIOLOGIST, "x", None, None)
    with pytest.raises(Forbidden):
        platform.datasets.list_datasets(RADIOLOGIST)
    assert len(platform.datasets.reader(DATA_SCIENTIST, "x", None, None)) == len(images)


# ----------------------------------------------------------------------------------------- HTTP API
@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[RunningServer]:
    from tests.conftest import start_server

    yield from start_server(server_settings(tmp_path / "data", dicom_port=0))


def wait_for_job(server: RunningServer, url: str, token: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = authed.get(url, headers={"Authorization": f"Bearer {token}"}).json()
        if job["state"] not in ("QUEUED", "RUNNING") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_api_makes_lists_and_shows_data_sets_by_permission(api_server: RunningServer, folder: Path) -> None:
    images = write_folder(folder, positive_patients=3, negative_patients=3)
    base = f"{api_server.url}/api/v1/datasets"
    scientist = {"Authorization": f"Bearer {api_server.token_for('data-scientist')}"}
    radiologist = {"Authorization": f"Bearer {api_server.token_for('radiologist')}"}

    # From a folder (an admin: it ingests): a job with progress, then the version.
    response = authed.post(
        base, json={"name": "wrists", "from_folder": str(folder), "seed": 4, "split": "70/15/15"}
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(api_server, response.headers["Location"], api_server.token)
    assert job["state"] == "SUCCEEDED", job
    assert job["progress"]["files_done"] == job["progress"]["files_total"] == 12
    assert (job["progress"]["dataset"], job["progress"]["version"]) == ("wrists", 1)

    shown = authed.get(f"{base}/wrists", headers=scientist)
    assert shown.status_code == 200
    body = shown.json()
    assert body["version"] == 1 and body["item_count"] == 12
    assert body["counts"]["all"]["positive"] == 3 and body["counts"]["all"]["negative"] == 9
    assert set(body["counts"]) == {"train", "validation", "test", "all"}
    assert authed.get(f"{base}/wrists/versions/1", headers=scientist).json() == body
    listed = authed.get(base, headers=scientist).json()
    assert [(d["name"], d["latest_version"]) for d in listed] == [("wrists", 1)]

    page = authed.get(
        f"{base}/wrists/versions/1/items", params={"limit": 5, "offset": 0}, headers=scientist
    ).json()
    rest = authed.get(
        f"{base}/wrists/versions/1/items", params={"limit": 50, "offset": 5}, headers=scientist
    ).json()
    assert len(page["items"]) == 5 and len(rest["items"]) == 7 and page["total"] == 12
    pseudonyms = {api_server.platform.deidentifier.uid(i.sop_uid) for i in images}
    assert {item["sop_uid"] for item in page["items"] + rest["items"]} == pseudonyms
    test_items = authed.get(
        f"{base}/wrists/versions/1/items", params={"split": "test"}, headers=scientist
    ).json()
    assert test_items["items"] and all(item["split"] == "test" for item in test_items["items"])

    # From stored instances named as the data scientist sees them: a new version (other labels).
    pseudo = api_server.platform.deidentifier.uid
    instances = [
        {
            "study_uid": pseudo(i.study_uid),
            "sop_uid": pseudo(i.sop_uid),
            "label": {**i.label, "anatomy": "wrist"},
        }
        for i in images
    ]
    made = authed.post(base, json={"name": "wrists", "instances": instances, "seed": 4}, headers=scientist)
    assert made.status_code == 201, made.text
    assert made.json()["version"] == 2
    again = authed.post(base, json={"name": "wrists", "instances": instances, "seed": 4}, headers=scientist)
    assert again.status_code == 200 and again.json()["version"] == 2  # the same content: the same version

    # Bad input: a clear problem, nothing changed.
    one_class = [{**item, "label": {"fracture": False, "type": None, "boxes": []}} for item in instances]
    refused = authed.post(base, json={"name": "wrists", "instances": one_class}, headers=scientist)
    assert refused.status_code == 400
    assert "one class" in refused.json()["detail"]
    assert authed.get(f"{base}/wrists", headers=scientist).json()["version"] == 2
    missing = authed.get(f"{base}/wrists/versions/9", headers=scientist)
    assert missing.status_code == 404 and "versions are 1, 2" in missing.json()["detail"]

    # A radiologist may neither read nor make data sets.
    assert authed.get(base, headers=radiologist).status_code == 403
    assert authed.get(f"{base}/wrists", headers=radiologist).status_code == 403
    assert authed.get(f"{base}/wrists/versions/1/items", headers=radiologist).status_code == 403
    denied = authed.post(base, json={"name": "r", "instances": instances}, headers=radiologist)
    assert denied.status_code == 403
    # A data scientist may not ingest a folder.
    assert (
        authed.post(base, json={"name": "f", "from_folder": str(folder)}, headers=scientist).status_code
        == 403
    )

    # Creation is audited, with the data set and version.
    api_server.platform.audit.flush()
    from radstack.security.audit import AuditLog

    records = [r for r in AuditLog(api_server.platform.store.engine).records() if r.resource.get("dataset")]
    assert {(r.resource["dataset"], r.resource.get("version")) for r in records} >= {
        ("wrists", 1),
        ("wrists", 2),
    }


# ----------------------------------------------------------------------------------------- CLI
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("radstack")), "datasets", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_creates_lists_and_shows_a_data_set(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radstack.cli import main

    write_folder(folder, positive_patients=3, negative_patients=3)
    data = str(tmp_path / "cli-data")
    made = run_cli(
        "create", "--name", "demo", "--from-folder", str(folder), "--seed", "2", "--split", "70/15/15",
        "--data-dir", data,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "12/12 files" in made.stderr  # the progress bar
    assert "data set demo version 1: 12 images, seed 2, split 70/15/15" in made.stdout
    assert all(split in made.stdout for split in ("train", "validation", "test"))
    # The other commands in this process (a process start costs seconds here).
    assert main(["datasets", "list", "--data-dir", data]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["datasets", "show", "demo", "--data-dir", data]) == 0
    shown = capsys.readouterr().out
    assert "version 1" in shown and "3 positive and 9 negative images in all" in shown
    write_folder(tmp_path / "negatives", positive_patients=0, negative_patients=3)
    refused = main(
        [
            "datasets",
            "create",
            "--name",
            "neg",
            "--from-folder",
            str(tmp_path / "negatives"),
            "--data-dir",
            data,
        ]
    )
    assert refused == 2 and "one class" in capsys.readouterr().err
    assert main(["datasets", "show", "neg", "--data-dir", data]) == 2
    assert "data set 'neg' does not exist" in capsys.readouterr().err
