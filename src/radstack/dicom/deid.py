"""De-identification of DICOM headers (PS3.15 Annex E). No I/O.

Two forms of the same header pass through here and must come out alike: DICOM JSON objects (PS3.18
§F.2, as made by :func:`radstack.dicom.json_model.dataset_to_json`) for QIDO-RS and WADO-RS metadata,
and pydicom :class:`~pydicom.dataset.Dataset` objects for rebuilt Part-10 instances, C-FIND
identifiers and exported data sets. Both walk the same decision (:meth:`Deidentifier._plan`) and the
same value rewrites, so a header gives the same result in either form.

:class:`Deidentifier` applies the Basic Application Level Confidentiality Profile (PS3.15 §E.1,
Table E.1-1) with the Retain Longitudinal Temporal Information with Modified Dates Option
(PS3.15 §E.3.6): names and IDs are replaced by keyed pseudonyms, instance UIDs by keyed UIDs, and
every date of a patient moves by the same keyed number of days, so a data scientist can still join
studies of one patient and measure intervals but cannot recover who, where or when. Keys are HMACs
of a server secret: the same input always gives the same output, and nobody without the secret can
reverse or recompute them. Table E.1-1 itself is data (:mod:`radstack.dicom._standard`), with the
edition it was taken from.

It returns new objects and never changes its input: a JSON document may be a cached object that
other requests are reading. (A role's plainer allow/deny list of attributes is
:mod:`radstack.security.attribute_filter`.)
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from radstack.dicom._standard import table_e1_1
from radstack.dicom.attributes import dataset_vr, dictionary_vr, json_element_copy
from radstack.dicom.json_model import dataset_to_json
from radstack.dicom.uids import is_valid_uid

__all__ = [
    "DUMMY_TEXT",
    "Deidentifier",
    "PrivateTag",
    "ProfileActionValues",
    "basic_profile_action",
]

JsonDict = dict[str, Any]

#: Root of the UIDs the DICOM standard itself defines (SOP classes, transfer syntaxes, coding
#: schemes, well-known frames of reference and instances): never remapped (PS3.5 §9.1, Annex A).
DICOM_ROOT = "1.2.840.10008."


class ProfileActionValues(Enum):
    """Action codes of PS3.15 Table E.1-1 (legend in PS3.15 §E.1.1)."""

    #: Replace with a non-zero length value that may be a dummy value consistent with the VR.
    D = "D"
    #: Replace with a zero length value, or a dummy value consistent with the VR.
    Z = "Z"
    #: Remove.
    X = "X"
    #: Keep.
    K = "K"
    #: Clean: replace with values of similar meaning known not to contain identifying information.
    C = "C"
    #: Replace with a non-zero length UID that is internally consistent within a set of instances.
    U = "U"


def _parse_table(actions: Mapping[str, str]) -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """Actions by exact tag, and by (mask, value) for the repeating groups (``"xx"`` in a tag)."""
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for tag_text, action in actions.items():
        digits = tag_text.strip("()").replace(",", "")
        if "x" in digits:
            mask = int("".join("0" if c == "x" else "F" for c in digits), 16)
            masked.append((mask, int(digits.replace("x", "0"), 16), action))
        else:
            exact[int(digits, 16)] = action
    return exact, tuple(masked)


# PS3.15 Table E.1-1's "Basic Prof." column (the edition is in the data file): an action like
# "X/Z/D" means X unless Z or D is needed to keep the IOD conformant (Type 3 / 2 / 1); "X/Z/U*"
# means X unless Z, or replacing the instance UIDs the sequence holds, is needed. Private
# attributes (X), which the table covers in one row, are handled by PrivateTag allow-lists.
_BASIC_PROFILE, _BASIC_PROFILE_MASKED = _parse_table(table_e1_1().column("Basic Prof."))

#: Removed although Table E.1-1 does not list them: the patient's birth and death dates kept in
#: another calendar (the birth date in another form); the File Meta Information's AE titles and
#: private information (PS3.10 §7.1), which name the sending system as Station AE Title (X) does;
#: and a directory record's Referenced File ID (PS3.3 §F.3.2.2), a file path that exporters
#: often build from the patient's ID or name.
_ALSO_REMOVED = frozenset(
    {
        0x00100033,
        0x00100034,
        0x00100035,
        0x00020016,
        0x00020017,
        0x00020018,
        0x00020100,
        0x00020102,
        0x00041500,
    }
)

#: Temporal attributes the Modified Dates option leaves to the Basic Profile: the patient's birth,
#: an identifier in itself (Table E.1-1 gives it no option action), and the versions of coding
#: resources, which date a code list rather than the patient's care.
_NOT_LONGITUDINAL = frozenset({0x00100030, 0x00100032, 0x00080106, 0x00080107, 0x0040DB06, 0x0040DB07})

#: UID attributes that name a kind of thing rather than an instance: SOP classes, transfer
#: syntaxes, coding schemes, resources and systems. The profile replaces instance UIDs only
#: (PS3.15 §E.1, "Retain UIDs" option not in use), so these are kept.
_NON_INSTANCE_UIDS = frozenset(
    tag
    for keyword, tag in keyword_dict.items()
    if dictionary_VR(tag) == "UI"
    and tag not in _BASIC_PROFILE
    and (
        re.search(r"SOPClass|ClassUID|TransferSyntaxUID", keyword) is not None
        or keyword
        in {
            "CodingSchemeUID",
            "ContextGroupExtensionCreatorUID",
            "ContextUID",
            "CreatorVersionUID",
            "HomeCommunityID",
            "MappingResourceUID",
            "PrivateInformationCreatorUID",
            "RepositoryUniqueID",
            "RetrieveLocationUID",
            "SegmentationTemplateUID",
        }
    )
)

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Dummy value of action D for text VRs (PS3.15 §E.1.1: "consistent with the VR").
DUMMY_TEXT = "ANONYMIZED"
#: Date shifts of the Modified Dates option: one to ten years back, never zero.
_SHIFT_DAYS = (365, 3650)
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DT = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{0,6}(?:\.\d{1,6})?(?:[+-]\d{4})?)")

#: CID 7050 codes of what was applied (PS3.16), written in De-identification Method Code Sequence.
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)


def _action_text(tag: int) -> str | None:
    """The table's actions for ``tag`` as written there (``"X/Z/D"``), or ``None``."""
    action = _BASIC_PROFILE.get(tag)
    if action is None:
        for mask, value, masked_action in _BASIC_PROFILE_MASKED:
            if tag & mask == value:
                return masked_action
    return action


