"""Spacing attributes in the DICOM JSON served to viewers: an invalid value is served as absent.

Real CR/DX headers often carry Pixel Spacing (0028,0030) of ``0\\0`` (pydicom-data's RG1 does): a
placeholder the modality wrote where it had no calibration. PS3.3 §10.7.1.3 defines the value as
the physical distance between pixel centres, so zero, negative or non-finite values mean nothing,
and a viewer that believes them breaks: OHIF 3.13 (Cornerstone3D) builds a degenerate image plane
from a zero spacing and draws the radiograph black on its WebGL path, without a message.

radstack keeps the stored object byte-exact (a Part-10 retrieve returns the header as received)
and leaves such an attribute out of the instance's DICOM JSON, the metadata that viewers read
(PS3.18 §F.2). The viewer then treats the image as uncalibrated, which is what the header says.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["SPACING_ATTRIBUTES", "valid_spacing", "without_invalid_spacing"]

#: Top-level attributes a viewer uses to size pixels, with the number of values each must hold:
#: Pixel Spacing (0028,0030) and Imager Pixel Spacing (0018,1164) (PS3.3 §10.7.1.3), and the
#: Estimated Radiographic Magnification Factor (0018,1114) by which OHIF divides the latter.
SPACING_ATTRIBUTES: dict[str, int] = {"00280030": 2, "00181164": 2, "00181114": 1}


def valid_spacing(element: dict[str, Any], multiplicity: int) -> bool:
    """Whether a DICOM JSON element (PS3.18 §F.2.2) holds ``multiplicity`` finite positive numbers.

    An element without a value (a Type 2 attribute sent empty) is valid: it claims nothing.
    A value that is not a DS number, such as the ``InlineBinary`` kept for an unparsable one,
    is not.
    """
    if "Value" not in element:
        return "InlineBinary" not in element and "BulkDataURI" not in element
    values = element["Value"]
    if not isinstance(values, list) or len(values) != multiplicity:
        return False
    for value in values:
        if isinstance(value, bool):
            return False
        try:
            number = float(value)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(number) or number <= 0:
            return False
    return True


def without_invalid_spacing(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` (an instance's DICOM JSON) without the :data:`SPACING_ATTRIBUTES` that are invalid.

    Parameters
    ----------
    attrs
        The instance's attributes as DICOM JSON (PS3.18 §F.2), keyed by ``GGGGEEEE`` tags.

    Returns
    -------
    dict
        The same object when nothing is invalid, otherwise a copy without the invalid elements.
    """
    invalid = [
        tag
        for tag, multiplicity in SPACING_ATTRIBUTES.items()
        if tag in attrs and not valid_spacing(attrs[tag], multiplicity)
    ]
    if not invalid:
        return attrs
    return {tag: element for tag, element in attrs.items() if tag not in invalid}
