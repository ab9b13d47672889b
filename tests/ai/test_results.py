"""AI results as DICOM SR: findings on synthetic radiographs become a TID 1500 report that dciodvfy
passes and highdicom reads back with the same boxes, tracking UIDs and scores; bad input is refused
with a message naming the problem."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from radstack.ai.results import (
    ABSENT,
    CERTAINTY_OF_FINDING,
    FRACTURE,
    PRESENT,
    QUALITATIVE_EVALUATIONS,
    SR_SOP_CLASS,
    Finding,
    ReportError,
    fracture_report,
    read_fracture_report,
)
from radstack.ai.synthetic import Options, generate, to_dataset
from tests.conftest import require_binary

#: Two views of one patient with a fracture, small enough to be quick.
VIEWS = Options(scale=0.2, fracture_rate=1.0, images_per_patient=2, rg3_rate=0.0)
WHEN = datetime(2026, 3, 2, 14, 5, 9)


def header(index: int) -> tuple[pydicom.Dataset, list[list[float]]]:
    """View ``index`` of the synthetic patient as a header without Pixel Data, and its truth boxes."""
    image = generate(11, index, VIEWS)
    ds = to_dataset(image, 11)
    del ds.PixelData
    return ds, image.truth["boxes"]


@pytest.fixture(scope="module")
def views() -> list[tuple[pydicom.Dataset, list[list[float]]]]:
    return [header(0), header(1)]


def report(
    sources: list[pydicom.Dataset], findings: list[Finding], probability: float = 0.9
) -> pydicom.Dataset:
    return fracture_report(
        sources,
        findings,
        model="fracture",
        version=3,
        probability=probability,
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        content_time=WHEN,
    )


def written_and_read(ds: pydicom.Dataset, path: Path) -> hd.sr.Comprehensive3DSR:
    """Write ``ds`` as a Part-10 file, check it with dciodvfy, read it back with highdicom."""
    ds.save_as(path, enforce_file_format=True)
    done = subprocess.run([require_binary("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    problems = [
        line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("Error", "Warning"))
    ]
    assert problems == [], problems
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    return sr


def copied(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy to change (``pydicom.Dataset(ds)`` shares ``ds``'s elements)."""
    copy = pydicom.Dataset()
    copy.update(ds)
    return copy


def finding(
    image: pydicom.Dataset, box: list[float] | tuple[float, ...], probability: float = 0.8
) -> Finding:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Finding("fracture", probability, (x0, y0, x1, y1), image.SOPInstanceUID, generate_uid())


def tid_1500(sr: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    content = sr.content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def study_verdict(sr: hd.sr.Comprehensive3DSR) -> tuple[str, float]:
    """The report-level Fracture of bone evaluation and its certainty, found with highdicom."""
    (container,) = hd.sr.utils.find_content_items(sr, name=QUALITATIVE_EVALUATIONS)
    (verdict,) = hd.sr.utils.find_content_items(container, name=FRACTURE)
    (number,) = hd.sr.utils.find_content_items(verdict, name=CERTAINTY_OF_FINDING)
    return verdict.ConceptCodeSequence[0].CodeValue, float(number.MeasuredValueSequence[0].NumericValue)


def test_two_findings_are_written_as_tid_1500_and_read_back(
    views: list[tuple[pydicom.Dataset, list[list[float]]]], tmp_path: Path
) -> None:
    image, truth = views[0]
    findings = [finding(image, truth[0], 0.8734567), finding(image, (10.5, 20.25, 60, 90), 0.31)]
    sr = written_and_read(report([image], findings, probability=0.92), tmp_path / "two.dcm")

    assert sr.SOPClassUID == SR_SOP_CLASS and sr.Modality == "SR"
    assert sr.SeriesDescription == "AI fracture v3" and sr.SeriesNumber == 9001
    assert (sr.Manufacturer, sr.ManufacturerModelName, sr.SoftwareVersions) == ("radstack", "fracture", "3")
    assert (str(sr.ContentDate), str(sr.ContentTime)) == ("20260302", "140509")
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert sr.StudyInstanceUID == image.StudyInstanceUID and sr.PatientID == image.PatientID
    assert sr.SeriesInstanceUID != image.SeriesInstanceUID
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report

    groups = tid_1500(sr).get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["fracture 1", "fracture 2"]
    assert [g.tracking_uid for g in groups] == [f.tracking_uid for f in findings]
    for group, written in zip(groups, findings, strict=True):
        assert group.finding_type == FRACTURE
        region = group.roi
        assert isinstance(region, hd.sr.ImageRegion)
        assert (
            region.name == codes.DCM.ImageRegion and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        )
        points = region.value
        assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])  # closed
        x0, y0, x1, y1 = written.box
        np.testing.assert_allclose(points, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=0.01)
        assert (
            region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == image.SOPInstanceUID
        )
        (score,) = group.get_measurements(name=CERTAINTY_OF_FINDING)
        assert score.unit == codes.UCUM.Percent
        assert score.value == pytest.approx(written.probability * 100, abs=1e-4)
        (name,) = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmName)
        (version,) = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmVersion)
        assert (name.TextValue, version.TextValue) == ("fracture", "3")
    assert study_verdict(sr) == (PRESENT.value, 92.0)

    back = read_fracture_report(sr)
    assert back.fracture and back.probability == pytest.approx(0.92)
    assert (back.model, back.version) == ("fracture", "3")
    for read, written in zip(back.findings, findings, strict=True):
        assert (read.label, read.sop_uid, read.tracking_uid) == (
            written.label,
            written.sop_uid,
            written.tracking_uid,
        )
        assert read.box == pytest.approx(written.box, abs=0.01)
        assert read.probability == pytest.approx(written.probability, abs=1e-6)


