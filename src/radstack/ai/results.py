"""AI results as DICOM: a fracture detector's findings as one TID 1500 Structured Report.

:func:`fracture_report` turns what the detector found on the radiographs of one study into a
Comprehensive 3D SR (PS3.3 §A.35.13) holding a PS3.16 TID 1500 *Imaging Measurement Report*, built
with highdicom; it is stored as a new series of the study (one series per run: OHIF shows only the
newest SR instance of a series). :func:`read_fracture_report` reads one back.

The content tree::

    CONTAINER (126000, DCM, "Imaging Measurement Report")               TID 1500
      HAS CONCEPT MOD  language (TID 1204)
      HAS OBS CONTEXT  the model as a device observer (TID 1004: name, manufacturer "radstack", model name)
      HAS CONCEPT MOD  (121058, DCM, "Procedure reported") = (43468-8, LN, "XR unspecified body region")
      CONTAINS         Image Library (TID 1600): every image the model checked
      CONTAINS         CONTAINER (126010, DCM, "Imaging Measurements")      only when something was found
        CONTAINS       CONTAINER (125007, DCM, "Measurement Group")         TID 1410, one per box
          Tracking Identifier "fracture 1", Tracking Unique Identifier (the finding's UID)
          Finding = (125605004, SCT, "Fracture of bone")
          Algorithm Name, Algorithm Version (TID 4019)
          SCOORD (111030, DCM, "Image Region") POLYLINE, 5 points, closed: the box
          NUM (111012, DCM, "Certainty of Finding") = the box's score in % (UCUM "%")
      CONTAINS         CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
        CONTAINS       CODE (125605004, SCT, "Fracture of bone") = Present / Absent
          HAS CONCEPT MOD  Algorithm Name, Algorithm Version
          HAS PROPERTIES   NUM (111012, DCM, "Certainty of Finding") = the study-level probability in %

Why this shape:

* "Certainty of Finding" (DCM 111012) is the standard's concept for a CAD score, a percentage, as
  the mammography CAD templates use it; no private code is needed. OHIF draws every NUM of a group
  as ``"<meaning>: <value with 2 decimals> <unit>"`` next to the box, so ``%`` reads
  ``Certainty of Finding: 87.34 %`` where a unit of ``1`` would read ``0.87 1``.
* TID 1500 needs at least one of its Imaging Measurements, Derived Imaging Measurements or
  Qualitative Evaluations containers, and it is an extensible template. The study-level result goes
  into Qualitative Evaluations in every report, so a study without a finding still gets a valid
  report that says so (``Fracture of bone = Absent``), and a reader finds the study-level result in
  one place. It cannot be a TID 1501 group among the Imaging Measurements: OHIF 3.13.2's SR loader
  (``extensions/cornerstone-dicom-sr/src/getSopClassHandlerModule.ts``,
  ``_checkIfCanAddMeasurementsToDisplaySet``) reads ``measurement.coords[0]`` of every group and
  fails on a group without a SCOORD, drawing none of the boxes. OHIF reads only the Imaging
  Measurements and the Image Library, so it ignores the Qualitative Evaluations.
* Boxes are given as pixel *edges* (``x0, y0, x1, y1``; column, row; ``x1``/``y1`` exclusive, as the
  detector and :mod:`radstack.ai.synthetic` write them). SCOORD image coordinates have the same
  origin, the top left corner of the top left pixel (PS3.3 §C.18.6.1.1: 0.0\\0.0 is that corner and
  Columns\\Rows the bottom right corner of the bottom right pixel; highdicom's convention too), so a
  box's corners are its SCOORD points unchanged, and ``(0, 0, Columns, Rows)`` is the whole image.
* Comprehensive 3D SR (1.2.840.10008.5.1.4.1.1.88.34) is one of the four SOP classes OHIF 3.13.2's
  SR handler takes, and highdicom's class for TID 1500; the report is COMPLETE but PRELIMINARY and
  UNVERIFIED: no radiologist has read it yet.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from radstack.dicom.sr import LANGUAGE, image_library, with_type_2

__all__ = [
    "ABSENT",
    "CERTAINTY_OF_FINDING",
    "FINDING_TYPES",
    "FRACTURE",
    "PRESENT",
    "QUALITATIVE_EVALUATIONS",
    "SR_SOP_CLASS",
    "Finding",
    "FractureReport",
    "ReportError",
    "fracture_report",
    "read_fracture_report",
    "series_description",
]

#: Comprehensive 3D SR Storage (PS3.4 §B.5).
SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
#: What the detector finds (CID 3xxx findings; SNOMED CT).
FRACTURE = Code("125605004", "SCT", "Fracture of bone")
#: A finding's label (what :class:`Finding` says) → its coded finding type.
FINDING_TYPES = {"fracture": FRACTURE}
#: The score of a box and the study-level probability, as a percentage (UCUM ``%``).
CERTAINTY_OF_FINDING: Code = codes.DCM.CertaintyOfFinding
#: TID 1500 row 12: the report-level container for qualitative evaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
PRESENT: Code = codes.SCT.Present
ABSENT: Code = codes.SCT.Absent

_PERCENT: Code = codes.UCUM.Percent
_PROCEDURE: Code = codes.cid100.XRUnspecifiedBodyRegion
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_LO_MAX = 64


class ReportError(ValueError):
    """The findings, their images or the report's identifiers cannot make a valid report."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One box the detector found.

    Attributes
    ----------
    label
        What was found: a key of :data:`FINDING_TYPES` (``"fracture"``).
    probability
        The box's score in [0, 1].
    box
        ``x0, y0, x1, y1`` in the image's pixel coordinates: column, row, pixel edges (``x1``, ``y1``
        exclusive), so ``(0, 0, Columns, Rows)`` is the whole image.
    sop_uid
        SOP Instance UID of the image it lies on (one of the report's sources).
    tracking_uid
        A UID unique to this finding, made by the caller (TID 1410 Tracking Unique Identifier).
    """

    label: str
    probability: float
    box: tuple[float, float, float, float]
    sop_uid: str
    tracking_uid: str


@dataclass(frozen=True, slots=True)
class FractureReport:
    """A report read back by :func:`read_fracture_report`.

    Attributes
    ----------
    findings
        The boxes in document order (``tracking_uid`` and ``box`` as written, ``probability`` back
        in [0, 1]).
    probability
        The study-level probability in [0, 1].
    fracture
        Whether the report says a fracture is present (it is when it has findings).
    model, version
        The algorithm's name and version (TID 4019).
    """

    findings: tuple[Finding, ...]
    probability: float
    fracture: bool
    model: str
    version: str


def series_description(model: str, version: int) -> str:
    """The AI series' description as OHIF's series list shows it: ``AI fracture v3``."""
    suffix = f" v{version}"
    return "AI " + model[: _LO_MAX - 3 - len(suffix)] + suffix


def fracture_report(
    sources: Sequence[pydicom.Dataset],
    findings: Sequence[Finding],
    *,
    model: str,
    version: int,
    probability: float,
    series_uid: str,
    sop_uid: str,
    series_number: int = 9001,
    content_time: datetime | None = None,
) -> pydicom.Dataset:
    """The detector's result for one study as a Comprehensive 3D SR (TID 1500), one new series.

    Parameters
    ----------
    sources
        Headers (Pixel Data not needed) of every image the model checked, all of one study. Each needs
        SOP Class UID, SOP Instance UID, Study and Series Instance UID, Rows and Columns; Modality,
        Patient Orientation and (Imager) Pixel Spacing describe it in the Image Library when present.
        The first one's patient and study attributes are copied into the report.
    findings
        The boxes found, each on one of ``sources``; none when nothing was found.
    model, version
        The model registry's name and version number: Algorithm Identification (TID 4019), the
        device observer, Manufacturer Model Name, Software Versions and :func:`series_description`.
    probability
        The study-level fracture probability in [0, 1].
    series_uid, sop_uid
        The new series' and the report's UIDs (a new series per run).
    series_number
        The new series' number.
    content_time
        When the result was made (Content Date/Time, Series Date/Time); now when omitted.

    Returns
    -------
    pydicom.Dataset
        The report (a :class:`highdicom.sr.Comprehensive3DSR`), with its file meta information.

    Raises
    ------
    ReportError
        ``sources`` is empty, mixes studies, repeats an image or lacks a required attribute; a
        finding's image is not among ``sources``, its box is inverted, empty or outside the image, its
        score or the study probability is not in [0, 1], its label is unknown, or its tracking UID is
        invalid or repeated; a UID, ``model``, ``version`` or ``series_number`` is invalid.
    """
    if not sources:
        raise ReportError("no source images: a report needs the images the model checked")
    if not isinstance(model, str) or not model.strip():
        raise ReportError(f"model name {model!r} is empty; give the model registry's name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ReportError(f"model version {version!r} is not a positive version number")
    if (
        isinstance(series_number, bool)
        or not isinstance(series_number, int)
        or not 1 <= series_number < 2**31
    ):
        raise ReportError(f"series number {series_number!r} is not a positive integer (IS)")
    _check_uid(series_uid, "series_uid")
    _check_uid(sop_uid, "sop_uid")
    _check_probability(probability, "the study-level probability")
    images = _images_by_uid(sources)
    seen: set[str] = set()
    for finding in findings:
        _check_finding(finding, images, seen)

    when = content_time if content_time is not None else datetime.now()
    algorithm = hd.sr.AlgorithmIdentification(name=model, version=str(version))
    groups = [
        _finding_group(finding, images[finding.sop_uid], number, algorithm)
        for number, finding in enumerate(findings, 1)
    ]
    report = _measurement_report(model, version, sources, groups, probability, algorithm)
    return hd.sr.Comprehensive3DSR(
        evidence=[with_type_2(sources[0]), *sources[1:]],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="radstack",
        manufacturer_model_name=model[:_LO_MAX],
        software_versions=str(version),
        series_description=series_description(model, version),
        series_date=when.date(),
        series_time=when.time(),
        content_date=when.date(),
        content_time=when.time(),
        is_complete=True,
        is_final=False,
        is_verified=False,
        specific_character_set="ISO_IR 192",  # model names and copied patient names in any script
    )


def read_fracture_report(dataset: pydicom.Dataset) -> FractureReport:
    """Read a report made by :func:`fracture_report` (or any TID 1500 of the same shape) with highdicom.

    Parameters
    ----------
    dataset
        The SR as read from storage.

    Returns
    -------
    FractureReport
        Its findings, study-level result and algorithm.

    Raises
    ------
    ReportError
        The data set is not a TID 1500 report with the study-level evaluation this module writes.
    """
    try:
        sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    except (ValueError, AttributeError) as error:
        raise ReportError(f"not a Comprehensive 3D SR: {error}") from error
    content = sr.content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise ReportError("the SR is not a TID 1500 Measurement Report")
    findings = []
    for group in content.get_planar_roi_measurement_groups():
        region = group.roi
        if not isinstance(region, hd.sr.ImageRegion) or group.tracking_uid is None:
            continue
        points = region.value
        source = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        scores = group.get_measurements(name=CERTAINTY_OF_FINDING)
        finding_type = group.finding_type
        label = next((k for k, v in FINDING_TYPES.items() if finding_type == v), str(finding_type))
        findings.append(
            Finding(
                label=label,
                probability=float(scores[0].value) / 100 if scores else math.nan,
                box=(
                    float(points[:, 0].min()),
                    float(points[:, 1].min()),
                    float(points[:, 0].max()),
                    float(points[:, 1].max()),
                ),
                sop_uid=str(source),
                tracking_uid=str(group.tracking_uid),
            )
        )
    evaluation = _study_evaluation(content[0])
    if evaluation is None:
        raise ReportError("the report has no study-level 'Fracture of bone' qualitative evaluation")
    present, certainty, model, version = evaluation
    return FractureReport(tuple(findings), certainty, present, model, version)


# ----------------------------------------------------------------------------- building
def _finding_group(
    finding: Finding,
    image: pydicom.Dataset,
    number: int,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one box: tracking identifiers, finding type, algorithm, the region, the score."""
    x0, y0, x1, y1 = (float(v) for v in finding.box)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        # Closed: the first point repeated last (PS3.3 §C.18.6.1.2); the corners are the SCOORD
        # points unchanged (see the module docstring).
        graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=finding.tracking_uid, identifier=f"{finding.label} {number}"
        ),
        referenced_region=region,
        finding_type=FINDING_TYPES[finding.label],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=_percent(finding.probability), unit=_PERCENT)
        ],
    )


