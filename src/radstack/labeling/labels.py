"""Labels from DICOM: what readers save in OHIF, 3D Slicer or highdicom, as structured labels.

Pure functions over pydicom data sets (no database, no I/O). :func:`labels_of` reads a stored object and
dispatches on its SOP class to :func:`labels_of_sr` (the four SR classes that can hold a TID 1500
report) or :func:`labels_of_seg` (Segmentation and Label Map Segmentation); each gives one
:class:`DrawnLabel` per drawn thing.

Structured reports (PS3.16 TID 1500, *Imaging Measurement Report*)
    Every Measurement Group (TID 1410/1501, ``125007 DCM``) of the report's Imaging Measurements
    container (``126010 DCM``) is one label. What OHIF 3.13.2 writes (its ``@cornerstonejs/adapters``
    ``Cornerstone3D/*`` with dcmjs' ``TID300`` classes, read in the shipped bundle) and how it reads:

    ================  ====================================================  =====================
    OHIF tool         SCOORD (pixel coordinates, under a NUM, no concept)   label
    ================  ====================================================  =====================
    RectangleROI      POLYLINE, 5 points, closed (corners 0, 1, 3, 2, 0)    ``box``
    Length            POLYLINE, 2 points                                    ``line``
    ArrowAnnotate     POLYLINE, 2 points, the arrow's tip first             ``point`` (the tip)
    Probe             POINT, 1 point                                        ``point``
    EllipticalROI     ELLIPSE, 4 points (major axis ends, minor axis ends)  ``ellipse``
    CircleROI         CIRCLE, 2 points (centre, a point on the circle)      ``ellipse``
    PlanarFreehandROI POLYLINE, first point repeated last when closed       ``polygon``/``polyline``
    Angle, CobbAngle  POLYLINE, open, 3 or 4 points                         ``polyline``
    Bidirectional     two 2-point POLYLINEs (long axis first)               ``line`` (long axis)
    KeyImage          POINT at (0, 0)                                       ``class``
    ================  ====================================================  =====================

    The label's text is, in the order OHIF reads it back (``getCornerstoneLabelFromDefaultState``):
    a TEXT *Comment* (``121106 DCM``), which OHIF 3.13.2 writes for a labelled measurement (dropping the
    free-text code it replaces); a Finding Site, then a Finding, whose code is a free-text code
    (``CORNERSTONEFREETEXT`` or ``CS3DTEXT``, scheme ``CORNERSTONEJS`` or ``99dcmjs``: older versions
    write only these); a coded Finding's meaning (highdicom, radstack's AI reports); the Tracking
    Identifier unless it is a Cornerstone tool tag (``Cornerstone3DTools@^0.1.0:RectangleROI``); else
    ``""``. ``code`` is the Finding when it is a real code (not a free-text one). OHIF's secondary
    SCOORDs, its text box position and spline control points (scheme ``99CS3D``), are not regions.

    SCOORD coordinates are image pixel coordinates with ``(0, 0)`` at the outer corner of the first
    pixel (PS3.3 §C.18.6.1.1; OHIF's ``worldToImageCoords`` and highdicom use the same origin), so a box
    is ``[x0, y0, x1, y1]`` in pixel edges, unchanged. SCOORD values are 32-bit (FL): each is given as
    the shortest decimal that is the same float32 (``10.3`` rather than ``10.300000190734863``).

Segmentations (PS3.3 §A.51, Segmentation and Label Map Segmentation)
    One ``mask`` label per segment per source image it covers (per frame of a multi-frame source):
    ``text`` is the Segment Label, ``code`` the Segmented Property Type, ``tracking_uid`` the segment's
    Tracking UID. BINARY frames are masks as stored; FRACTIONAL frames are thresholded at
    :data:`FRACTIONAL_THRESHOLD` (a pixel is in the mask when its value is at least half of Maximum
    Fractional Value); in a LABELMAP each pixel holds the number of its segment, ``0`` being background.
    A segment absent from an image gives no label for that image. The image a frame lies on is the
    Source Image of its Derivation Image Sequence (per frame, or shared).

A mask is stored in ``data`` as ``{"mask": {"rows": R, "columns": C, "rle": RLE}}`` where ``RLE`` is
COCO's *uncompressed* run-length encoding, ``{"size": [R, C], "counts": [...]}`` (:func:`mask_rle`):
the mask is read in column-major (Fortran) order and ``counts`` are the lengths of alternating runs of 0
and 1, starting with 0 (so the first count is 0 when the first pixel is set). It is what COCO's
``segmentation`` field takes as is (``pycocotools.mask.frPyObjects`` reads it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from radstack.errors import CannotUnderstand

__all__ = [
    "FRACTIONAL_THRESHOLD",
    "SEG_SOP_CLASSES",
    "SR_SOP_CLASSES",
    "DrawnLabel",
    "Geometry",
    "LabelParseError",
    "labels_of",
    "labels_of_seg",
    "labels_of_sr",
    "mask_from_rle",
    "mask_rle",
]

#: The SR SOP classes that can carry a TID 1500 report (PS3.4 §B.5), by UID.
SR_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
}
#: The segmentation SOP classes (PS3.4 §B.5), by UID.
SEG_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
}
#: A FRACTIONAL segmentation's pixel is in the mask when value / Maximum Fractional Value ≥ this.
FRACTIONAL_THRESHOLD = 0.5

#: (value, scheme, meaning) of a coded concept.
CodeTuple = tuple[str, str, str]


class Geometry(StrEnum):
    """What a label is drawn as; the key of its coordinates in :attr:`DrawnLabel.data`."""

    BOX = "box"  # {"box": [x0, y0, x1, y1]}, pixel edges
    POINT = "point"  # {"point": [x, y]}
    LINE = "line"  # {"line": [x0, y0, x1, y1]}
    POLYLINE = "polyline"  # {"polyline": [[x, y], ...]}, open, 3 or more points
    POLYGON = "polygon"  # {"polygon": [[x, y], ...], "box": its extent}, closed, each vertex once
    ELLIPSE = "ellipse"  # {"ellipse": [[x, y] × 4] (major axis ends, minor axis ends), "box": its extent}
    MASK = "mask"  # {"mask": {"rows": R, "columns": C, "rle": COCO uncompressed RLE}}
    CLASS = "class"  # {}: the whole image


class LabelParseError(CannotUnderstand, ValueError):
    """An SR or SEG from which labels cannot be read; the message names the item and what is wrong."""

    title = "Labels cannot be read"


@dataclass(frozen=True, slots=True)
class DrawnLabel:
    """One thing a reader drew (or a model found) on one image.

    Attributes
    ----------
    text
        The label as the reader chose it: OHIF's label (a Comment or a free-text code), else a coded
        finding's meaning, a segment's label; ``""`` when the measurement has none.
    code
        ``(value, scheme, meaning)`` when the label is coded (a Finding, a Segmented Property Type).
    geometry
        What it is drawn as (a :class:`Geometry`, which is a ``str``).
    data
        Its coordinates: see :class:`Geometry`. Pixel coordinates, ``(0, 0)`` at the first pixel's
        outer corner; JSON-serialisable.
    sop_uid
        SOP Instance UID of the image it lies on.
    frame
        The 1-based frame the object references (Referenced Frame Number), None when it names none.
        OHIF's SRs name no frame of a single-frame image, but its SEG export names frame 1: compare
        frames as ``frame or 1``.
    tracking_uid
        The TID 1410 Tracking Unique Identifier or the segment's Tracking UID, when present. (OHIF
        3.13.2 writes a new one on every save, so it does not follow a measurement from save to save.)
    """

    text: str
    code: CodeTuple | None
    geometry: Geometry
    data: dict[str, Any] = field(hash=False)
    sop_uid: str
    frame: int | None
    tracking_uid: str | None


# ----------------------------------------------------------------------------- concepts (value, scheme)
_IMAGING_MEASUREMENT_REPORT = ("126000", "DCM")
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_MEASUREMENT_GROUP = ("125007", "DCM")
_TRACKING_IDENTIFIER = ("112039", "DCM")
_TRACKING_UID = ("112040", "DCM")
_FINDING = ("121071", "DCM")
_FINDING_SITES = {("363698007", "SCT"), ("G-C0E3", "SRT")}
_COMMENT = ("121106", "DCM")
#: OHIF's text box position and spline control points: SCOORDs beside the region, not regions.
_SECONDARY_SCOORDS = {("TextPosition", "99CS3D"), ("ControlPoints", "99CS3D")}
#: Free-text codes of Cornerstone (``@cornerstonejs/adapters`` CodingScheme) and dcmjs.
_FREE_TEXT_VALUES = {"CORNERSTONEFREETEXT", "CS3DTEXT"}
_FREE_TEXT_SCHEMES = {"CORNERSTONEJS"}
#: A Cornerstone tool tag used as Tracking Identifier: ``Cornerstone3DTools@^0.1.0:Probe:KeyImage``;
#: dcmjs writes ``web annotation`` when it is given none.
_TOOL_TAG = re.compile(r"^[A-Za-z0-9]+@\^?[0-9][\w.]*:(?P<tool>.+)$")
_DCMJS_DEFAULT_IDENTIFIER = "web annotation"
_SCOORDS = {"SCOORD", "SCOORD3D"}
#: Coordinates this close (pixels) are the same: OHIF's image coordinates pass through world coordinates.
_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- entry points
def labels_of(ds: Dataset) -> list[DrawnLabel]:
    """The labels an SR or SEG holds, by its SOP class.

    Parameters
    ----------
    ds
        A stored object (its Pixel Data too, for a SEG).

    Returns
    -------
    list[DrawnLabel]
        As :func:`labels_of_sr` or :func:`labels_of_seg` give them.

    Raises
    ------
    LabelParseError
        The SOP class is neither one of :data:`SR_SOP_CLASSES` nor of :data:`SEG_SOP_CLASSES` (the
        message names it), or the object's labels cannot be read.
    """
    sop_class = _sop_class(ds)
    if sop_class in SR_SOP_CLASSES:
        return labels_of_sr(ds)
    if sop_class in SEG_SOP_CLASSES:
        return labels_of_seg(ds)
    raise LabelParseError(
        f"SOP class {sop_class} of {_uid_of(ds)} holds no labels radstack reads; labels come from "
        f"{_class_list(SR_SOP_CLASSES)} (TID 1500) and from {_class_list(SEG_SOP_CLASSES)}"
    )


def labels_of_sr(ds: Dataset) -> list[DrawnLabel]:
    """The labels of a TID 1500 report: one per Measurement Group, in document order.

    Parameters
    ----------
    ds
        A Basic Text, Enhanced, Comprehensive or Comprehensive 3D SR.

    Returns
    -------
    list[DrawnLabel]
        One per Measurement Group of its Imaging Measurements; none when it has none (an AI report
        that found nothing).

    Raises
    ------
    LabelParseError
        The object is not an SR; its root is not a TID 1500 Imaging Measurement Report; a group's
        SCOORD references no image (or is a SCOORD3D, in patient coordinates), or several frames;
        a graphic type or point count is not understood; a group has neither a SCOORD nor an image.
    """
    sop_class = _sop_class(ds)
    if sop_class not in SR_SOP_CLASSES:
        raise LabelParseError(
            f"{_uid_of(ds)} is of SOP class {sop_class}, not a structured report; labels_of_sr reads "
            f"{_class_list(SR_SOP_CLASSES)}"
        )
    root = _concept(ds)
    if root != _IMAGING_MEASUREMENT_REPORT:
        raise LabelParseError(
            f"SR {_uid_of(ds)} has no TID 1500 root: its document title is {_describe_concept(ds)}, "
            "where a report of labels is an Imaging Measurement Report (126000, DCM)"
        )
    labels: list[DrawnLabel] = []
    number = 0
    for container in _children(ds, _IMAGING_MEASUREMENTS):
        for group in _children(container, _MEASUREMENT_GROUP):
            number += 1
            labels.append(_label_of_group(group, number, _uid_of(ds)))
    return labels


def labels_of_seg(ds: Dataset) -> list[DrawnLabel]:
    """The labels of a Segmentation or Label Map Segmentation: one mask per segment per image.

    Parameters
    ----------
    ds
        The segmentation with its Pixel Data (any transfer syntax pydicom decodes: native, RLE, ...).

    Returns
    -------
    list[DrawnLabel]
        ``mask`` labels ordered by segment number, then image (in the order the SEG's frames first
        name them), then frame.

    Raises
    ------
    LabelParseError
        The object is not a segmentation; it has no Referenced Series Sequence or no segments; a
        frame references no source image (or several), names no segment or one not described; its
        Segmentation Type is not BINARY, FRACTIONAL or LABELMAP; a label map pixel holds a value that
        is no segment's number; its pixel data cannot be decoded.
    """
    sop_class = _sop_class(ds)
    uid = _uid_of(ds)
    if sop_class not in SEG_SOP_CLASSES:
        raise LabelParseError(
            f"{uid} is of SOP class {sop_class}, not a segmentation; labels_of_seg reads "
            f"{_class_list(SEG_SOP_CLASSES)}"
        )
    if not ds.get("ReferencedSeriesSequence"):
        raise LabelParseError(
            f"SEG {uid} has no Referenced Series Sequence (0008,1115): a segmentation must name the "
            "series and images it segments"
        )
    segments = {int(item.SegmentNumber): item for item in ds.get("SegmentSequence") or []}
    if not segments:
        raise LabelParseError(f"SEG {uid} describes no segment (Segment Sequence (0062,0002) is empty)")
    segmentation_type = str(ds.get("SegmentationType") or "")
    labelmap = sop_class == "1.2.840.10008.5.1.4.1.1.66.7" or segmentation_type == "LABELMAP"
    if not labelmap and segmentation_type not in ("BINARY", "FRACTIONAL"):
        raise LabelParseError(
            f"SEG {uid} has Segmentation Type {segmentation_type!r}; read are BINARY, FRACTIONAL and LABELMAP"
        )
    maximum = 1
    if segmentation_type == "FRACTIONAL":
        maximum = int(ds.get("MaximumFractionalValue") or 0)
        if maximum < 1:
            raise LabelParseError(f"FRACTIONAL SEG {uid} has no Maximum Fractional Value (0062,000E)")
    pixels = _seg_frames(ds, uid)

    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared_groups = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared = shared_groups[0]
    masks: dict[tuple[int, str, int | None], NDArray[np.bool_]] = {}
    for index, plane in enumerate(pixels):
        groups = per_frame[index] if index < len(per_frame) else Dataset()
        sop_uid, frame = _seg_source(groups, shared, index, uid)
        if labelmap:
            for value in np.unique(plane).tolist():
                if value == 0:
                    continue
                if value not in segments:
                    raise LabelParseError(
                        f"frame {index + 1} of label map SEG {uid} holds value {value}, which is no "
                        f"segment's number (segments: {sorted(n for n in segments if n)}; 0 is background)"
                    )
                _merge(masks, (int(value), sop_uid, frame), plane == value)
            continue
        number = _segment_number(groups, shared, index, uid)
        if number not in segments:
            raise LabelParseError(
                f"frame {index + 1} of SEG {uid} names segment {number}, which the Segment Sequence does "
                f"not describe (segments: {sorted(segments)})"
            )
        if segmentation_type == "FRACTIONAL":
            mask = plane.astype(np.float64) >= FRACTIONAL_THRESHOLD * maximum
        else:
            mask = plane != 0
        if mask.any():
            _merge(masks, (number, sop_uid, frame), mask)

    rows, columns = int(ds.Rows), int(ds.Columns)
    images: dict[str, int] = {}
    for _, sop_uid, _ in masks:
        images.setdefault(sop_uid, len(images))
    labels = []
    for (number, sop_uid, frame), mask in sorted(
        masks.items(), key=lambda entry: (entry[0][0], images[entry[0][1]], entry[0][2] or 0)
    ):
        segment = segments[number]
        tracking = segment.get("TrackingUID")
        labels.append(
            DrawnLabel(
                text=str(segment.get("SegmentLabel") or ""),
                code=_code_of(segment.get("SegmentedPropertyTypeCodeSequence")),
                geometry=Geometry.MASK,
                data={"mask": {"rows": rows, "columns": columns, "rle": mask_rle(mask)}},
                sop_uid=sop_uid,
                frame=frame,
                tracking_uid=str(tracking) if tracking else None,
            )
        )
    return labels


# ----------------------------------------------------------------------------- run-length encoding
def mask_rle(mask: NDArray[Any] | Iterable[Iterable[Any]]) -> dict[str, Any]:
    """A boolean mask as COCO's uncompressed RLE: ``{"size": [rows, columns], "counts": [...]}``.

    The mask is read in column-major (Fortran) order, and ``counts`` are the lengths of its alternating
    runs of 0 and 1, the first a run of 0 (of length 0 when the first pixel is set). Nonzero is set.

    Parameters
    ----------
    mask
        A 2-D array (rows × columns), boolean or numbers.

    Returns
    -------
    dict
        The RLE, JSON-serialisable, which COCO's ``segmentation`` field takes as it is.

    Raises
    ------
    ValueError
        The mask is not 2-D or has no pixels.
    """
    array = np.asarray(mask)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a mask is a non-empty 2-D array (rows × columns), got shape {array.shape}")
    flat = array.astype(bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [int(array.shape[0]), int(array.shape[1])], "counts": counts}


def mask_from_rle(rle: Mapping[str, Any]) -> NDArray[np.bool_]:
    """The boolean mask of an RLE made by :func:`mask_rle` (COCO's uncompressed RLE).

    Parameters
    ----------
    rle
        ``{"size": [rows, columns], "counts": [...]}``.

    Returns
    -------
    numpy.ndarray
        A ``rows × columns`` boolean array.

    Raises
    ------
    ValueError
        ``size`` is not two positive integers, ``counts`` is not a list of non-negative integers (a
        compressed COCO string is not read), or the counts do not add up to ``rows × columns``.
    """
    size = rle.get("size") if isinstance(rle, Mapping) else None
    counts = rle.get("counts") if isinstance(rle, Mapping) else None
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"RLE size {size!r} is not [rows, columns] of two positive integers")
    if not isinstance(counts, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts
    ):
        raise ValueError(
            "RLE counts must be a list of non-negative run lengths (COCO's uncompressed RLE), got "
            f"{type(counts).__name__}"
        )
    rows, columns = size
    if sum(counts) != rows * columns:
        raise ValueError(f"RLE counts add up to {sum(counts)}, not rows × columns = {rows * columns}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    mask: NDArray[np.bool_] = flat.reshape((rows, columns), order="F")
    return mask


# ----------------------------------------------------------------------------- SR: one group
def _label_of_group(group: Dataset, number: int, sr_uid: str) -> DrawnLabel:
    items = list(group.get("ContentSequence") or [])
    tracking = _first_value(items, _TRACKING_IDENTIFIER, "TEXT", "TextValue")
    tracking_uid = _first_value(items, _TRACKING_UID, "UIDREF", "UID")
    where = f"measurement group {number} ({tracking or 'no tracking identifier'}) of SR {sr_uid}"
    text, code = _text_and_code(items, tracking)
    tool = _tool_of(tracking)

    region = _region(items)
    if region is None:
        image = _image_of_group(items, where)
        if image is None:
            raise LabelParseError(
                f"{where} has neither a SCOORD nor an image reference: a label needs the image it lies on"
            )
        return DrawnLabel(text, code, Geometry.CLASS, {}, image[0], image[1], tracking_uid)
    if str(region.ValueType) == "SCOORD3D":
        raise LabelParseError(
            f"{where} has a SCOORD3D (patient coordinates in frame of reference "
            f"{region.get('ReferencedFrameOfReferenceUID', '?')}) that references no image; labels are "
            "read in the pixel coordinates of an image (a SCOORD: draw in a stack viewport)"
        )
    sop_uid, frame = _image_of_scoord(region, where)
    if tool is not None and "KeyImage" in tool and not {"Point", "SeriesPoint"} & set(tool):
        # OHIF's key image marker: a POINT at (0, 0) standing for the whole image.
        return DrawnLabel(text, code, Geometry.CLASS, {}, sop_uid, frame, tracking_uid)
    arrow = tool is not None and "ArrowAnnotate" in tool
    geometry, data = _shape(region, where, arrow=arrow)
    return DrawnLabel(text, code, geometry, data, sop_uid, frame, tracking_uid)


def _text_and_code(items: list[Dataset], tracking: str | None) -> tuple[str, CodeTuple | None]:
    """The label's text and code, in the order OHIF reads them back (see the module docstring)."""
    finding = next((_code_of(i.get("ConceptCodeSequence")) for i in _named(items, _FINDING, "CODE")), None)
    coded = finding if finding is not None and not _is_free_text(finding) else None
    comment = _first_value(items, _COMMENT, "TEXT", "TextValue")
    if comment and comment.strip():
        return comment.strip(), coded
    for item in items:
        if str(item.get("ValueType", "")) == "CODE" and _concept(item) in _FINDING_SITES:
            site = _code_of(item.get("ConceptCodeSequence"))
            if site is not None and _is_free_text(site):
                return site[2], coded
    if finding is not None:
        return finding[2], coded
    if tracking and tracking != _DCMJS_DEFAULT_IDENTIFIER and not _TOOL_TAG.match(tracking):
        return tracking, None
    return "", None


def _tool_of(tracking: str | None) -> list[str] | None:
    """The parts of a Cornerstone tool tag (``["Probe", "KeyImage"]``), or None."""
    match = _TOOL_TAG.match(tracking or "")
    return match["tool"].split(":") if match else None


def _region(items: list[Dataset]) -> Dataset | None:
    """The group's first region SCOORD, in document order: directly in the group (highdicom's TID 1410)
    or under one of its items (dcmjs writes it under the first NUM, INFERRED FROM, without a name)."""
    for item in items:
        if _is_region(item):
            return item
        child: Dataset
        for child in item.get("ContentSequence") or []:
            if _is_region(child):
                return child
    return None


def _is_region(item: Dataset) -> bool:
    return str(item.get("ValueType", "")) in _SCOORDS and _concept(item) not in _SECONDARY_SCOORDS


def _image_of_scoord(scoord: Dataset, where: str) -> tuple[str, int | None]:
    image = _image_reference(scoord.get("ContentSequence") or [], where)
    if image is None:
        raise LabelParseError(
            f"{where}: its SCOORD ({scoord.get('GraphicType', '?')}) references no image (a SELECTED "
            "FROM IMAGE item with a Referenced SOP Sequence); a label needs the image it lies on"
        )
    return image


def _image_of_group(items: list[Dataset], where: str) -> tuple[str, int | None] | None:
    """An image the group refers to without a region (TID 1501 Source of Measurement): a class label.
    Not the image of OHIF's text box position: a measurement whose region is missing is no class."""
    image = _image_reference(items, where)
    if image is not None:
        return image
    for item in items:
        if str(item.get("ValueType", "")) in _SCOORDS:
            continue
        image = _image_reference(item.get("ContentSequence") or [], where)
        if image is not None:
            return image
    return None


def _image_reference(items: Iterable[Dataset], where: str) -> tuple[str, int | None] | None:
    for item in items:
        if str(item.get("ValueType", "")) != "IMAGE" or not item.get("ReferencedSOPSequence"):
            continue
        reference = item.ReferencedSOPSequence[0]
        uid = str(reference.get("ReferencedSOPInstanceUID") or "")
        if not uid:
            continue
        if str(reference.get("ReferencedSOPClassUID") or "") in SEG_SOP_CLASSES:
            segments = list(_values(reference.get("ReferencedSegmentNumber")))
            raise LabelParseError(
                f"{where} measures segment {segments or '?'} of segmentation {uid} rather than a region "
                "drawn on an image: its mask is read from that SEG"
            )
        frames = [int(v) for v in _values(reference.get("ReferencedFrameNumber"))]
        if len(frames) > 1:
            raise LabelParseError(
                f"{where} references frames {frames} of image {uid}; a label lies on one frame"
            )
        return uid, (frames[0] if frames else None)
    return None


# ----------------------------------------------------------------------------- SR: shapes
def _shape(scoord: Dataset, where: str, *, arrow: bool) -> tuple[Geometry, dict[str, Any]]:
    """The geometry and data of a SCOORD (see the table in the module docstring).

    Raises
    ------
    LabelParseError
        The graphic type, with its number of points, is not understood.
    """
    graphic_type = str(scoord.get("GraphicType") or "")
    points = _points(scoord, where)
    n = len(points)
    if arrow and graphic_type in ("POLYLINE", "POINT", "MULTIPOINT"):
        # OHIF writes the arrow's tip first (ArrowAnnotate.getTID300RepresentationArguments).
        return Geometry.POINT, {"point": points[0]}
    if graphic_type in ("POINT", "MULTIPOINT") and n == 1:
        return Geometry.POINT, {"point": points[0]}
    if graphic_type == "POLYLINE" and n == 1:
        return Geometry.POINT, {"point": points[0]}  # dcmjs' one-point arrow of older versions
    if graphic_type == "POLYLINE" and n == 2:
        return Geometry.LINE, {"line": [*points[0], *points[1]]}
    if graphic_type in ("POLYLINE", "POLYGON") and n >= 3:
        closed = n >= 4 and _same(points[0], points[-1])
        vertices = points[:-1] if closed else points
        # A rectangle: OHIF writes 5 points, closed; it also reads 4 (RectangleROI.isValidMeasurement).
        if len(vertices) == 4 and (closed or graphic_type == "POLYGON" or n == 4):
            box = _rectangle(vertices)
            if box is not None:
                return Geometry.BOX, {"box": box}
        if closed or graphic_type == "POLYGON":
            if len(vertices) >= 3:
                return Geometry.POLYGON, {"polygon": vertices, "box": _extent(vertices)}
        else:
            return Geometry.POLYLINE, {"polyline": points}
    if graphic_type == "ELLIPSE" and n == 4:
        return Geometry.ELLIPSE, {"ellipse": points, "box": _ellipse_extent(points)}
    if graphic_type == "CIRCLE" and n == 2:
        (cx, cy), (ex, ey) = points
        r = math.hypot(ex - cx, ey - cy)
        axes = [[cx - r, cy], [cx + r, cy], [cx, cy - r], [cx, cy + r]]
        return Geometry.ELLIPSE, {
            "ellipse": [[_round(x), _round(y)] for x, y in axes],
            "box": [_round(cx - r), _round(cy - r), _round(cx + r), _round(cy + r)],
        }
    raise LabelParseError(
        f"{where}: graphic type {graphic_type!r} with {n} point(s) is not understood; read are POINT "
        "(1 point), MULTIPOINT (1 point), POLYLINE (2 points: a line; a rectangle; closed: a polygon; "
        "open: a polyline), POLYGON, ELLIPSE (4 points) and CIRCLE (2 points)"
    )


def _points(scoord: Dataset, where: str) -> list[list[float]]:
    values = [float(v) for v in _values(scoord.get("GraphicData"))]
    if not values or len(values) % 2:
        raise LabelParseError(
            f"{where}: its SCOORD's Graphic Data has {len(values)} value(s); it must be column/row pairs"
        )
    if not all(math.isfinite(v) for v in values):
        raise LabelParseError(f"{where}: its SCOORD's Graphic Data {values} is not finite")
    # FL values: the shortest decimal that is the same float32.
    clean = [float(str(v)) for v in np.asarray(values, dtype=np.float32)]
    return [[clean[i], clean[i + 1]] for i in range(0, len(clean), 2)]


def _same(a: list[float], b: list[float]) -> bool:
    return abs(a[0] - b[0]) <= _TOLERANCE and abs(a[1] - b[1]) <= _TOLERANCE


def _rectangle(vertices: list[list[float]]) -> list[float] | None:
    """``[x0, y0, x1, y1]`` when the four vertices go round an axis-aligned rectangle, else None."""
    xs = [p[0] for p in vertices]
    ys = [p[1] for p in vertices]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 - x0 <= _TOLERANCE or y1 - y0 <= _TOLERANCE:
        return None
    corners = set()
    for x, y in vertices:
        cx = 0 if abs(x - x0) <= _TOLERANCE else 1 if abs(x - x1) <= _TOLERANCE else None
        cy = 0 if abs(y - y0) <= _TOLERANCE else 1 if abs(y - y1) <= _TOLERANCE else None
        if cx is None or cy is None:
            return None
        corners.add((cx, cy))
    if len(corners) != 4:
        return None
    # Round the perimeter, not across it: consecutive vertices share a column or a row.
    for a, b in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        if abs(a[0] - b[0]) > _TOLERANCE and abs(a[1] - b[1]) > _TOLERANCE:
            return None
    return [x0, y0, x1, y1]


def _extent(points: list[list[float]]) -> list[float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def _ellipse_extent(points: list[list[float]]) -> list[float]:
    """The bounding box of the ellipse with axis end points ``a1, a2, b1, b2``: the centre ± the
    half-extents of ``c + u cos t + v sin t`` (u, v the half axes), √(uₓ² + vₓ²) and √(u_y² + v_y²)."""
    (a1x, a1y), (a2x, a2y), (b1x, b1y), (b2x, b2y) = points
    cx, cy = (a1x + a2x) / 2, (a1y + a2y) / 2
    ux, uy, vx, vy = (a2x - a1x) / 2, (a2y - a1y) / 2, (b2x - b1x) / 2, (b2y - b1y) / 2
    hx, hy = math.hypot(ux, vx), math.hypot(uy, vy)
    return [_round(cx - hx), _round(cy - hy), _round(cx + hx), _round(cy + hy)]


def _round(value: float) -> float:
    # Derived coordinates to 1e-4 px (float32 coordinates carry no more); + 0.0 turns -0.0 into 0.0.
    return round(value, 4) + 0.0


# ----------------------------------------------------------------------------- SEG
def _seg_frames(ds: Dataset, uid: str) -> NDArray[Any]:
    """The SEG's frames as an array (frames × rows × columns).

    Raises
    ------
    LabelParseError
        The pixel data cannot be decoded or does not hold the frames the header announces.
    """
    frames = int(ds.get("NumberOfFrames") or 1)
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as error:  # pydicom raises many kinds for undecodable pixel data
        raise LabelParseError(f"the pixel data of SEG {uid} cannot be decoded: {error}") from error
    shape = (frames, int(ds.Rows), int(ds.Columns))
    if pixels.size != frames * shape[1] * shape[2]:
        raise LabelParseError(
            f"the pixel data of SEG {uid} holds {pixels.size} pixels, not {frames} frame(s) of "
            f"{shape[1]} × {shape[2]}"
        )
    return pixels.reshape(shape)


def _seg_source(groups: Dataset, shared: Dataset, index: int, uid: str) -> tuple[str, int | None]:
    """The image (and frame) a SEG frame lies on: its Derivation Image's Source Image.

    Raises
    ------
    LabelParseError
        The frame references no image, several images or several frames.
    """
    references: list[tuple[str, int | None]] = []
    for functional in (groups, shared):
        for derivation in functional.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                sop_uid = str(source.get("ReferencedSOPInstanceUID") or "")
                if not sop_uid:
                    continue
                frames = [int(v) for v in _values(source.get("ReferencedFrameNumber"))]
                if len(frames) > 1:
                    raise LabelParseError(
                        f"frame {index + 1} of SEG {uid} is derived from frames {frames} of image "
                        f"{sop_uid}; a mask frame lies on one frame"
                    )
                reference = (sop_uid, frames[0] if frames else None)
                if reference not in references:
                    references.append(reference)
        if references:
            break
    if not references:
        raise LabelParseError(
            f"frame {index + 1} of SEG {uid} references no image (no Source Image in its Derivation Image "
            "Sequence (0008,9124)): the image each mask lies on must be named"
        )
    if len(references) > 1:
        raise LabelParseError(
            f"frame {index + 1} of SEG {uid} is derived from {len(references)} images "
            f"({', '.join(r[0] for r in references)}); a mask frame lies on one image"
        )
    return references[0]


def _segment_number(groups: Dataset, shared: Dataset, index: int, uid: str) -> int:
    for functional in (groups, shared):
        identification = functional.get("SegmentIdentificationSequence")
        if identification:
            return int(identification[0].ReferencedSegmentNumber)
    raise LabelParseError(
        f"frame {index + 1} of SEG {uid} names no segment (no Segment Identification Sequence "
        "(0062,000A) in its functional groups)"
    )


def _merge(
    masks: dict[tuple[int, str, int | None], NDArray[np.bool_]],
    key: tuple[int, str, int | None],
    mask: NDArray[np.bool_],
) -> None:
    """Add a frame's mask to its (segment, image, frame), or-ing with one seen before."""
    masks[key] = masks[key] | mask if key in masks else mask


# ----------------------------------------------------------------------------- content items
def _sop_class(ds: Dataset) -> str:
    sop_class = ds.get("SOPClassUID")
    if not sop_class and hasattr(ds, "file_meta"):
        sop_class = ds.file_meta.get("MediaStorageSOPClassUID")
    if not sop_class:
        raise LabelParseError(f"data set {_uid_of(ds)} has no SOP Class UID: it cannot be read as labels")
    return str(sop_class)


def _uid_of(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID") or "(no SOP Instance UID)")


def _class_list(classes: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({uid})" for uid, name in classes.items())


def _concept(item: Dataset) -> tuple[str, str] | None:
    """(value, scheme) of a content item's concept name."""
    code = _code_of(item.get("ConceptNameCodeSequence"))
    return (code[0], code[1]) if code is not None else None


def _describe_concept(item: Dataset) -> str:
    code = _code_of(item.get("ConceptNameCodeSequence"))
    return f"({code[0]}, {code[1]}, {code[2]!r})" if code is not None else "missing"


def _code_of(sequence: Any) -> CodeTuple | None:
    """(value, scheme, meaning) of the first item of a code sequence."""
    if not sequence:
        return None
    item = sequence[0]
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
    return str(value), str(item.get("CodingSchemeDesignator") or ""), str(item.get("CodeMeaning") or "")


def _is_free_text(code: CodeTuple) -> bool:
    return code[0] in _FREE_TEXT_VALUES or code[1] in _FREE_TEXT_SCHEMES


def _children(item: Dataset, concept: tuple[str, str]) -> Iterator[Dataset]:
    yield from _named(item.get("ContentSequence") or [], concept, "CONTAINER")


def _named(items: Iterable[Dataset], concept: tuple[str, str], value_type: str) -> Iterator[Dataset]:
    for item in items:
        if str(item.get("ValueType", "")) == value_type and _concept(item) == concept:
            yield item


def _first_value(
    items: Iterable[Dataset], concept: tuple[str, str], value_type: str, keyword: str
) -> str | None:
    for item in _named(items, concept, value_type):
        value = item.get(keyword)
        if value:
            return str(value)
    return None


def _values(value: Any) -> list[Any]:
    """A multi-valued element's values as a list (pydicom gives a single value bare)."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)