def test_a_study_without_a_finding_gets_a_report_that_says_so(
    views: list[tuple[pydicom.Dataset, list[list[float]]]], tmp_path: Path
) -> None:
    images = [image for image, _ in views]
    sr = written_and_read(report(images, [], probability=0.04), tmp_path / "none.dcm")
    assert tid_1500(sr).get_planar_roi_measurement_groups() == []
    assert hd.sr.utils.find_content_items(sr, name=codes.DCM.ImagingMeasurements) == []
    assert study_verdict(sr) == (ABSENT.value, 4.0)
    # The images the model checked are listed, and are the report's evidence.
    library = hd.sr.utils.find_content_items(sr, name=codes.DCM.ImageLibrary)
    listed = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in hd.sr.utils.find_content_items(
            library[0], value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True
        )
    ]
    assert listed == [image.SOPInstanceUID for image in images]
    assert {uid for _, _, uid, _ in sr.get_evidence()} == set(listed)
    back = read_fracture_report(sr)
    assert back.findings == () and not back.fracture and back.probability == pytest.approx(0.04)


def test_findings_on_two_images_of_the_study_reference_each_image(
    views: list[tuple[pydicom.Dataset, list[list[float]]]], tmp_path: Path
) -> None:
    (first, first_truth), (second, second_truth) = views
    findings = [finding(first, first_truth[0]), finding(second, second_truth[0], 0.55)]
    sr = written_and_read(report([first, second], findings), tmp_path / "two-images.dcm")
    back = read_fracture_report(sr)
    assert [f.sop_uid for f in back.findings] == [first.SOPInstanceUID, second.SOPInstanceUID]
    for read, written in zip(back.findings, findings, strict=True):
        assert read.box == pytest.approx(written.box, abs=0.01)
    assert {series for _, series, _, _ in sr.get_evidence()} == {
        first.SeriesInstanceUID,
        second.SeriesInstanceUID,
    }


def test_box_edges_are_scoord_coordinates_with_the_origin_at_the_first_pixels_corner(
    views: list[tuple[pydicom.Dataset, list[list[float]]]],
) -> None:
    """PS3.3 §C.18.6.1.1 (and highdicom): (0, 0) is the top left corner of the top left pixel and
    (Columns, Rows) the bottom right corner of the last, so an edge box needs no conversion: the box
    around pixel (column 4, row 7) is 4\\7 to 5\\8, and the whole image is 0\\0 to Columns\\Rows."""
    image, _ = views[0]
    columns, rows = image.Columns, image.Rows
    one_pixel = finding(image, (4, 7, 5, 8))
    whole = finding(image, (0, 0, columns, rows))
    sr = report([image], [one_pixel, whole])
    scoords = hd.sr.utils.find_content_items(sr, name=codes.DCM.ImageRegion, recursive=True)
    assert [list(item.GraphicData) for item in scoords] == [
        [4, 7, 5, 7, 5, 8, 4, 8, 4, 7],
        [0, 0, columns, 0, columns, rows, 0, rows, 0, 0],
    ]
    # Half a pixel beyond the last pixel's edge is outside the image.
    with pytest.raises(ReportError, match="outside image"):
        report([image], [finding(image, (0, 0, columns + 0.5, rows))])


