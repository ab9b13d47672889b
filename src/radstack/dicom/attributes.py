"""Naming and reading attributes alike in both forms of a header: pydicom data sets and DICOM JSON.

What every walk over a header needs, whatever it does to the elements (de-identification in
:mod:`radstack.dicom.deid`, a role's attribute filter in :mod:`radstack.security.attribute_filter`):
the tag a configuration names, the VR an element has in either form, and a copy of a DICOM JSON
element that shares nothing mutable with a cached document. No I/O.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

__all__ = ["dataset_vr", "dictionary_vr", "json_element_copy", "parse_attribute"]

JsonDict = dict[str, Any]

_TAG_TEXT = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")


def parse_attribute(name: str | int) -> int:
    """The tag of an attribute named in configuration.

    Parameters
    ----------
    name
        A keyword of PS3.6 (``"PatientBirthDate"``), a tag as ``"(0010,0030)"``, ``"0010,0030"``
        or ``"00100030"``, or an int.

    Raises
    ------
    ValueError
        For an unknown keyword or a malformed tag; the message names it and suggests near
        keywords.
    """
    if isinstance(name, int):
        if not 0 <= name <= 0xFFFFFFFF:
            raise ValueError(f"attribute tag {name:#x} is not a 32-bit tag")
        return name
    text = name.strip()
    match = _TAG_TEXT.fullmatch(text)
    if match is not None:
        return int(match[1] + match[2], 16)
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    tag = keyword_dict.get(text)
    if tag is None:
        near = difflib.get_close_matches(text, list(keyword_dict), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(
            f"unknown DICOM attribute {name!r}: expected a PS3.6 keyword such as 'PatientBirthDate' "
            f"or a tag such as '(0010,0030)'{hint}"
        )
    return int(tag)


def dictionary_vr(tag: int) -> str:
    """The VR PS3.6 gives ``tag`` (the first of ``"US or SS"``); ``"UN"`` for an unknown tag."""
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def dataset_vr(ds: Dataset, tag: BaseTag) -> str:
    """The VR :func:`~radstack.dicom.json_model.dataset_to_json` writes for an element.

    An explicit VR is read from the raw element without parsing it; implicit or UN elements are
    parsed (on ``ds``, which callers own) so pydicom can resolve the VR from its dictionary.
    """
    raw = ds._dict[tag]
    if isinstance(raw, RawDataElement) and raw.VR and raw.VR != "UN" and not raw.is_implicit_VR:
        return str(raw.VR)
    return str(ds[tag].VR)


def json_element_copy(
    element: Mapping[str, Any], rewrite_uri: Callable[[str], str] | None = None
) -> JsonDict:
    """A copy of one DICOM JSON element that shares nothing mutable with it.

    ``rewrite_uri``, when given, rewrites its BulkDataURI.
    """
    if element.get("vr") == "SQ":
        return copy.deepcopy(dict(element))
    out = dict(element)
    value = out.get("Value")
    if isinstance(value, list):
        out["Value"] = [dict(v) if isinstance(v, dict) else v for v in value]
    uri = out.get("BulkDataURI")
    if rewrite_uri is not None and isinstance(uri, str):
        out["BulkDataURI"] = rewrite_uri(uri)
    return out
