"""Synthetic fracture radiographs: same seed same bytes, the truth file, every fracture type, valid DX
DICOM that dciodvfy passes and the ingest stores, and no label shortcut in simple image statistics."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from radstack.ai._plan import plan
from radstack.ai._rg3 import composite
from radstack.ai._scene import render
from radstack.ai.synthetic import (
    DX_FOR_PRESENTATION,
    FractureType,
    Options,
    SyntheticDataError,
    generate,
    generate_twins,
    to_dataset,
    write_dataset,
)
from tests.conftest import require_binary

RADSTACK = str(Path(sys.executable).with_name("radstack"))
#: Small images keep the tests fast (a 2500 × 2048 image at 0.06 is 150 × 123).
SMALL = 0.06


def radstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RADSTACK, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )


def digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Twelve images of the CLI: half with a fracture, a third composited onto RG3."""
    out = tmp_path_factory.mktemp("synthetic") / "set"
    done = radstack(
        "demo-data",
        "fractures",
        "--out",
        str(out),
        "--count",
        "12",
        "--seed",
        "7",
        "--scale",
        str(SMALL),
        "--rg3-rate",
        "0.34",
    )
    assert done.returncode == 0, done.stderr
    assert "12 images of 12 patients" in done.stdout
    assert f"radstack import {out / 'dicom'}" in done.stdout
    assert "12/12 images" in done.stderr  # the progress bar's last state
    return out, json.loads((out / "truth.json").read_text())