def test_a_cr_without_pixel_spacing_or_patient_attributes_still_makes_a_valid_report(tmp_path: Path) -> None:
    """RG3 (a real CR) has no Imager Pixel Spacing, which highdicom's own Image Library requires."""
    path = get_testdata_file("RG3_UNCI.dcm")
    assert path is not None, "pydicom-data's RG3 is missing"
    rg3 = pydicom.dcmread(path, stop_before_pixels=True)
    # Study ID is kept: without one dciodvfy warns that a DICOMDIR could not be built, rightly.
    for keyword in ("ReferringPhysicianName", "AccessionNumber"):
        if keyword in rg3:
            delattr(rg3, keyword)
    box = finding(rg3, (790, 400, 930, 520), 0.7)
    sr = written_and_read(report([rg3], [box]), tmp_path / "rg3.dcm")
    assert read_fracture_report(sr).findings[0].box == pytest.approx(box.box)
    assert "AccessionNumber" not in rg3  # the caller's header is left as it was


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("foreign image", "not among the report's sources"),
        ("outside", "outside image"),
        ("inverted", "inverted or empty"),
        ("empty box", "inverted or empty"),
        ("not finite", "not finite"),
        ("score", "not a probability"),
        ("study probability", "study-level probability 1.5 is not a probability"),
        ("label", "finding label 'crack' is unknown"),
        ("same tracking uid", "given to two findings"),
        ("bad tracking uid", "tracking_uid '1.02.3' is not a valid UID"),
        ("bad series uid", "series_uid 'series' is not a valid UID"),
        ("version", "model version 0 is not a positive version number"),
        ("two studies", "one report per study"),
        ("no rows", "Rows of source image 1"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(
    views: list[tuple[pydicom.Dataset, list[list[float]]]], change: str, message: str
) -> None:
    image, truth = views[0]
    sources = [image]
    good = finding(image, truth[0])
    findings = [good]
    arguments: dict[str, object] = {"probability": 0.9, "series_uid": generate_uid(), "version": 3}
    columns = image.Columns
    if change == "foreign image":
        findings = [Finding("fracture", 0.5, good.box, generate_uid(), generate_uid())]
    elif change == "outside":
        findings = [finding(image, (columns - 5, 0, columns + 3, 10))]
    elif change == "inverted":
        findings = [finding(image, (30, 40, 10, 60))]
    elif change == "empty box":
        findings = [finding(image, (10, 40, 10, 60))]
    elif change == "not finite":
        findings = [finding(image, (10, 40, float("nan"), 60))]
    elif change == "score":
        findings = [finding(image, truth[0], -0.1)]
    elif change == "study probability":
        arguments["probability"] = 1.5
    elif change == "label":
        findings = [Finding("crack", 0.5, good.box, image.SOPInstanceUID, generate_uid())]
    elif change == "same tracking uid":
        findings = [good, Finding("fracture", 0.4, (1, 1, 9, 9), image.SOPInstanceUID, good.tracking_uid)]
    elif change == "bad tracking uid":
        findings = [Finding("fracture", 0.4, good.box, image.SOPInstanceUID, "1.02.3")]
    elif change == "bad series uid":
        arguments["series_uid"] = "series"
    elif change == "version":
        arguments["version"] = 0
    elif change == "two studies":
        other = copied(views[1][0])
        other.StudyInstanceUID = generate_uid()
        sources = [image, other]
    elif change == "no rows":
        headless = copied(image)
        del headless.Rows
        sources = [headless]
    with pytest.raises(ReportError, match=message) as raised:
        fracture_report(
            sources,
            findings,
            model="fracture",
            version=arguments["version"],  # type: ignore[arg-type]
            probability=arguments["probability"],  # type: ignore[arg-type]
            series_uid=str(arguments["series_uid"]),
            sop_uid=generate_uid(),
        )
    assert isinstance(raised.value, ValueError)


def test_no_source_image_is_refused() -> None:
    with pytest.raises(ReportError, match="no source images"):
        report([], [])