def basic_profile_action(tag: int) -> tuple[ProfileActionValues, ...] | None:
    """The Basic Profile actions PS3.15 Table E.1-1 gives a standard attribute.

    Parameters
    ----------
    tag
        The attribute's tag as an int, e.g. ``0x00100010``.

    Returns
    -------
    tuple of ProfileActionValues, or None
        The actions in the table's order: ``(Z,)`` for Patient's Name, ``(X, Z, D)`` for
        Institution Name (X unless Z or D is needed for the IOD to conform), ``(X, Z, U)`` for
        the ``X/Z/U*`` of Referenced Image Sequence (U applying to the UIDs inside it). ``None``
        for an attribute the table does not list. Private attributes are answered by
        :class:`Deidentifier`'s allow-list, not here.
    """
    text = _action_text(tag)
    if text is None:
        return None
    return tuple(ProfileActionValues(code.rstrip("*")) for code in text.split("/"))


@dataclass(frozen=True)
class PrivateTag:
    """A private attribute to keep, named as PS3.5 §7.8.1 reserves it.

    Parameters
    ----------
    group
        The odd group, e.g. ``0x0029``.
    creator
        The Private Creator value that reserved the block, e.g. ``"SIEMENS CSA HEADER"``.
    offset
        The element's offset in its block (the low byte of the element number), e.g. ``0x10``.
    """

    group: int
    creator: str
    offset: int

    def __post_init__(self) -> None:
        if not (self.group & 1 and 0x0009 <= self.group <= 0xFFFD):
            raise ValueError(f"private group {self.group:#06x} is not an odd group from 0009 to FFFD")
        if not 0 <= self.offset <= 0xFF:
            raise ValueError(f"private element offset {self.offset:#x} is not in 00-FF")
        if not self.creator.strip():
            raise ValueError("a private tag needs the Private Creator that reserved its block")


