"""An item's consensus as DICOM: a TID 1500 report (boxes, lines, points, classes) and, for masks, a SEG.

:func:`consensus_report` makes a Comprehensive 3D SR (PS3.3 §A.35.13) holding a PS3.16 TID 1500
*Imaging Measurement Report*, built with highdicom as :mod:`radstack.ai.results` builds the AI's, and
shaped so that OHIF 3.13.2 draws it (see ARCHITECTURE.md: Tracking Identifier and UID in every group,
boxes as closed 5-point POLYLINE Image Regions on the image)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")               TID 1500
      HAS CONCEPT MOD  language (TID 1204)
      HAS OBS CONTEXT  the reviewer as the person observer (TID 1003)
      HAS CONCEPT MOD  (121058, DCM, "Procedure reported")
      CONTAINS         Image Library (TID 1600): every image of the study
      CONTAINS         CONTAINER (126010, DCM, "Imaging Measurements")      when there is a region
        CONTAINS       CONTAINER (125007, DCM, "Measurement Group")         TID 1410, one per label
          Tracking Identifier "fracture 1", Tracking Unique Identifier
          Finding = the schema label's code (125605004, SCT, "Fracture of bone")
          SCOORD (111030, DCM, "Image Region"): a box as a closed 5-point POLYLINE, a line as a
                         2-point POLYLINE, a point as a POINT
      CONTAINS         CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
        CONTAINS       CODE <schema label's code> = Present / Absent       one per schema label
          HAS PROPERTIES  TEXT (121071, DCM, "Finding") = a class label's value, one per value

Every schema label is in the Qualitative Evaluations, so a consensus that found nothing is still a
valid report that says so. Coordinates are pixel edges, which are SCOORD image coordinates unchanged
(PS3.3 §C.18.6.1.1). The report is COMPLETE; FINAL once no adjudication is pending; never VERIFIED
(that needs a verifying organisation radstack does not know).

:func:`consensus_segmentation` makes a binary Segmentation (PS3.3 §A.51) of one image: one segment per
schema label with a consensus mask on it (property type: the label's code; algorithm type MANUAL),
with explicit Pixel Measures for a source without a frame of reference (a radiograph).

Both are read back by :func:`radstack.labeling.labels.labels_of_sr` and
:func:`~radstack.labeling.labels.labels_of_seg`. No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from radstack.dicom.sr import LANGUAGE, image_library, with_type_2
from radstack.labeling.labels import mask_from_rle
from radstack.labeling.schema import Geometry, LabelDef, LabelSchema

__all__ = [
    "QUALITATIVE_EVALUATIONS",
    "WrittenLabel",
    "consensus_report",
    "consensus_segmentation",
    "derived_uid",
    "person_name",
    "series_description",
]

#: TID 1500 row 12: the report-level container for qualitative evaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
_PRESENT: Code = codes.SCT.Present
_ABSENT: Code = codes.SCT.Absent
_RADIOGRAPHY = {"CR", "DX", "RG", "RF", "MG", "IO", "PX"}
_XR: Code = codes.cid100.XRUnspecifiedBodyRegion
_IMAGING = Code("363679005", "SCT", "Imaging (procedure)")
_LO_MAX = 64


@dataclass(frozen=True, slots=True)
class WrittenLabel:
    """One consensus label to write: its schema label and its geometry on one image (pixel edges)."""

    label: LabelDef
    geometry: Geometry
    data: dict[str, Any]
    value: str | None
    sop_uid: str
    frame: int | None = None


def derived_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (PS3.5 §B.2: ``2.25.`` and a 128-bit number)."""
    digest = hashlib.sha256("/".join(["radstack.labeling", *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def series_description(project: str) -> str:
    """``Consensus <project>``, as OHIF's series list shows it."""
    return ("Consensus " + project)[:_LO_MAX]


def person_name(subject: str) -> str:
    """A user name as a Person Name (PN) value: the family name alone (``reva^``), its component and
    group separators (``^``, ``=``), backslashes and control characters made spaces, at most 64
    characters."""
    cleaned = "".join(" " if c in "^=\\" or ord(c) < 32 else c for c in subject).strip()
    return (cleaned[: _LO_MAX - 1] or "unknown") + "^"


def _code(label: LabelDef) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(label.code.value, label.code.scheme, label.code.meaning)


def _region(written: WrittenLabel, image: pydicom.Dataset) -> hd.sr.ImageRegion:
    if written.geometry is Geometry.BOX:
        x0, y0, x1, y1 = (float(v) for v in written.data["box"])
        graphic_type = hd.sr.GraphicTypeValues.POLYLINE
        # Closed: the first point repeated last (PS3.3 §C.18.6.1.2); OHIF hydrates it to a rectangle.
        points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    elif written.geometry is Geometry.LINE:
        x0, y0, x1, y1 = (float(v) for v in written.data["line"])
        graphic_type, points = hd.sr.GraphicTypeValues.POLYLINE, [[x0, y0], [x1, y1]]
    else:
        x, y = (float(v) for v in written.data["point"])
        graphic_type, points = hd.sr.GraphicTypeValues.POINT, [[x, y]]
    return hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=np.array(points, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
            referenced_frame_numbers=[written.frame] if written.frame is not None else None,
        ),
    )


def consensus_report(
    sources: Sequence[pydicom.Dataset],
    labels: Sequence[WrittenLabel],
    schema: LabelSchema,
    *,
    project: str,
    reviewer: str,
    series_uid: str,
    sop_uid: str,
    final: bool,
    series_number: int = 9101,
    content_time: datetime | None = None,
) -> pydicom.Dataset:
    """An item's consensus as a Comprehensive 3D SR (TID 1500), see the module's docstring.

    Parameters
    ----------
    sources
        Headers (no Pixel Data needed) of the study's images, the first one's patient and study
        attributes copied into the report; every label's image among them.
    labels
        The consensus labels; masks are left out (they go to :func:`consensus_segmentation`).
    schema
        The project's labels: every one is reported present or absent.
    project, reviewer
        The series' description (:func:`series_description`) and the person observer.
    series_uid, sop_uid, series_number
        The report's series and instance.
    final
        Whether the decision is final (no adjudication pending): Completion is always COMPLETE,
        Verification UNVERIFIED, and the Preliminary Flag FINAL or PRELIMINARY by this.

    Returns
    -------
    pydicom.Dataset
        The report, with its file meta information.

    Raises
    ------
    ValueError
        No sources, or a label whose image is not among them.
    """
    if not sources:
        raise ValueError("a consensus report needs the study's images as its sources")
    images = {str(image.SOPInstanceUID): image for image in sources}
    when = content_time if content_time is not None else datetime.now()
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    numbers: dict[str, int] = {}
    for written in labels:
        if written.geometry not in (Geometry.BOX, Geometry.LINE, Geometry.POINT):
            continue
        image = images.get(written.sop_uid)
        if image is None:
            raise ValueError(
                f"consensus label {written.label.key} lies on {written.sop_uid}, not an image of the study"
            )
        numbers[written.label.key] = numbers.get(written.label.key, 0) + 1
        number = numbers[written.label.key]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(sop_uid, "group", len(groups)),
                    identifier=f"{written.label.key} {number}",
                ),
                referenced_region=_region(written, image),
                finding_type=_code(written.label),
            )
        )
    modality = str(sources[0].get("Modality") or "")
    root = hd.sr.ContainerContentItem(
        name=codes.DCM.ImagingMeasurementReport, template_id="1500", is_content_continuous=False
    )
    root.ContentSequence = hd.sr.ContentSequence()
    root.ContentSequence.extend(hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE))
    observer = hd.sr.PersonObserverIdentifyingAttributes(name=person_name(reviewer))
    root.ContentSequence.extend(
        hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person, observer_identifying_attributes=observer
            )
        )
    )
    root.ContentSequence.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=_XR if modality in _RADIOGRAPHY else _IMAGING,
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
    root.ContentSequence.append(_evaluations(schema, labels))
    return hd.sr.Comprehensive3DSR(
        evidence=[with_type_2(sources[0]), *sources[1:]],
        content=root,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="radstack",
        manufacturer_model_name="radstack labeling",
        series_description=series_description(project),
        series_date=when.date(),
        series_time=when.time(),
        content_date=when.date(),
        content_time=when.time(),
        is_complete=True,
        is_final=final,
        is_verified=False,
        specific_character_set="ISO_IR 192",  # user and patient names in any script
    )


