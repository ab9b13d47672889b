"""Labels from SR and SEG (labeling/labels.py): OHIF's reports, radstack's AI report, highdicom SEGs.

The OHIF reports are built item for item as OHIF 3.13.2 writes them (its ``@cornerstonejs/adapters``
``Cornerstone3D/*`` adapters and dcmjs' ``TID300`` classes, read in the shipped bundle): the SCOORD is
nameless, INFERRED FROM, under the first NUM; the label is a TEXT Comment (121106, DCM) and the
free-text code it replaces is dropped; older versions keep the code (scheme CORNERSTONEJS) and write
no Comment. Every object is written to bytes and read back before it is parsed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from radstack.ai import synthetic
from radstack.ai.results import Finding, fracture_report
from radstack.errors import CannotUnderstand
from radstack.labeling.labels import (
    FRACTIONAL_THRESHOLD,
    DrawnLabel,
    Geometry,
    LabelParseError,
    labels_of,
    labels_of_seg,
    labels_of_sr,
    mask_from_rle,
    mask_rle,
)
from tests.helpers import synthetic_ct

CS3D = "Cornerstone3DTools@^0.1.0"
#: highdicom needs a concept name on every item; dcmjs writes none on a SCOORD under a NUM, on its
#: IMAGE references and on Image Library entries. Items built with this name lose it before saving.
NAMELESS = ("0", "99NAMELESS", "nameless")


# ----------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def dx() -> Dataset:
    """A single-frame DX radiograph (96 × 80)."""
    return synthetic.to_dataset(synthetic.generate(3, 0, synthetic.Options(size=(96, 80))))


def _complete(ds: Dataset) -> Dataset:
    """Empty type-2 patient/study attributes that highdicom copies from a source."""
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _multiframe_ct() -> Dataset:
    """tests.helpers' 3-frame CT as an enhanced multi-frame image (functional groups, frame of
    reference), as highdicom needs for a SEG of a multi-frame source."""
    ct = _complete(synthetic_ct(frames=3, rows=32, columns=24))
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ct.FrameOfReferenceUID = generate_uid()
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 1.0
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ct.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for index in range(3):
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(index)]
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ct.PerFrameFunctionalGroupsSequence = frames
    return ct


def _ct_slices() -> list[Dataset]:
    """Three single-frame CT slices of one series (tests.helpers' CT with a plane each)."""
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for index in range(3):
        ct = _complete(synthetic_ct(study=study, series=series, rows=32, columns=24, seed=index))
        ct.FrameOfReferenceUID = frame_of_reference
        ct.ImagePositionPatient, ct.ImageOrientationPatient = [0.0, 0.0, float(index)], [1, 0, 0, 0, 1, 0]
        ct.PixelSpacing, ct.SliceThickness, ct.InstanceNumber = [0.5, 0.5], 1.0, index + 1
        slices.append(ct)
    return slices


def _read_back(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


# ----------------------------------------------------------------------------- OHIF's SR, as dcmjs writes it
def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _item(
    relationship: str, value_type: str, name: tuple[str, str, str] | None = None, **attributes: Any
) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = [_code(*(name or NAMELESS))]
    if value_type == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _reference(image: Dataset, frame: int | None = None) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    return reference


def _scoord(
    graphic_type: str,
    points: Sequence[Sequence[float]],
    image: Dataset | None,
    *,
    frame: int | None = None,
    relationship: str = "INFERRED FROM",
    name: tuple[str, str, str] | None = None,
) -> Dataset:
    """dcmjs' TID320ContentItem: a nameless SCOORD with a SELECTED FROM IMAGE child."""
    scoord = _item(relationship, "SCOORD", name, GraphicType=graphic_type)
    scoord.GraphicData = [float(v) for point in points for v in point]
    if image is not None:
        scoord.ContentSequence = [
            _item("SELECTED FROM", "IMAGE", ReferencedSOPSequence=[_reference(image, frame)])
        ]
    return scoord


def _num(
    name: tuple[str, str, str], value: float, unit: tuple[str, str, str], scoord: Dataset | None = None
) -> Dataset:
    num = _item("CONTAINS", "NUM", name)
    measured = Dataset()
    measured.NumericValue, measured.MeasurementUnitsCodeSequence = value, [_code(*unit)]
    num.MeasuredValueSequence = [measured]
    if scoord is not None:
        num.ContentSequence = [scoord]
    return num


MM, MM2, NO_UNITS = ("mm", "UCUM", "mm"), ("mm2", "UCUM", "mm2"), ("1", "UCUM", "no units")
PERIMETER, AREA = ("131191004", "SCT", "Perimeter"), ("42798000", "SCT", "Area")
MEAN, MAXIMUM = ("373098007", "SCT", "Mean"), ("56851009", "SCT", "Maximum")


def _measurements(tool: str, scoord: Dataset) -> list[Dataset]:
    """The NUMs dcmjs' TID300 class of each tool writes, the SCOORD under the first."""
    if tool in ("RectangleROI", "PlanarFreehandROI"):  # TID300 Polyline
        return [
            _num(PERIMETER, 31.5, MM, scoord),
            _num(AREA, 52.25, MM2),
            _num(MAXIMUM, 900, MM),
            _num(MEAN, 411, MM),
        ]
    if tool == "EllipticalROI":  # TID300 Ellipse: area first
        return [_num(AREA, 40.1, MM2, scoord), _num(MAXIMUM, 800, MM), _num(MEAN, 300, MM)]
    if tool == "CircleROI":  # TID300 Circle: perimeter, area, radius
        return [
            _num(PERIMETER, 20.0, MM, scoord),
            _num(AREA, 31.4, MM2),
            _num(("131190003", "SCT", "Radius"), 3.2, MM),
        ]
    if tool == "Length":  # TID300 Length (an open polyline)
        return [_num(("410668003", "SCT", "Length"), 12.3, MM, scoord)]
    if tool == "ArrowAnnotate":  # TID300 ArrowAnnotate (an open polyline)
        return [_num(("111010", "DCM", "label"), 0, NO_UNITS, scoord)]
    if tool in ("Probe", "Probe:KeyImage"):  # TID300 Point
        return [_num(("111010", "DCM", "Center"), 0, NO_UNITS, scoord)]
    raise AssertionError(tool)


def ohif_group(
    tool: str,
    scoord: Dataset,
    *,
    label: str | None,
    legacy: bool = False,
    text_position: Dataset | None = None,
    extra: Sequence[Dataset] = (),
    tracking: str | None = None,
) -> Dataset:
    """One measurement group as OHIF 3.13.2 writes it (``legacy``: as versions before the Comment).

    getFilteredCornerstoneToolState makes the label a free-text Finding (ArrowAnnotate, an
    ``additionalFindingTypes`` tool) or Finding Site (the others); LabelData.contentItem then appends a
    Comment with the label and drops that free-text code (filterCornerstoneFreeText), and appends the
    text box position when the reader moved it."""
    items = [
        _item(
            "HAS OBS CONTEXT",
            "TEXT",
            ("112039", "DCM", "Tracking Identifier"),
            TextValue=tracking or f"{CS3D}:{tool}",
        ),
        _item(
            "HAS OBS CONTEXT", "UIDREF", ("112040", "DCM", "Tracking Unique Identifier"), UID=generate_uid()
        ),
    ]
    if label and legacy:
        free_text = _code("CORNERSTONEFREETEXT", "CORNERSTONEJS", label)
        if tool == "ArrowAnnotate":
            items.append(
                _item("CONTAINS", "CODE", ("121071", "DCM", "Finding"), ConceptCodeSequence=[free_text])
            )
        else:
            items.append(
                _item(
                    "CONTAINS", "CODE", ("363698007", "SCT", "Finding Site"), ConceptCodeSequence=[free_text]
                )
            )
    items.extend(_measurements(tool, scoord))
    items.extend(extra)
    if label and not legacy:
        items.append(_item("CONTAINS", "TEXT", ("121106", "DCM", "Comment"), TextValue=label))
    if text_position is not None:
        items.append(text_position)
    return _item(
        "CONTAINS",
        "CONTAINER",
        ("125007", "DCM", "Measurement Group"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=items,
    )


def ohif_sr(
    images: Sequence[Dataset],
    groups: Sequence[Dataset],
    *,
    root_name: tuple[str, str, str] | None = None,
    three_d: bool = False,
) -> Dataset:
    """An Enhanced SR with dcmjs' TID 1500 root (language, person observer, procedure, Image Library,
    Imaging Measurements), saved and read back."""
    language = _item(
        "HAS CONCEPT MOD",
        "CODE",
        ("121049", "DCM", "Language of Content Item and Descendants"),
        ConceptCodeSequence=[_code("en", "RFC5646", "English")],
    )
    language.ContentSequence = [
        _item(
            "HAS CONCEPT MOD",
            "CODE",
            ("121046", "DCM", "Country of Language"),
            ConceptCodeSequence=[_code("US", "ISO3166_1", "United States")],
        )
    ]
    library_group = _item(
        "CONTAINS", "CONTAINER", ("126200", "DCM", "Image Library Group"), ContinuityOfContent="SEPARATE"
    )
    library_group.ContentSequence = [
        _item("CONTAINS", "IMAGE", ReferencedSOPSequence=[_reference(image)]) for image in images
    ]
    library = _item(
        "CONTAINS",
        "CONTAINER",
        ("111028", "DCM", "Image Library"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=[library_group],
    )
    measurements = _item(
        "CONTAINS",
        "CONTAINER",
        ("126010", "DCM", "Imaging Measurements"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=list(groups),
    )
    root = Dataset()
    root.ValueType, root.ContinuityOfContent = "CONTAINER", "SEPARATE"
    root.ConceptNameCodeSequence = [_code(*(root_name or ("126000", "DCM", "Imaging Measurement Report")))]
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
    root.ContentTemplateSequence = [template]
    root.ContentSequence = [
        language,
        _item(
            "HAS OBS CONTEXT",
            "PNAME",
            ("121008", "DCM", "Person Observer Name"),
            PersonName="unknown^unknown",
        ),
        _item(
            "HAS CONCEPT MOD",
            "CODE",
            ("121058", "DCM", "Procedure reported"),
            ConceptCodeSequence=[_code("363679005", "SCT", "Imaging procedure")],
        ),
        library,
        measurements,
    ]
    # OHIF stores a report with a 3D (volume viewport) measurement as Comprehensive 3D SR.
    sop_class = hd.sr.Comprehensive3DSR if three_d else hd.sr.EnhancedSR
    sr = sop_class(
        evidence=[_complete(image) for image in images],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=4700,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="OHIF",
        is_complete=True,
    )
    _drop_placeholder_names(sr.ContentSequence)
    return _read_back(sr)


def _drop_placeholder_names(items: Sequence[Dataset]) -> None:
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodingSchemeDesignator == NAMELESS[1]:
            del item.ConceptNameCodeSequence
        _drop_placeholder_names(item.get("ContentSequence") or [])


def _close(actual: Any, expected: Any) -> None:
    """Coordinates equal to 0.01 px (nested lists)."""
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), atol=0.01)


# ----------------------------------------------------------------------------- OHIF SR tests
def test_ohif_3_13_report_gives_each_tool_its_label(dx: Dataset) -> None:
    # RectangleROI's handles are corners 0, 1, 2, 3 = TL, TR, BL, BR; it writes [0, 1, 3, 2, 0].
    tl, tr, bl, br = (10.25, 12.5), (40.75, 12.5), (10.25, 30.0), (40.75, 30.0)
    freehand = [(5.0, 5.0), (20.5, 6.0), (25.0, 18.25), (8.0, 15.0)]
    groups = [
        ohif_group("RectangleROI", _scoord("POLYLINE", [tl, tr, br, bl, tl], dx), label="fracture"),
        ohif_group("Length", _scoord("POLYLINE", [(3.5, 4.5), (60.1, 70.3)], dx), label="dislocation"),
        # The arrow's tip is written first (ArrowAnnotate.getTID300RepresentationArguments, arrowFirst).
        ohif_group("ArrowAnnotate", _scoord("POLYLINE", [(33.3, 44.4), (53.3, 64.4)], dx), label="fracture"),
        ohif_group(
            "Probe",
            _scoord("POINT", [(12.75, 61.5)], dx),
            label="foreign body",
            # The reader moved the text box: OHIF adds its position as a second SCOORD (99CS3D).
            text_position=_scoord(
                "POINT",
                [(70.0, 5.0)],
                dx,
                relationship="CONTAINS",
                name=("TextPosition", "99CS3D", "Text Annotation Position"),
            ),
        ),
        ohif_group(
            "EllipticalROI",
            _scoord("ELLIPSE", [(20, 50), (40, 50), (30, 45), (30, 55)], dx),
            label="effusion",
        ),
        ohif_group("CircleROI", _scoord("CIRCLE", [(50, 20), (53, 24)], dx), label="nodule"),
        ohif_group(
            "PlanarFreehandROI", _scoord("POLYLINE", [*freehand, freehand[0]], dx), label="soft tissue"
        ),
        ohif_group("Probe:KeyImage", _scoord("POINT", [(0, 0)], dx), label="normal"),
        ohif_group("RectangleROI", _scoord("POLYLINE", [tl, tr, br, bl, tl], dx), label=None),
    ]
    sr = ohif_sr([dx], groups)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR, as OHIF stores for 2D images

    labels = labels_of_sr(sr)

    assert [(label.text, label.geometry) for label in labels] == [
        ("fracture", "box"),
        ("dislocation", "line"),
        ("fracture", "point"),
        ("foreign body", "point"),
        ("effusion", "ellipse"),
        ("nodule", "ellipse"),
        ("soft tissue", "polygon"),
        ("normal", "class"),
        ("", "box"),
    ]
    assert all(label.sop_uid == dx.SOPInstanceUID and label.frame is None for label in labels)
    assert all(label.code is None for label in labels)  # free text, nothing coded
    box, line, arrow, probe, ellipse, circle, polygon, key_image, unlabelled = labels
    assert box.data == {"box": [10.25, 12.5, 40.75, 30.0]}
    _close(line.data["line"], [3.5, 4.5, 60.1, 70.3])
    assert line.data["line"][2] == 60.1  # float32 read as its shortest decimal, not 60.099998474121094
    _close(arrow.data["point"], [33.3, 44.4])  # the tip, not the tail
    _close(probe.data["point"], [12.75, 61.5])  # not the text box position
    _close(ellipse.data["ellipse"], [[20, 50], [40, 50], [30, 45], [30, 55]])
    _close(ellipse.data["box"], [20, 45, 40, 55])
    _close(circle.data["box"], [45, 15, 55, 25])  # radius 5 around (50, 20)
    _close(circle.data["ellipse"], [[45, 20], [55, 20], [50, 15], [50, 25]])
    _close(polygon.data["polygon"], freehand)  # the repeated closing point once
    _close(polygon.data["box"], [5.0, 5.0, 25.0, 18.25])
    assert key_image.data == {}
    assert unlabelled.text == ""  # the tool tag in the Tracking Identifier is not a label
    tracking_uids = [
        str(item.UID)
        for container in sr.ContentSequence
        if container.ConceptNameCodeSequence[0].CodeValue == "126010"
        for group in container.ContentSequence
        for item in group.ContentSequence
        if item.ValueType == "UIDREF"
    ]
    assert [label.tracking_uid for label in labels] == tracking_uids
    assert labels_of(sr) == labels


# CORNERSTONEFREETEXT (19 characters, 20 padded) is longer than a Code Value (SH, 16) may be: older OHIF
# versions wrote it all the same (dcmjs now writes CS3DTEXT and keeps the old value for reading).
@pytest.mark.filterwarnings(
    "ignore:The value length \\(\\d+\\) exceeds the maximum length of 16 allowed for VR SH"
)
def test_older_ohif_free_text_codes_and_other_shapes(dx: Dataset) -> None:
    rotated = [(10, 0), (20, 10), (10, 20), (0, 10)]
    groups = [
        ohif_group(
            "RectangleROI",
            _scoord("POLYLINE", [(1, 2), (9, 2), (9, 8), (1, 8), (1, 2)], dx),
            label="Fracture",
            legacy=True,
        ),
        ohif_group(
            "ArrowAnnotate", _scoord("POLYLINE", [(7.5, 8.5), (30, 40)], dx), label="Dislocation", legacy=True
        ),
        # A rectangle drawn on a rotated viewport is not axis-aligned in the image: a polygon.
        ohif_group("RectangleROI", _scoord("POLYLINE", [*rotated, rotated[0]], dx), label="fracture"),
        # An open freehand contour: a polyline.
        ohif_group("PlanarFreehandROI", _scoord("POLYLINE", [(1, 1), (5, 2), (9, 7)], dx), label="fracture"),
        # Bidirectional: the long axis NUM and its SCOORD come first.
        _item(
            "CONTAINS",
            "CONTAINER",
            ("125007", "DCM", "Measurement Group"),
            ContentSequence=[
                _item(
                    "HAS OBS CONTEXT",
                    "TEXT",
                    ("112039", "DCM", "Tracking Identifier"),
                    TextValue=f"{CS3D}:Bidirectional",
                ),
                _num(
                    ("103339001", "SCT", "Long Axis"), 30, MM, _scoord("POLYLINE", [(10, 10), (40, 10)], dx)
                ),
                _num(("103340004", "SCT", "Short Axis"), 8, MM, _scoord("POLYLINE", [(25, 6), (25, 14)], dx)),
                _item("CONTAINS", "TEXT", ("121106", "DCM", "Comment"), TextValue="mass"),
            ],
        ),
        # A spline freehand keeps its control points in a MULTIPOINT SCOORD after the contour.
        ohif_group(
            "PlanarFreehandROI",
            _scoord("POLYLINE", [(2, 2), (12, 2), (7, 11), (2, 2)], dx),
            label="fracture",
        ),
    ]
    # Control points (99CS3D) go under the first NUM after the contour (ControlPointPolyline).
    groups[-1].ContentSequence[2].ContentSequence.append(
        _scoord(
            "MULTIPOINT",
            [(2, 2), (12, 2), (7, 11)],
            dx,
            relationship="CONTAINS",
            name=("ControlPoints", "99CS3D", "Control Points"),
        )
    )
    labels = labels_of_sr(ohif_sr([dx], groups))
    assert [(label.text, label.geometry) for label in labels] == [
        ("Fracture", "box"),
        ("Dislocation", "point"),
        ("fracture", "polygon"),
        ("fracture", "polyline"),
        ("mass", "line"),
        ("fracture", "polygon"),
    ]
    assert labels[0].data == {"box": [1.0, 2.0, 9.0, 8.0]}
    assert labels[1].data == {"point": [7.5, 8.5]}
    _close(labels[2].data["polygon"], rotated)
    _close(labels[3].data["polyline"], [(1, 1), (5, 2), (9, 7)])
    assert labels[4].data == {"line": [10.0, 10.0, 40.0, 10.0]}
    _close(labels[5].data["polygon"], [(2, 2), (12, 2), (7, 11)])
    assert all(label.code is None for label in labels)


def test_a_coded_finding_and_a_frame_of_a_multiframe_image(dx: Dataset) -> None:
    ct = _multiframe_ct()
    coded = ohif_group(
        "RectangleROI",
        _scoord("POLYLINE", [(1, 1), (6, 1), (6, 5), (1, 5), (1, 1)], ct, frame=2),
        label="Fracture",
    )
    coded.ContentSequence.insert(
        2,
        _item(
            "CONTAINS",
            "CODE",
            ("121071", "DCM", "Finding"),
            ConceptCodeSequence=[_code("125605004", "SCT", "Fracture of bone")],
        ),
    )
    plain = ohif_group("Probe", _scoord("POINT", [(4, 4)], ct, frame=3), label=None)
    plain.ContentSequence.insert(
        2,
        _item(
            "CONTAINS",
            "CODE",
            ("121071", "DCM", "Finding"),
            ConceptCodeSequence=[_code("87642003", "SCT", "Dislocation of joint")],
        ),
    )
    labels = labels_of_sr(ohif_sr([ct], [coded, plain]))
    assert [(label.text, label.code, label.frame, label.sop_uid) for label in labels] == [
        ("Fracture", ("125605004", "SCT", "Fracture of bone"), 2, ct.SOPInstanceUID),
        ("Dislocation of joint", ("87642003", "SCT", "Dislocation of joint"), 3, ct.SOPInstanceUID),
    ]


# ----------------------------------------------------------------------------- radstack's AI report
def test_radstack_ai_report_gives_its_boxes(dx: Dataset) -> None:
    other = synthetic.to_dataset(synthetic.generate(3, 1, synthetic.Options(size=(96, 80))))
    other.StudyInstanceUID = dx.StudyInstanceUID
    findings = [
        Finding("fracture", 0.91, (10.5, 20.25, 30.75, 60.0), dx.SOPInstanceUID, generate_uid()),
        Finding("fracture", 0.62, (0.0, 0.0, 80.0, 96.0), other.SOPInstanceUID, generate_uid()),
    ]
    report = _read_back(
        fracture_report(
            [dx, other],
            findings,
            model="fracture",
            version=3,
            probability=0.93,
            series_uid=generate_uid(),
            sop_uid=generate_uid(),
        )
    )
    labels = labels_of(report)
    assert labels == [
        DrawnLabel(
            text="Fracture of bone",
            code=("125605004", "SCT", "Fracture of bone"),
            geometry=Geometry.BOX,
            data={"box": list(finding.box)},
            sop_uid=finding.sop_uid,
            frame=None,
            tracking_uid=finding.tracking_uid,
        )
        for finding in findings
    ]
    empty = fracture_report(
        [dx],
        [],
        model="fracture",
        version=3,
        probability=0.04,
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
    )
    assert labels_of_sr(_read_back(empty)) == []


# ----------------------------------------------------------------------------- SEG
def _segments(count: int) -> list[hd.seg.SegmentDescription]:
    names = [
        ("fracture", "125605004", "Fracture of bone"),
        ("dislocation", "87642003", "Dislocation of joint"),
    ]
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=hd.sr.CodedConcept(value, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=f"2.25.{1000 + number}",
            tracking_id=f"{label} {number}",
        )
        for number, (label, value, meaning) in enumerate(names[:count], 1)
    ]


def _seg(
    sources: list[Dataset],
    pixels: NDArray[Any],
    segmentation_type: str,
    segments: int = 2,
    syntax: str = ExplicitVRLittleEndian,
    **options: Any,
) -> Dataset:
    seg = hd.seg.Segmentation(
        sources,
        pixels,
        segmentation_type,
        _segments(segments),
        series_instance_uid=generate_uid(),
        series_number=4800,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="radstack",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        transfer_syntax_uid=syntax,
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=[0.2, 0.2], slice_thickness=1.0)
        if "FrameOfReferenceUID" not in sources[0]
        else None,
        **options,
    )
    return _read_back(seg)


def _masks(labels: list[DrawnLabel]) -> dict[tuple[str, str, int | None], NDArray[np.bool_]]:
    masks = {}
    for label in labels:
        assert label.geometry == "mask"
        mask = label.data["mask"]
        decoded = mask_from_rle(mask["rle"])
        assert decoded.shape == (mask["rows"], mask["columns"])
        masks[(label.text, label.sop_uid, label.frame)] = decoded
    return masks


def _two_regions(rows: int, columns: int, frames: int = 1) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    rng = np.random.default_rng(14)
    first = np.zeros((frames, rows, columns), bool)
    second = np.zeros((frames, rows, columns), bool)
    first[:, 2:14, 3:17] = rng.random((frames, 12, 14)) < 0.8  # ragged, so a transposition shows
    second[:, 18:28, 12:22] = True
    return first, second


@pytest.mark.parametrize(
    ("segmentation_type", "syntax"),
    [("BINARY", ExplicitVRLittleEndian), ("LABELMAP", RLELossless), ("LABELMAP", ExplicitVRLittleEndian)],
)
def test_seg_on_a_single_frame_radiograph(dx: Dataset, segmentation_type: str, syntax: str) -> None:
    # OHIF issue 5406: SEG on single-frame CR/DX. OHIF 3.13.2 saves a Label Map Segmentation (RLE).
    first, second = _two_regions(int(dx.Rows), int(dx.Columns))
    if segmentation_type == "LABELMAP":
        pixels = (first[0] * 1 + second[0] * 2).astype(np.uint8)[None]
    else:
        pixels = np.stack([first, second], axis=-1).astype(np.uint8)
    seg = _seg([_complete(dx)], pixels, segmentation_type, syntax=syntax)
    expected_class = (
        "1.2.840.10008.5.1.4.1.1.66.7" if segmentation_type == "LABELMAP" else "1.2.840.10008.5.1.4.1.1.66.4"
    )
    assert seg.SOPClassUID == expected_class

    labels = labels_of(seg)

    assert [(label.text, label.code, label.tracking_uid, label.frame) for label in labels] == [
        ("fracture", ("125605004", "SCT", "Fracture of bone"), "2.25.1001", None),
        ("dislocation", ("87642003", "SCT", "Dislocation of joint"), "2.25.1002", None),
    ]
    masks = _masks(labels)
    np.testing.assert_array_equal(masks[("fracture", dx.SOPInstanceUID, None)], first[0])
    np.testing.assert_array_equal(masks[("dislocation", dx.SOPInstanceUID, None)], second[0])
    assert labels[0].data["mask"]["rle"] == mask_rle(first[0])


def test_fractional_seg_is_thresholded_at_one_half(dx: Dataset) -> None:
    rows, columns = int(dx.Rows), int(dx.Columns)
    probability = np.zeros((1, rows, columns), np.float32)
    probability[0, 5:15, 5:15] = 0.25
    probability[0, 10:30, 10:40] = 0.75
    probability[0, 50:52, 60:62] = 1.0
    probability[0, 40, 5:10] = 0.5  # stored as 127 of 254: exactly one half, in the mask
    probability[0, 41, 5:10] = 126 / 254  # just below: out
    seg = _seg([_complete(dx)], probability, "FRACTIONAL", segments=1, max_fractional_value=254)
    assert seg.MaximumFractionalValue == 254
    assert (seg.pixel_array[40, 5:10] == 127).all() and (seg.pixel_array[41, 5:10] == 126).all()
    (label,) = labels_of_seg(seg)
    assert FRACTIONAL_THRESHOLD == 0.5
    mask = mask_from_rle(label.data["mask"]["rle"])
    np.testing.assert_array_equal(mask, seg.pixel_array / 254 >= 0.5)
    np.testing.assert_array_equal(mask, probability[0] >= 0.5)
    assert mask[40, 5:10].all() and not mask[41, 5:10].any()


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_seg_of_a_three_frame_ct_gives_a_mask_per_frame(segmentation_type: str) -> None:
    ct = _multiframe_ct()
    first, second = _two_regions(32, 24, frames=3)
    first[1] = False  # segment 1 absent from frame 2: no label there
    second[:, 8:20, 10:20] = True
    second[0] = False
    second &= ~first  # a label map holds one segment per pixel
    pixels = (
        (first * 1 + second * 2).astype(np.uint8)
        if segmentation_type == "LABELMAP"
        else np.stack([first, second], -1).astype(np.uint8)
    )
    labels = labels_of_seg(_seg([ct], pixels, segmentation_type))
    # By segment, then by frame; none where a segment is absent.
    assert [(label.text, label.frame) for label in labels] == [
        ("fracture", 1),
        ("fracture", 3),
        ("dislocation", 2),
        ("dislocation", 3),
    ]
    masks = _masks(labels)
    for (text, sop_uid, frame), mask in masks.items():
        assert sop_uid == ct.SOPInstanceUID
        assert frame is not None
        truth = first if text == "fracture" else second
        np.testing.assert_array_equal(mask, truth[frame - 1], err_msg=f"{text} frame {frame}")


def test_seg_of_single_frame_ct_slices_gives_a_mask_per_image() -> None:
    slices = _ct_slices()
    first, second = _two_regions(32, 24, frames=3)
    second[:, 8:20, 10:20] = True  # overlaps the first: a bitmap SEG may
    labels = labels_of_seg(_seg(slices, np.stack([first, second], -1).astype(np.uint8), "BINARY"))
    assert len(labels) == 6
    masks = _masks(labels)
    for index, image in enumerate(slices):
        np.testing.assert_array_equal(masks[("fracture", image.SOPInstanceUID, None)], first[index])
        np.testing.assert_array_equal(masks[("dislocation", image.SOPInstanceUID, None)], second[index])


# ----------------------------------------------------------------------------- RLE
def test_rle_is_coco_uncompressed_in_column_major_order() -> None:
    mask = np.array([[0, 1, 1], [0, 1, 0]], bool)
    # Column-major: column 0 = 0, 0; column 1 = 1, 1; column 2 = 1, 0 → runs 0×2, 1×3, 0×1.
    assert mask_rle(mask) == {"size": [2, 3], "counts": [2, 3, 1]}
    assert mask_rle(np.ones((2, 2))) == {"size": [2, 2], "counts": [0, 4]}  # starts with a run of 0 zeros
    assert mask_rle(np.zeros((3, 1))) == {"size": [3, 1], "counts": [3]}
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (7, 5), (96, 80), (33, 1)]:
        for density in (0.0, 0.1, 0.5, 1.0):
            random = rng.random(shape) < density
            rle = mask_rle(random)
            assert sum(rle["counts"]) == random.size
            np.testing.assert_array_equal(mask_from_rle(rle), random)


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [2, 2], "counts": [1, 2]},  # does not add up
        {"size": [2], "counts": [4]},
        {"size": [0, 2], "counts": []},
        {"size": [2, 2], "counts": "04"},  # COCO's compressed string is not read
        {"size": [2, 2], "counts": [-1, 5]},
    ],
)
def test_bad_rle_is_refused(rle: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RLE"):
        mask_from_rle(rle)


def test_mask_rle_refuses_a_non_2d_mask() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_rle(np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- what cannot be read
def _error(ds: Dataset, match: str) -> LabelParseError:
    with pytest.raises(LabelParseError, match=match) as caught:
        labels_of(ds)
    return caught.value


def test_label_parse_error_is_a_value_error_and_a_dicom_cannot_understand(dx: Dataset) -> None:
    error = _error(dx, r"SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.1\.1 .* holds no labels")
    assert isinstance(error, ValueError)
    assert isinstance(error, CannotUnderstand)
    assert error.dicom_status == 0xC000
    with pytest.raises(LabelParseError, match="not a structured report"):
        labels_of_sr(dx)
    with pytest.raises(LabelParseError, match="not a segmentation"):
        labels_of_seg(dx)


def test_sr_without_tid_1500_root(dx: Dataset) -> None:
    group = ohif_group("Probe", _scoord("POINT", [(1, 1)], dx), label="fracture")
    sr = ohif_sr([dx], [group], root_name=("18748-4", "LN", "Diagnostic imaging report"))
    _error(sr, r"no TID 1500 root: its document title is \(18748-4, LN, 'Diagnostic imaging report'\)")


def test_scoord_that_references_no_image(dx: Dataset) -> None:
    group = ohif_group(
        "RectangleROI", _scoord("POLYLINE", [(1, 1), (5, 1), (5, 5), (1, 5), (1, 1)], None), label="fracture"
    )
    _error(
        ohif_sr([dx], [group]),
        r"measurement group 1 \(Cornerstone3DTools@\^0\.1\.0:RectangleROI\) .* references no image",
    )


def test_scoord3d_is_refused(dx: Dataset) -> None:
    scoord = _item(
        "INFERRED FROM",
        "SCOORD3D",
        GraphicType="POINT",
        GraphicData=[1.0, 2.0, 3.0],
        ReferencedFrameOfReferenceUID="1.2.3",
    )
    group = ohif_group("Probe", scoord, label="fracture")
    sr = ohif_sr([dx], [group], three_d=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    _error(sr, r"SCOORD3D \(patient coordinates in frame of reference 1\.2\.3\) that references no image")


@pytest.mark.parametrize(
    ("graphic_type", "points"),
    [
        ("MULTIPOINT", [(1, 1), (2, 2), (3, 3)]),
        ("ELLIPSE", [(1, 1), (5, 5)]),
        ("POINT", [(1, 1), (2, 2)]),
        ("SPLINE", [(1, 1), (2, 2)]),
    ],
)
def test_graphic_type_not_understood(
    dx: Dataset, graphic_type: str, points: list[tuple[float, float]]
) -> None:
    group = ohif_group("Probe", _scoord(graphic_type, points, dx), label="fracture")
    _error(
        ohif_sr([dx], [group]),
        f"graphic type '{graphic_type}' with {len(points)} point\\(s\\) is not understood",
    )


def test_group_with_neither_region_nor_image(dx: Dataset) -> None:
    group = _item(
        "CONTAINS",
        "CONTAINER",
        ("125007", "DCM", "Measurement Group"),
        ContentSequence=[
            _item(
                "HAS OBS CONTEXT", "TEXT", ("112039", "DCM", "Tracking Identifier"), TextValue="study level"
            ),
            _num(("410668003", "SCT", "Length"), 3, MM),
        ],
    )
    _error(ohif_sr([dx], [group]), r"group 1 \(study level\) .* has neither a SCOORD nor an image reference")


def test_text_box_position_is_not_a_region(dx: Dataset) -> None:
    # dcmjs writes a Polyline's SCOORD under its first statistic; without statistics there is none,
    # and the moved text box's position (a POINT, 99CS3D) is all that is left.
    group = ohif_group(
        "Length",
        _scoord("POLYLINE", [(1, 1), (9, 9)], dx),
        label="fracture",
        text_position=_scoord(
            "POINT",
            [(70.0, 5.0)],
            dx,
            relationship="CONTAINS",
            name=("TextPosition", "99CS3D", "Text Annotation Position"),
        ),
    )
    del group.ContentSequence[2]  # the NUM with the line
    _error(
        ohif_sr([dx], [group]),
        r"group 1 \(Cornerstone3DTools@\^0\.1\.0:Length\) .* has neither a SCOORD nor an image",
    )


def test_group_referencing_an_image_without_region_is_a_class_label(dx: Dataset) -> None:
    group = _item(
        "CONTAINS",
        "CONTAINER",
        ("125007", "DCM", "Measurement Group"),
        ContentSequence=[
            _item(
                "HAS OBS CONTEXT", "TEXT", ("112039", "DCM", "Tracking Identifier"), TextValue="whole image"
            ),
            _item(
                "CONTAINS",
                "CODE",
                ("121071", "DCM", "Finding"),
                ConceptCodeSequence=[_code("125605004", "SCT", "Fracture of bone")],
            ),
            _item(
                "CONTAINS",
                "IMAGE",
                ("121112", "DCM", "Source of Measurement"),
                ReferencedSOPSequence=[_reference(dx)],
            ),
        ],
    )
    (label,) = labels_of(ohif_sr([dx], [group]))
    assert (label.text, label.geometry, label.data, label.sop_uid) == (
        "Fracture of bone",
        "class",
        {},
        dx.SOPInstanceUID,
    )


def test_seg_without_referenced_series(dx: Dataset) -> None:
    first, _ = _two_regions(int(dx.Rows), int(dx.Columns))
    seg = _seg([_complete(dx)], first.astype(np.uint8), "BINARY", segments=1)
    del seg.ReferencedSeriesSequence
    _error(seg, r"SEG .* has no Referenced Series Sequence")


def test_seg_frame_that_references_no_image(dx: Dataset) -> None:
    slices = _ct_slices()
    first, second = _two_regions(32, 24, frames=3)
    seg = _seg(slices, np.stack([first, second], -1).astype(np.uint8), "BINARY")
    del seg.PerFrameFunctionalGroupsSequence[1].DerivationImageSequence
    _error(seg, r"frame 2 of SEG .* references no image")


def test_seg_frame_that_names_no_segment(dx: Dataset) -> None:
    first, second = _two_regions(int(dx.Rows), int(dx.Columns))
    seg = _seg([_complete(dx)], np.stack([first, second], -1).astype(np.uint8), "BINARY")
    del seg.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence
    _error(seg, r"frame 1 of SEG .* names no segment")


def test_label_map_value_that_is_no_segment(dx: Dataset) -> None:
    first, _ = _two_regions(int(dx.Rows), int(dx.Columns))
    seg = _seg([_complete(dx)], first.astype(np.uint8), "LABELMAP", segments=1)
    pixels = seg.pixel_array.copy()
    pixels[0, 0] = 7
    seg.PixelData = pixels.tobytes()
    _error(seg, r"holds value 7, which is no segment's number \(segments: \[1\]; 0 is background\)")
