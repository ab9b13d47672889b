"""Low-level pieces of the TID 1500 reports radstack writes (PS3.16), shared by the AI's results
(:mod:`radstack.ai.results`) and the labeling consensus (:mod:`radstack.labeling.writeback`).

* :func:`image_library`: TID 1600 Image Library, one entry per source image with the TID 1602/1603
  descriptors its header has;
* :func:`with_type_2`: a source header completed with the type-2 patient and study attributes that
  highdicom copies from the first piece of evidence;
* :data:`LANGUAGE`: the content language (TID 1204) of every report.

Built with highdicom; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = ["LANGUAGE", "TYPE_2", "image_library", "with_type_2"]

#: The content language of every report radstack writes.
LANGUAGE = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
#: Patient and study attributes (type 2 in their modules) a report copies from its first source; a
#: header without one gets it empty rather than failing.
TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)

_PIXELS = hd.sr.CodedConcept(value="{pixels}", meaning="Pixels", scheme_designator="UCUM")
_SOURCE = Code("260753009", "SCT", "Source")
_MODALITIES: dict[str, Code] = {code.value: code for code in codes.cid29.concepts.values()}


def image_library(sources: Sequence[pydicom.Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group, one entry per source image with the TID 1602/1603
    descriptors its header has (highdicom's :class:`~highdicom.sr.ImageLibrary` requires Patient
    Orientation and Imager Pixel Spacing of every radiograph, which a CR such as RG3 may lack)."""
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    group.ContentSequence = hd.sr.ContentSequence()
    for image in sources:
        entry = hd.sr.ImageContentItem(
            name=_SOURCE,
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        entry.ContentSequence = hd.sr.ContentSequence(_descriptors(image))
        group.ContentSequence.append(entry)
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _descriptors(image: pydicom.Dataset) -> list[hd.sr.ContentItem]:
    """TID 1602 (modality, frame of reference, matrix size) and TID 1603 (orientation, spacing)."""
    context = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    items: list[hd.sr.ContentItem] = []
    modality = str(image.get("Modality") or "")
    if modality:
        code = _MODALITIES.get(modality, Code(modality, "DCM", modality))
        items.append(hd.sr.CodeContentItem(name=codes.DCM.Modality, value=code, relationship_type=context))
    if image.get("FrameOfReferenceUID"):
        items.append(
            hd.sr.UIDRefContentItem(
                name=codes.DCM.FrameOfReferenceUID, value=image.FrameOfReferenceUID, relationship_type=context
            )
        )
    items.append(
        hd.sr.NumContentItem(
            name=codes.DCM.PixelDataRows, value=int(image.Rows), unit=_PIXELS, relationship_type=context
        )
    )
    items.append(
        hd.sr.NumContentItem(
            name=codes.DCM.PixelDataColumns, value=int(image.Columns), unit=_PIXELS, relationship_type=context
        )
    )
    orientation = [str(v) for v in (image.get("PatientOrientation") or [])]
    if len(orientation) == 2 and all(orientation):
        items.append(
            hd.sr.TextContentItem(
                name=codes.DCM.PatientOrientationRow, value=orientation[0], relationship_type=context
            )
        )
        items.append(
            hd.sr.TextContentItem(
                name=codes.DCM.PatientOrientationColumn, value=orientation[1], relationship_type=context
            )
        )
    spacing = image.get("ImagerPixelSpacing") or image.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing):
        row_spacing, column_spacing = (float(v) for v in spacing)
        items.append(
            hd.sr.NumContentItem(
                name=codes.DCM.HorizontalPixelSpacing,
                value=column_spacing,
                unit=codes.UCUM.Millimeter,
                relationship_type=context,
            )
        )
        items.append(
            hd.sr.NumContentItem(
                name=codes.DCM.VerticalPixelSpacing,
                value=row_spacing,
                unit=codes.UCUM.Millimeter,
                relationship_type=context,
            )
        )
    return items


def with_type_2(first: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``first`` (sharing its elements) with absent type-2 patient and study attributes
    (:data:`TYPE_2`) present and empty: highdicom reads them from the first piece of evidence."""
    missing = [keyword for keyword in TYPE_2 if keyword not in first]
    if not missing:
        return first
    completed = pydicom.Dataset()
    completed.update(first)  # pydicom.Dataset(first) would share, and change, first's elements
    for keyword in missing:
        setattr(completed, keyword, None)
    return completed