def _measurement_report(
    model: str,
    version: int,
    sources: Sequence[pydicom.Dataset],
    groups: Sequence[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations],
    probability: float,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.ContainerContentItem:
    """The TID 1500 root, built as :class:`highdicom.sr.MeasurementReport` does, which, though, needs
    a measurement group and an Image Library entry with highdicom's set of descriptors, where a study
    without a finding has none and a CR without Imager Pixel Spacing cannot give them."""
    # SEPARATE items (highdicom's default is CONTINUOUS, running text): a viewer that shows the report
    # as text (OHIF does for a report without regions) labels each with its concept name.
    root = hd.sr.ContainerContentItem(
        name=codes.DCM.ImagingMeasurementReport, template_id="1500", is_content_continuous=False
    )
    root.ContentSequence = hd.sr.ContentSequence()
    root.ContentSequence.extend(hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # The same model version is the same device, in every report it makes.
        uid=generate_uid(prefix=None, entropy_srcs=["radstack", "model", model, str(version)]),
        name=model[:_LO_MAX],
        manufacturer_name="radstack",
        model_name=model[:_LO_MAX],
    )
    root.ContentSequence.extend(
        hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        )
    )
    root.ContentSequence.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=_PROCEDURE,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    root.ContentSequence.append(image_library(sources))
    if groups:
        measurements = hd.sr.ContainerContentItem(
            name=codes.DCM.ImagingMeasurements, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        measurements.ContentSequence = hd.sr.ContentSequence()
        for group in groups:
            measurements.ContentSequence.extend(group)
        root.ContentSequence.append(measurements)
    root.ContentSequence.append(_study_result(bool(groups), probability, algorithm))
    return root


def _study_result(
    present: bool, probability: float, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.ContainerContentItem:
    """TID 1500 Qualitative Evaluations: fracture present or absent, by whom, with what certainty."""
    verdict = hd.sr.CodeContentItem(
        name=FRACTURE,
        value=PRESENT if present else ABSENT,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    verdict.ContentSequence = hd.sr.ContentSequence()
    verdict.ContentSequence.extend(algorithm)
    verdict.ContentSequence.append(
        hd.sr.NumContentItem(
            name=CERTAINTY_OF_FINDING,
            value=_percent(probability),
            unit=_PERCENT,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
        )
    )
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    container.ContentSequence = hd.sr.ContentSequence([verdict])
    return container


def _percent(probability: float) -> float:
    # 4 decimals of a percentage: 1e-6 of the probability, within a DS's 16 characters.
    return round(float(probability) * 100, 4)


# ----------------------------------------------------------------------------- checks
def _check_uid(value: object, name: str) -> str:
    text = str(value) if value is not None else ""
    if not (0 < len(text) <= 64 and _UID.fullmatch(text)):
        raise ReportError(f"{name} {text!r} is not a valid UID (PS3.5 §9.1: up to 64 digits and dots)")
    return text


def _check_probability(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ReportError(f"{what} {value!r} is not a probability in [0, 1]")


def _images_by_uid(sources: Sequence[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    images: dict[str, pydicom.Dataset] = {}
    study = None
    for number, image in enumerate(sources, 1):
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            _check_uid(image.get(keyword), f"{keyword} of source image {number}")
        for keyword in ("Rows", "Columns"):
            value = image.get(keyword)
            if not isinstance(value, int) or value < 1:
                raise ReportError(
                    f"{keyword} of source image {number} ({image.SOPInstanceUID}) is {value!r}: "
                    "a report's source must be an image header with its matrix size"
                )
        uid = str(image.SOPInstanceUID)
        if uid in images:
            raise ReportError(f"source image {uid} is given twice")
        if study is None:
            study = str(image.StudyInstanceUID)
        elif str(image.StudyInstanceUID) != study:
            raise ReportError(
                f"source image {uid} is of study {image.StudyInstanceUID}, not {study}: one report per study"
            )
        images[uid] = image
    return images


def _check_finding(finding: Finding, images: dict[str, pydicom.Dataset], seen: set[str]) -> None:
    if finding.label not in FINDING_TYPES:
        raise ReportError(
            f"finding label {finding.label!r} is unknown; known: {', '.join(sorted(FINDING_TYPES))}"
        )
    image = images.get(str(finding.sop_uid))
    if image is None:
        raise ReportError(
            f"finding {finding.tracking_uid} lies on image {finding.sop_uid}, which is not among the "
            f"report's sources ({', '.join(images)})"
        )
    uid = _check_uid(finding.tracking_uid, "a finding's tracking_uid")
    if uid in seen:
        raise ReportError(f"tracking_uid {uid} is given to two findings; each finding needs its own")
    seen.add(uid)
    _check_probability(finding.probability, f"the probability of finding {uid}")
    columns, rows = int(image.Columns), int(image.Rows)
    try:
        x0, y0, x1, y1 = (float(v) for v in finding.box)
    except (TypeError, ValueError) as error:
        raise ReportError(
            f"box {finding.box!r} of finding {uid} is not four numbers x0, y0, x1, y1"
        ) from error
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ReportError(f"box {finding.box!r} of finding {uid} is not finite")
    if not (x0 < x1 and y0 < y1):
        raise ReportError(
            f"box {finding.box!r} of finding {uid} is inverted or empty: it must be x0, y0, x1, y1 with "
            "x0 < x1 and y0 < y1"
        )
    if x0 < 0 or y0 < 0 or x1 > columns or y1 > rows:
        raise ReportError(
            f"box {finding.box!r} of finding {uid} is outside image {finding.sop_uid} of {columns} × {rows} "
            f"pixels: edges must lie within 0 ≤ x ≤ {columns}, 0 ≤ y ≤ {rows}"
        )


# ----------------------------------------------------------------------------- reading
def _study_evaluation(root: pydicom.Dataset) -> tuple[bool, float, str, str] | None:
    """The study-level (present, probability, model, version), or None."""
    for container in hd.sr.utils.find_content_items(root, name=QUALITATIVE_EVALUATIONS):
        for verdict in hd.sr.utils.find_content_items(container, name=FRACTURE):
            present = verdict.ConceptCodeSequence[0].CodeValue == PRESENT.value
            numbers = hd.sr.utils.find_content_items(verdict, name=CERTAINTY_OF_FINDING)
            names = hd.sr.utils.find_content_items(verdict, name=codes.DCM.AlgorithmName)
            versions = hd.sr.utils.find_content_items(verdict, name=codes.DCM.AlgorithmVersion)
            if not numbers:
                return None
            value = float(numbers[0].MeasuredValueSequence[0].NumericValue) / 100
            model = str(names[0].TextValue) if names else ""
            version = str(versions[0].TextValue) if versions else ""
            return present, value, model, version
    return None