def _evaluations(schema: LabelSchema, labels: Sequence[WrittenLabel]) -> hd.sr.ContainerContentItem:
    """TID 1500 Qualitative Evaluations: each schema label present or absent, class values below."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    container.ContentSequence = hd.sr.ContentSequence()
    for label in schema.labels:
        mine = [written for written in labels if written.label.key == label.key]
        verdict = hd.sr.CodeContentItem(
            name=_code(label),
            value=_PRESENT if mine else _ABSENT,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        values = list(dict.fromkeys(w.value for w in mine if w.geometry is Geometry.CLASS and w.value))
        if values:
            verdict.ContentSequence = hd.sr.ContentSequence(
                [
                    hd.sr.TextContentItem(
                        name=codes.DCM.Finding,
                        value=value,
                        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                    )
                    for value in values
                ]
            )
        container.ContentSequence.append(verdict)
    return container


def consensus_segmentation(
    source: pydicom.Dataset,
    labels: Sequence[WrittenLabel],
    *,
    project: str,
    reviewer: str,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    series_number: int = 9102,
) -> pydicom.Dataset:
    """The consensus masks on one image as a binary Segmentation, one segment per schema label.

    Parameters
    ----------
    source
        The image's header (no Pixel Data needed).
    labels
        Its consensus masks (other geometries and other images are left out), ``data["mask"]["rle"]``
        each of the image's size.
    project, reviewer
        The series' description and the content creator.
    series_uid, sop_uid, instance_number, series_number
        The SEG's series and instance (one SEG per image, all in one series).

    Raises
    ------
    ValueError
        No mask of ``source`` among ``labels``.
    """
    uid = str(source.SOPInstanceUID)
    masks = [w for w in labels if w.geometry is Geometry.MASK and w.sop_uid == uid]
    if not masks:
        raise ValueError(f"no consensus mask lies on image {uid}")
    frames = int(source.get("NumberOfFrames") or 1)
    keys = list(dict.fromkeys(w.label.key for w in masks))
    pixels: NDArray[np.uint8] = np.zeros(
        (frames, int(source.Rows), int(source.Columns), len(keys)), dtype=np.uint8
    )
    for written in masks:
        frame = (written.frame or 1) - 1
        pixels[frame, :, :, keys.index(written.label.key)] |= mask_from_rle(written.data["mask"]["rle"])
    by_key = {w.label.key: w.label for w in masks}
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=key,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=_code(by_key[key]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=derived_uid(sop_uid, "segment", number),
            tracking_id=f"{key} {number}",
        )
        for number, key in enumerate(keys, 1)
    ]
    # A radiograph has no frame of reference; highdicom then needs the pixel measures stated.
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1.0, 1.0]
    measures = (
        hd.PixelMeasuresSequence(pixel_spacing=[float(v) or 1.0 for v in spacing], slice_thickness=1.0)
        if "FrameOfReferenceUID" not in source
        else None
    )
    return hd.seg.Segmentation(
        [with_type_2(source)],
        pixels,
        hd.seg.SegmentationTypeValues.BINARY,
        segments,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="radstack",
        manufacturer_model_name="radstack labeling",
        software_versions="1",
        device_serial_number="1",
        series_description=series_description(project),
        content_label="CONSENSUS",
        content_creator_name=person_name(reviewer),
        pixel_measures=measures,
    )
