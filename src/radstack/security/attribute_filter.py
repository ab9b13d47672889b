"""Which attributes a role may see: the per-role allow and deny lists that :mod:`.views` applies.

A role's ``hidden`` attributes (in the roles file, ``RADSTACK_ROLES_FILE``) become an
:class:`AttributeFilter`, which :class:`radstack.security.views.View` runs before any
de-identification, over DICOM JSON (QIDO-RS, WADO-RS metadata) and pydicom data sets (Part-10
files, C-FIND identifiers) alike, so both forms show a role the same attributes. No I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import keyword_dict, keyword_for_tag
from pydicom.dataset import Dataset

from radstack.dicom.attributes import dataset_vr, dictionary_vr, json_element_copy, parse_attribute

__all__ = ["AttributeFilter"]

JsonDict = dict[str, Any]

#: Attributes a filter never removes, so images still display: every UID (checked by VR), the
#: Image Pixel module (PS3.3 §C.7.6.3), Multi-frame and functional groups (§C.7.6.6, §C.7.6.16),
#: Modality and VOI LUT (§C.11.1, §C.11.2) and Specific Character Set.
_ALWAYS_KEPT_KEYWORDS = (
    "SpecificCharacterSet",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "PixelAspectRatio",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ICCProfile",
    "ColorSpace",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
)
_ALWAYS_KEPT = frozenset(keyword_dict[k] for k in _ALWAYS_KEPT_KEYWORDS)


class AttributeFilter:
    """Which attributes a role may see: an allow-list, a deny-list, or both.

    UIDs and the attributes that display an image (:data:`_ALWAYS_KEPT_KEYWORDS`) are always
    kept, so a filtered instance still opens in a viewer and still joins its study. ``deny``
    removes an attribute wherever it occurs, inside sequences too; ``allow`` limits the top level
    of the data set (an allowed sequence keeps its items, less what ``deny`` removes).

    Parameters
    ----------
    allow
        If given, only these attributes (and the always-kept ones) are shown. Keywords, tags as
        ``"(gggg,eeee)"`` strings, or ints (:func:`parse_attribute`).
    deny
        Attributes never shown, in the same forms.

    Raises
    ------
    ValueError
        For an unknown keyword, or a denied attribute that is always kept.
    """

    def __init__(self, *, allow: Iterable[str | int] | None = None, deny: Iterable[str | int] = ()) -> None:
        denied = frozenset(parse_attribute(name) for name in deny)
        always = sorted(t for t in denied if t in _ALWAYS_KEPT or dictionary_vr(t) == "UI")
        if always:
            names = ", ".join(keyword_for_tag(t) or f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in always)
            raise ValueError(
                f"cannot deny {names}: UIDs and the attributes that display the image are always kept"
            )
        self._deny = denied
        self._allow = None if allow is None else frozenset(parse_attribute(name) for name in allow)

    @property
    def allow(self) -> frozenset[int] | None:
        """Tags allowed at the top level, or ``None`` for all."""
        return self._allow

    @property
    def deny(self) -> frozenset[int]:
        """Tags removed everywhere."""
        return self._deny

    def permits(self, tag: int, vr: str, *, top_level: bool = True) -> bool:
        """Whether an element of ``tag`` and ``vr`` is shown."""
        if tag & 0xFFFF == 0:
            return False  # group lengths go stale once anything is removed
        if tag in _ALWAYS_KEPT or vr == "UI":
            return True
        if tag in self._deny:
            return False
        return not (top_level and self._allow is not None) or tag in self._allow

    def apply_json(self, ds: Mapping[str, Any]) -> JsonDict:
        """A new DICOM JSON object holding what the role may see of ``ds`` (left unchanged)."""
        return self._json_level(ds, top_level=True)

    def _json_level(self, ds: Mapping[str, Any], *, top_level: bool) -> JsonDict:
        out: JsonDict = {}
        for key, element in ds.items():
            tag = int(key, 16)
            vr = str(element.get("vr") or dictionary_vr(tag))
            if not self.permits(tag, vr, top_level=top_level):
                continue
            if vr == "SQ":
                items = [self._json_level(item, top_level=False) for item in element.get("Value") or []]
                out[key] = {"vr": vr, "Value": items} if items else {"vr": vr}
            else:
                out[key] = json_element_copy(element)
        return out

    def apply_dataset(self, ds: Dataset) -> Dataset:
        """A new data set holding what the role may see of ``ds`` (left unchanged).

        The File Meta Information is kept as it is: it holds UIDs and the transfer syntax only.
        """
        out = copy.deepcopy(ds)
        self._dataset_level(out, top_level=True)
        return out

    def _dataset_level(self, ds: Dataset, *, top_level: bool) -> None:
        for tag in list(ds._dict):
            vr = dataset_vr(ds, tag)
            if not self.permits(int(tag), vr, top_level=top_level):
                del ds[tag]
            elif vr == "SQ" and self._deny:
                for item in ds[tag].value or []:
                    self._dataset_level(item, top_level=False)