class _Op(Enum):
    """What becomes of one element: the table's actions resolved for the element's VR."""

    KEEP = "keep"
    REMOVE = "remove"
    EMPTY = "empty"
    DUMMY = "dummy"
    UID = "uid"
    SHIFT = "shift"
    RECURSE = "recurse"
    URI = "uri"
    PATIENT_NAME = "patient name"
    PATIENT_ID = "patient id"


#: Operations that rewrite each value of an element.
_REWRITES = frozenset({_Op.UID, _Op.SHIFT, _Op.URI})

# Without the IOD at hand the Type of an attribute is unknown, so a choice like X/D takes the
# action that conforms whatever the Type: D (a dummy) where offered, else Z (empty).
_OP_OF_ACTION = {
    "X": _Op.REMOVE,
    "Z": _Op.EMPTY,
    "D": _Op.DUMMY,
    "U": _Op.UID,
    "X/Z": _Op.EMPTY,
    "X/D": _Op.DUMMY,
    "Z/D": _Op.DUMMY,
    "X/Z/D": _Op.DUMMY,
    "X/Z/U*": _Op.RECURSE,
}


def _fit_vr(op: _Op, vr: str) -> _Op:
    """``op`` as it applies to an element of ``vr``."""
    if vr == "SQ":
        # A sequence is kept as its items, each de-identified in turn; D or U on a sequence
        # means the same (its identifying content is replaced item by item).
        return op if op in (_Op.REMOVE, _Op.EMPTY) else _Op.RECURSE
    if op is _Op.RECURSE:
        return _Op.EMPTY
    if op is _Op.DUMMY and vr == "UI":
        return _Op.UID
    if op is _Op.UID and vr != "UI":
        return _Op.REMOVE  # an unparsed UID cannot be replaced, so it goes
    return op


def _dummy(vr: str) -> str | int | bytes | None:
    """The dummy value of action D for ``vr``; ``None`` where only an empty value is safe."""
    if vr in _TEXT_VRS:
        return DUMMY_TEXT
    if vr in _NUMBER_VRS:
        return 0
    if vr in _BINARY_VRS:
        return bytes(8)  # a whole number of values for every binary VR
    return {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D"}.get(vr)


def _shift(vr: str, text: str, days: int) -> str | None:
    """A DA or DT value moved by ``days``; ``None`` for a value that is not a whole date.

    Partial dates (``"2019"``), ranges (``"20190101-"``) and malformed values cannot be shifted
    and must not leak, so the caller empties the element instead.
    """
    match = (_DA if vr == "DA" else _DT).fullmatch(text.strip())
    if match is None:
        return None
    try:
        moved = datetime.date(int(match[1]), int(match[2]), int(match[3])) + datetime.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    rest = match[4] if vr == "DT" else ""
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}{rest}"


def _element_strings(elem: DataElement) -> list[str | None]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [None if v is None else str(v) for v in value]
    return [str(value)]


def _json_value(vr: str, value: str | int | bytes | None) -> JsonDict:
    """DICOM JSON of an element holding one value (PS3.18 §F.2.2)."""
    if value is None or value == "":
        return {"vr": vr}
    if isinstance(value, bytes):
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


def _json_creators(ds: Mapping[str, Any]) -> dict[tuple[int, int], str]:
    """Private Creator values of one JSON data set, by (group, block) (PS3.5 §7.8.1)."""
    creators: dict[tuple[int, int], str] = {}
    for key, element in ds.items():
        tag = int(key, 16)
        group, number = tag >> 16, tag & 0xFFFF
        values = element.get("Value") if isinstance(element, Mapping) else None
        if group & 1 and 0x10 <= number <= 0xFF and values and isinstance(values[0], str):
            creators[(group, number)] = values[0].strip()
    return creators