def test_the_same_seed_makes_the_same_bytes_and_another_seed_other_images(
    tmp_path: Path, dataset: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = dataset
    again = tmp_path / "again"
    write_dataset(again, 12, 7, Options(scale=SMALL, rg3_rate=0.34))
    assert digests(again) == digests(out)
    other = tmp_path / "other"
    document = write_dataset(other, 12, 8, Options(scale=SMALL, rg3_rate=0.34))
    assert not set(document["images"]) & {
        path.split("/")[-1][:-4] for path in digests(out) if path.endswith(".dcm")
    }
    first = {uid: image for uid, image in document["images"].items()}
    pixels = [pydicom.dcmread(other / image["file"]).pixel_array for image in first.values()]
    seven = [
        pydicom.dcmread(out / path).pixel_array for path in sorted(digests(out)) if path.endswith(".dcm")
    ]
    assert all(a.shape != b.shape or not np.array_equal(a, b) for a in pixels for b in seven)
    # in memory: the same pixels as the file
    image = generate(7, 3, Options(scale=SMALL, rg3_rate=0.34))
    on_disk = pydicom.dcmread(out / dataset[1]["images"][image.truth["sop_instance_uid"]]["file"])
    assert np.array_equal(on_disk.pixel_array, image.pixels)


def test_the_truth_file_describes_every_image(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, truth = dataset
    assert truth["generator"] == "radstack.ai.synthetic" and truth["seed"] == 7 and truth["count"] == 12
    assert len(truth["images"]) == 12
    for uid, image in truth["images"].items():
        ds = pydicom.dcmread(out / image["file"])
        assert ds.SOPInstanceUID == uid == image["sop_instance_uid"]
        assert ds.PatientID == image["patient_id"] and ds.StudyInstanceUID == image["study_instance_uid"]
        assert (ds.Rows, ds.Columns) == (image["rows"], image["columns"])
        assert image["anatomy"] in {"lower_leg", "forearm", "wrist", "thigh", "upper_arm"}
        assert image["view"] in {"AP", "PA", "LAT", "OBL"} and image["laterality"] in {"L", "R"}
        assert image["source"] == ("RG3" if image["composited"] else "synthetic")
        assert isinstance(image["fracture"], bool)
        if image["fracture"]:
            assert image["type"] in set(FractureType) and isinstance(image["displaced"], bool)
            assert image["boxes"] and len(image["findings"]) == len(image["boxes"])
            assert [f["box"] for f in image["findings"]] == image["boxes"]
        else:
            assert image["type"] is None and image["boxes"] == [] and image["findings"] == []
        for x0, y0, x1, y1 in image["boxes"]:
            assert 0 <= x0 < x1 <= image["columns"] and 0 <= y0 < y1 <= image["rows"]
    assert any(image["composited"] for image in truth["images"].values())
    assert any(image["fracture"] for image in truth["images"].values())


def test_boxes_are_on_bone_and_tight() -> None:
    """Each box holds bone (bright: brighter than most of the field) and is not a big share of the image."""
    options = Options(scale=0.15, fracture_rate=1.0, rg3_rate=0.2)
    for index in range(18):
        image = generate(11, index, options)
        pixels = image.pixels
        values, counts = np.unique(pixels, return_counts=True)
        field = pixels[pixels != values[counts.argmax()]]  # not the collimated border (flat white)
        for x0, y0, x1, y1 in image.truth["boxes"]:
            inside = pixels[y0:y1, x0:x1]
            assert np.percentile(inside, 90) > np.percentile(field, 60), (index, image.truth)
            assert (x1 - x0) * (y1 - y0) < 0.08 * pixels.size, (index, image.truth)


def test_the_fracture_rate_is_respected() -> None:
    for rate in (0.0, 0.3, 1.0):
        labels = [
            generate(3, index, Options(scale=0.03, fracture_rate=rate, rg3_rate=0.0)).truth["fracture"]
            for index in range(60)
        ]
        assert abs(sum(labels) / len(labels) - rate) <= 0.12, (rate, sum(labels))


def test_a_short_run_holds_every_fracture_type_displaced_or_not() -> None:
    images = [generate(5, index, Options(scale=0.03, fracture_rate=1.0, rg3_rate=0.0)) for index in range(12)]
    assert {image.truth["type"] for image in images} == set(FractureType)
    assert {image.truth["displaced"] for image in images} == {True, False}
    assert len({image.truth["anatomy"] for image in images}) >= 3


def test_a_fracture_changes_the_image_only_in_its_boxes() -> None:
    """An image and its twin without the fracture (the same patient, view and exposure) differ only
    inside the boxes: no marker, noise, brightness or collimation tells the label. (Displaced
    fractures move the distal limb as well, so they are left out.)"""
    options = Options(scale=0.15, fracture_rate=1.0, rg3_rate=0.3)
    seen: Counter[tuple[bool, str]] = Counter()
    for index in range(30):
        patient = plan(4, index, options)
        if patient.displaced:
            continue
        draw = composite if patient.composite else render
        broken = draw(4, patient, 0, options)
        whole = draw(4, replace(patient, fracture=None), 0, options)
        assert broken.header["bits"] == whole.header["bits"] and not whole.findings
        top = (1 << int(broken.header["bits"])) - 1
        change = np.abs(broken.pixels.astype(np.int64) - whole.pixels.astype(np.int64)) / top
        near = np.zeros(change.shape, dtype=bool)
        reach = max(3, round(8 / broken.spacing))  # unsharp masking spreads any change a few mm
        for x0, y0, x1, y1 in broken.boxes:
            near[max(0, y0 - reach) : y1 + reach, max(0, x0 - reach) : x1 + reach] = True
        assert change[~near].max() < 0.01, (index, patient.fracture, change[~near].max())
        assert change[near].max() > 0.005, (index, patient.fracture)
        seen[(patient.composite, str(patient.fracture))] += 1
    assert len({kind for _, kind in seen}) >= 4 and any(composited for composited, _ in seen)


def test_no_shortcut_in_image_statistics() -> None:
    """Brightness, contrast, noise and bit depth do not tell fracture from normal (a shortcut such as a
    fracture-only intensity shift or noise level would be many standard errors)."""
    rows = []
    for index in range(120):
        image = generate(21, index, Options(scale=0.04, fracture_rate=0.5, rg3_rate=0.1))
        top = float((1 << int(image.header["bits"])) - 1)
        pixels = image.pixels.astype(np.float64) / top
        noise = np.median(np.abs(np.diff(pixels, axis=1)))
        rows.append((image.truth["fracture"], pixels.mean(), pixels.std(), noise, image.header["bits"]))
    table = np.array([row[1:] for row in rows])
    label = np.array([row[0] for row in rows])
    assert 40 <= label.sum() <= 80
    for column in range(table.shape[1]):
        a, b = table[label, column], table[~label, column]
        # within chance: three standard errors of the difference of the two means
        error = np.sqrt(a.var() / len(a) + b.var() / len(b)) or 1e-9
        assert abs(a.mean() - b.mean()) < 3 * error, (column, a.mean(), b.mean(), error)


def test_the_files_are_dx_for_presentation_marked_synthetic(dataset: tuple[Path, dict[str, Any]]) -> None:
    out, truth = dataset
    for image in truth["images"].values():
        ds = pydicom.dcmread(out / image["file"])
        assert ds.SOPClassUID == DX_FOR_PRESENTATION and ds.Modality == "DX"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.PixelRepresentation == 0
        assert 12 <= ds.BitsStored <= 16 and ds.pixel_array.max() < (1 << ds.BitsStored)
        assert str(ds.PatientName).startswith("SYNTHETIC^") and ds.BurnedInAnnotation == "NO"
        assert "SYNTHETIC IMAGE, NOT A PATIENT" in ds.ImageComments
        assert ds.PatientIdentityRemoved == "YES" and ds.ClinicalTrialProtocolID == "SYNTHETIC-FRACTURES"
        assert ds.ImageLaterality == image["laterality"]
        if image["composited"]:
            assert ds.ImageType[0] == "DERIVED" and ds.LossyImageCompression == "01"
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID.startswith("1.3.6.1.4.1.5962.")


def test_dciodvfy_finds_nothing_to_report(dataset: tuple[Path, dict[str, Any]]) -> None:
    dciodvfy = require_binary("dciodvfy")
    out, truth = dataset
    for image in truth["images"].values():
        done = subprocess.run(
            [dciodvfy, str(out / image["file"])], capture_output=True, text=True, timeout=60
        )
        problems = [
            line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("Error", "Warning"))
        ]
        assert problems == [], (image["file"], problems)


def test_radstack_import_stores_every_image(tmp_path: Path, dataset: tuple[Path, dict[str, Any]]) -> None:
    out, _ = dataset
    done = radstack("import", str(out / "dicom"), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 stored" in done.stdout and "0 refused" in done.stdout


def test_several_views_per_patient_share_a_study_and_the_fracture() -> None:
    options = Options(scale=0.05, fracture_rate=1.0, images_per_patient=3, rg3_rate=0.0)
    images = [generate(9, index, options) for index in range(9)]
    for first in range(0, 9, 3):
        views = images[first : first + 3]
        assert len({image.truth["patient_id"] for image in views}) == 1
        assert len({image.truth["study_instance_uid"] for image in views}) == 1
        assert len({image.truth["series_instance_uid"] for image in views}) == 3
        assert len({image.truth["type"] for image in views}) == 1
        assert len({image.truth["view"] for image in views}) >= 2
        assert all(image.truth["boxes"] for image in views)
    ds = to_dataset(images[0], 9)
    assert ds.SeriesNumber == 1 and to_dataset(images[1], 9).SeriesNumber == 2


def test_bad_requests_are_refused_with_the_reason(
    tmp_path: Path, dataset: tuple[Path, dict[str, Any]]
) -> None:
    with pytest.raises(SyntheticDataError, match=r"fracture rate 1\.5"):
        Options(fracture_rate=1.5)
    with pytest.raises(SyntheticDataError, match="scale 0"):
        Options(scale=0)
    out, _ = dataset
    done = radstack("demo-data", "fractures", "--out", str(out), "--count", "1", "--seed", "7")
    assert done.returncode == 2 and "already holds a data set" in done.stderr
    done = radstack(
        "demo-data",
        "fractures",
        "--out",
        str(tmp_path / "x"),
        "--count",
        "2",
        "--seed",
        "1",
        "--images-per-patient",
        "5",
    )
    assert done.returncode == 2 and "5 images per patient" in done.stderr
    assert not (tmp_path / "x" / "truth.json").exists()


def test_the_sizes_are_realistic_by_default() -> None:
    leg = generate(2, 0, Options(rg3_rate=0.0, fracture_rate=0.0))
    counts = Counter(
        str(generate(2, index, Options(scale=0.03, rg3_rate=0.0)).truth["anatomy"]) for index in range(20)
    )
    assert leg.pixels.shape in {(2500, 2048), (1500, 1200)}
    assert leg.pixels.dtype == np.uint16
    assert counts["wrist"] and counts["lower_leg"]
    wide = generate(2, 0, Options(size=(256, 200), rg3_rate=1.0))
    assert wide.pixels.shape == (256, 200) and wide.truth["composited"]


def test_twins_are_one_patient_with_and_without_the_fracture() -> None:
    options = Options(scale=0.08, rg3_rate=0.0)
    for index in range(4):
        broken, intact = generate_twins(9, index, options)
        assert broken.truth["fracture"] and broken.truth["boxes"]
        assert not intact.truth["fracture"] and intact.truth["boxes"] == []
        assert broken.truth["patient_id"] == intact.truth["patient_id"]
        assert broken.pixels.shape == intact.pixels.shape
        # The fractured twin is the data set's own image when every patient is broken.
        same = generate(9, index, Options(scale=0.08, rg3_rate=0.0, fracture_rate=1.0))
        assert np.array_equal(same.pixels, broken.pixels)
        if not broken.truth["displaced"]:  # a displaced fracture moves the distal limb as well
            change = np.abs(broken.pixels.astype(np.int64) - intact.pixels.astype(np.int64))
            y, x = np.unravel_index(np.argmax(change), change.shape)
            assert change.max() > 0
            assert any(
                x0 - 3 <= x < x1 + 3 and y0 - 3 <= y < y1 + 3 for x0, y0, x1, y1 in broken.truth["boxes"]
            )