def _dataset_creators(ds: Dataset) -> dict[tuple[int, int], str]:
    """Private Creator values of one data set, by (group, block) (PS3.5 §7.8.1)."""
    creators: dict[tuple[int, int], str] = {}
    for tag in list(ds._dict):
        group, number = tag >> 16, tag & 0xFFFF
        if group & 1 and 0x10 <= number <= 0xFF:
            value = ds[tag].value
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            if isinstance(value, str) and value:
                creators[(group, number)] = value.strip()
    return creators


def _marker_dataset() -> Dataset:
    """What PS3.15 §E.1.1 and §E.3.6 add to a de-identified instance."""
    marker = Dataset()
    marker.PatientIdentityRemoved = "YES"
    marker.DeidentificationMethod = [meaning for _, meaning in _METHOD_CODES]
    items = []
    for value, meaning in _METHOD_CODES:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    marker.DeidentificationMethodCodeSequence = Sequence(items)
    marker.LongitudinalTemporalInformationModified = "MODIFIED"
    return marker


@dataclass(frozen=True)
class _Call:
    """What one de-identification call fills in: the patient's pseudonyms and date shift."""

    days: int
    name: str
    patient_id: str
    rewrite_uri: Callable[[str], str]


class Deidentifier:
    """The Basic Application Level Confidentiality Profile (PS3.15 §E.1) with keyed pseudonyms.

    Options in force (PS3.15 §E.3): Retain Longitudinal Temporal Information with Modified Dates
    (§E.3.6); not Retain UIDs (§E.3.9), so instance UIDs are replaced; not Retain Safe Private
    (§E.3.10), so private attributes go unless listed in ``keep_private``.

    The actions of Table E.1-1 are resolved per element:

    * X removes, Z empties, D writes a dummy of the VR (``ANONYMIZED``, ``0``, zero bytes), U
      replaces each UID with :meth:`uid`. Where the table offers a choice for the IOD's sake
      (``X/D``, ``X/Z/D``, ``Z/D``), D is taken, else Z: it conforms whatever the attribute's Type.
    * A sequence that is not removed or emptied keeps its items, each de-identified the same way.
    * Patient's Name becomes ``ANON^<code>`` and Patient ID ``ANON-<code>``, both keyed on the
      patient (:meth:`pseudonym`), so one patient keeps one pseudonym across studies.
    * Every DA value, and the date of every DT value, moves back by :meth:`date_shift_days`; TM
      values are kept (a whole number of days does not change a time of day). Partial or range
      dates, as query results may hold, cannot be moved and are emptied. This covers dates the
      table does not list too, so no real date remains beside shifted ones; the patient's birth
      date and time take their Basic Profile action (Z, X).
    * UID attributes that the table does not list are replaced too unless they name a class
      rather than an instance (SOP Class, Transfer Syntax, Coding Scheme UIDs). UIDs under the
      DICOM root ``1.2.840.10008.`` are never replaced: they are defined by the standard.
    * Person names the table does not list (an evaluator's, a reviewer's) get a dummy too:
      every PN value names someone.
    * URIs (UR values, BulkDataURIs) that the table does not list go through ``rewrite_uri``,
      by default :meth:`remap_uri`: radstack's URLs carry the real UIDs in their path.
    * Private attributes are removed unless ``keep_private`` lists them, and so are a few
      attributes the table omits but that identify all the same (:data:`_ALSO_REMOVED`).
    * Patient Identity Removed (0012,0062) = ``YES``, De-identification Method (0012,0063) and
      its Code Sequence (0012,0064) with CID 7050 codes 113100 and 113107 are added (§E.1.1), and
      Longitudinal Temporal Information Modified (0028,0303) = ``MODIFIED`` (§E.3.6).

    Parameters
    ----------
    secret
        Key of every HMAC-SHA256 here; at least 16 bytes. Whoever holds it can recompute
        pseudonyms from real values, so it is as sensitive as the data.
    uid_root
        Root of replacement UIDs. The default ``2.25`` makes them UUID-derived UIDs
        (PS3.5 §B.2).
    keep_private
        Private attributes to keep (with their Private Creator); all others are removed.

    Raises
    ------
    ValueError
        If ``secret`` is shorter than 16 bytes or ``uid_root`` is not a valid UID root short
        enough for a 39-digit suffix.
    """

    def __init__(
        self, secret: bytes, *, uid_root: str = "2.25", keep_private: Iterable[PrivateTag] = ()
    ) -> None:
        if len(secret) < 16:
            raise ValueError(
                f"the de-identification secret is {len(secret)} bytes long: at least 16 random bytes are needed"
            )
        if not is_valid_uid(uid_root) or len(uid_root) > 64 - 40:
            raise ValueError(
                f"uid_root {uid_root!r} is not a UID root of at most 24 characters "
                "(PS3.5 §9.1: 64 characters in all, and the suffix takes up to 40)"
            )
        self._secret = bytes(secret)
        self._uid_root = uid_root
        self._keep_private = frozenset(keep_private)
        self._kept_creators = frozenset((p.group, p.creator) for p in self._keep_private)

    def _digest(self, purpose: bytes, value: str) -> bytes:
        return hmac.new(self._secret, purpose + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, real: str) -> str:
        """The replacement of an instance UID: the same for the same UID, every time.

        It is ``<uid_root>.`` and the decimal of the first 128 bits of
        HMAC-SHA256(secret, ``b"uid:" + real``), with the version and variant bits of an
        RFC 9562 version-8 UUID set, so under ``2.25`` it is a UUID-derived UID (PS3.5 §B.2): at
        most 44 characters, no component with a leading zero (PS3.5 §9.1). The store calls this at
        ingest to index the pseudonymous UIDs a de-identified client will ask for.

        Parameters
        ----------
        real
            The UID to replace; padding is ignored. A UID under the DICOM root
            ``1.2.840.10008.`` is returned as it is.
        """
        real = real.strip(" \0")
        if not real or real.startswith(DICOM_ROOT):
            return real
        raw = bytearray(self._digest(b"uid:", real)[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: a custom UUID (RFC 9562 §5.8)
        raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
        return f"{self._uid_root}.{int.from_bytes(raw, 'big')}"

    def pseudonym(self, value: str, kind: str) -> str:
        """A keyed pseudonym of a name or identifier: the same for the same value and kind.

        Parameters
        ----------
        value
            What to replace, e.g. the patient key.
        kind
            What the pseudonym stands for; it separates the keys, so a name and an ID made from
            one value differ. ``"name"`` gives a Person Name (PS3.5 §6.2) ``ANON^<code>``; any
            other kind gives ``ANON-<code>`` (21 characters: a valid LO value such as Patient ID).
            ``<code>`` is 16 base32 characters of the HMAC (80 bits).
        """
        if not kind:
            raise ValueError("a pseudonym needs a kind, e.g. 'name' or 'id'")
        digest = self._digest(b"pseudonym:" + kind.encode("utf-8") + b"\0", value)
        code = base64.b32encode(digest[:10]).decode("ascii")
        return f"ANON^{code}" if kind == "name" else f"ANON-{code}"

    def date_shift_days(self, patient_key: str) -> int:
        """Days every date of the patient moves by: keyed, in [-3650, -365], never 0.

        The same for every study of the patient, so the intervals between them are kept
        (PS3.15 §E.3.6, Retain Longitudinal Temporal Information with Modified Dates).
        """
        low, high = _SHIFT_DAYS
        number = int.from_bytes(self._digest(b"dateshift:", patient_key)[:8], "big")
        return -(low + number % (high - low + 1))

    def remap_uri(self, uri: str) -> str:
        """``uri`` with each path segment that is a dotted UID replaced by :meth:`uid`.

        The default rewrite of BulkDataURIs: radstack's own URIs name the study, series and
        instance UIDs in their path, which must not reach a de-identified client. Host, port and
        query are kept.
        """
        parts = urlsplit(uri)
        path = "/".join(
            self.uid(segment) if "." in segment and is_valid_uid(segment) else segment
            for segment in parts.path.split("/")
        )
        return urlunsplit(parts._replace(path=path))

    def _call(self, patient_key: str, rewrite_uri: Callable[[str], str] | None) -> _Call:
        return _Call(
            days=self.date_shift_days(patient_key),
            name=self.pseudonym(patient_key, "name"),
            patient_id=self.pseudonym(patient_key, "id"),
            rewrite_uri=rewrite_uri or self.remap_uri,
        )

    def _plan(self, tag: int, vr: str, creators: Mapping[tuple[int, int], str]) -> _Op:
        """What becomes of an element of ``tag`` and ``vr``; the single rule both forms follow."""
        group, number = tag >> 16, tag & 0xFFFF
        if number == 0 and group != 0x0002:
            return _Op.REMOVE  # group lengths: stale once anything is removed (PS3.5 §7.2)
        if group & 1:
            return self._plan_private(group, number, vr, creators)
        if tag == _PATIENT_NAME:
            return _Op.PATIENT_NAME if vr == "PN" else _Op.REMOVE
        if tag == _PATIENT_ID:
            return _Op.PATIENT_ID if vr == "LO" else _Op.REMOVE
        if tag in _ALSO_REMOVED:
            return _Op.REMOVE
        if vr in _TEMPORAL_VRS and tag not in _NOT_LONGITUDINAL:
            return _Op.KEEP if vr == "TM" else _Op.SHIFT
        action = _action_text(tag)
        if action is not None:
            return _fit_vr(_OP_OF_ACTION[action], vr)
        if vr == "UI" and tag not in _NON_INSTANCE_UIDS:
            return _Op.UID
        if vr == "PN":
            return _Op.DUMMY  # every person name names someone, listed or not
        if vr == "UR":
            return _Op.URI  # e.g. QIDO's Retrieve URL (0008,1190), which names the study UID
        return _Op.RECURSE if vr == "SQ" else _Op.KEEP

    def _plan_private(self, group: int, number: int, vr: str, creators: Mapping[tuple[int, int], str]) -> _Op:
        if number < 0x10:
            return _Op.REMOVE
        if number <= 0xFF:
            kept = (group, creators.get((group, number))) in self._kept_creators
        else:
            creator = creators.get((group, number >> 8))
            kept = creator is not None and PrivateTag(group, creator, number & 0xFF) in self._keep_private
        if not kept:
            return _Op.REMOVE
        return _Op.RECURSE if vr == "SQ" else _Op.KEEP

    def _rewrite(self, op: _Op, vr: str, values: list[Any], call: _Call) -> list[str | None] | None:
        """Values after UID or URI replacement or date shifting; ``None`` to empty the element."""
        out: list[str | None] = []
        for value in values:
            if value is None or value == "":
                out.append(value)
            elif not isinstance(value, str):
                return None
            elif op is _Op.UID:
                out.append(self.uid(value))
            elif op is _Op.URI:
                out.append(call.rewrite_uri(value))
            else:
                shifted = _shift(vr, value, call.days)
                if shifted is None:
                    return None
                out.append(shifted)
        return out

    # -- DICOM JSON ---------------------------------------------------------------------------

    def apply_json(
        self,
        ds: Mapping[str, Any],
        patient_key: str,
        *,
        rewrite_uri: Callable[[str], str] | None = None,
    ) -> JsonDict:
        """De-identify a DICOM JSON object (PS3.18 §F.2): a QIDO result, metadata, an item.

        Parameters
        ----------
        ds
            The object; it is not changed, and the result shares nothing mutable with it.
        patient_key
            The store's identity of the patient (e.g. issuer and Patient ID): it keys the
            pseudonyms and the date shift, so it must be the same for every study of the patient.
        rewrite_uri
            Rewrites the BulkDataURI of each kept bulk element, and each UR value (such as
            QIDO's Retrieve URL); by default :meth:`remap_uri`, which replaces the UIDs in the
            URI's path. Elements that are removed or replaced lose their BulkDataURI.

        Returns
        -------
        dict
            A new DICOM JSON object with its keys in tag order.
        """
        call = self._call(patient_key, rewrite_uri)
        out = self._json_level(ds, call)
        out.update(dataset_to_json(_marker_dataset(), ""))
        return dict(sorted(out.items()))

    def _json_level(self, ds: Mapping[str, Any], call: _Call) -> JsonDict:
        creators = _json_creators(ds)
        out: JsonDict = {}
        for key, element in ds.items():
            tag = int(key, 16)
            vr = str(element.get("vr") or dictionary_vr(tag))
            new = self._json_element(self._plan(tag, vr, creators), vr, element, call)
            if new is not None:
                out[f"{tag:08X}"] = new
        return dict(sorted(out.items()))

    def _json_element(self, op: _Op, vr: str, element: Mapping[str, Any], call: _Call) -> JsonDict | None:
        if op is _Op.REMOVE:
            return None
        if op is _Op.KEEP:
            return json_element_copy(element, call.rewrite_uri)
        if op is _Op.RECURSE:
            items = [self._json_level(item, call) for item in element.get("Value") or []]
            return {"vr": vr, "Value": items} if items else {"vr": vr}
        if op in _REWRITES:
            values = self._rewrite(op, vr, list(element.get("Value") or []), call)
            return {"vr": vr, "Value": values} if values else {"vr": vr}
        return _json_value(vr, self._replacement(op, vr, call))

    def _replacement(self, op: _Op, vr: str, call: _Call) -> str | int | bytes | None:
        """The new value of an EMPTY, DUMMY, PATIENT_NAME or PATIENT_ID element."""
        if op is _Op.PATIENT_NAME:
            return call.name
        if op is _Op.PATIENT_ID:
            return call.patient_id
        if op is _Op.DUMMY:
            return _dummy(vr)
        return None

    # -- pydicom datasets ---------------------------------------------------------------------

    def apply_dataset(
        self, ds: Dataset, patient_key: str, *, rewrite_uri: Callable[[str], str] | None = None
    ) -> Dataset:
        """De-identify a pydicom data set: a Part-10 instance, a C-FIND identifier, an export.

        The File Meta Information is de-identified too: Media Storage SOP Instance UID becomes
        the new SOP Instance UID, the sender's AE titles go, and the preamble (which may carry
        application data, PS3.10 §7.5) is zeroed. Pixel data is kept as it is: burned-in text is
        the Clean Pixel Data option's matter (PS3.15 §E.3.1), not this profile's.

        Parameters
        ----------
        ds
            The data set (a :class:`~pydicom.dataset.FileDataset` too); it is not changed.
        patient_key
            As for :meth:`apply_json`.
        rewrite_uri
            As for :meth:`apply_json`; here it rewrites UR values (a data set has no
            BulkDataURIs).

        Returns
        -------
        Dataset
            A new data set of the same class; unchanged elements stay unparsed.
        """
        call = self._call(patient_key, rewrite_uri)
        out = copy.deepcopy(ds)
        self._dataset_level(out, call)
        meta = getattr(out, "file_meta", None)
        if meta is not None:
            self._dataset_level(meta, call)
        if getattr(out, "preamble", None) is not None:
            out.preamble = bytes(128)
        for elem in _marker_dataset():
            out[elem.tag] = elem
        return out

    def _dataset_level(self, ds: Dataset, call: _Call) -> None:
        """De-identify ``ds`` in place: it is always the caller's own copy."""
        creators = _dataset_creators(ds)
        for tag in list(ds._dict):
            vr = dataset_vr(ds, tag)
            op = self._plan(int(tag), vr, creators)
            if op is _Op.KEEP:
                continue
            if op is _Op.REMOVE:
                del ds[tag]
            elif op is _Op.RECURSE:
                for item in ds[tag].value or []:
                    self._dataset_level(item, call)
            elif op in _REWRITES:
                values = self._rewrite(op, vr, _element_strings(ds[tag]), call)
                kept = ["" if v is None else v for v in values or []]
                ds[tag] = DataElement(tag, vr, kept[0] if len(kept) == 1 else kept or "")
            else:
                value = self._replacement(op, vr, call)
                ds[tag] = DataElement(tag, vr, empty_value_for_VR(vr) if value is None else value)
