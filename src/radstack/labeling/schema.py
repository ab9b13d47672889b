"""A labeling project's label schema, and the checks of the labels readers send against it (no I/O).

The schema (:class:`LabelSchema`) names each label by a key and a code (value, scheme, meaning:
SNOMED CT, RadLex, …), the geometries a reader may give it (box, point, line, mask, image-level class)
and whether it takes a laterality and a site. Its JSON form::

    {"labels": [{"key": "fracture",
                 "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
                 "geometry": ["box", "point", "class"], "laterality": true, "site": true}]}

A label sent as JSON is ``{"label", "geometry", "data", "sop_uid", "frame"?, "laterality"?, "site"?,
"value"?}`` (:func:`check_label`), then checked on its image (:func:`check_on_image`). ``data`` by
geometry, in pixel-edge coordinates (``(0, 0)`` is the first pixel's outer corner, so a box may reach
``(columns, rows)``, as :mod:`radstack.labeling.agreement` counts them):

* ``{"box": [x0, y0, x1, y1]}`` with ``x0 < x1`` and ``y0 < y1``;
* ``{"point": [x, y]}``;
* ``{"line": [x0, y0, x1, y1]}`` (two distinct ends);
* ``{"mask": {"rows", "columns", "rle"}}``: the image's size, and ``rle`` COCO's uncompressed
  run-length encoding ``{"size": [rows, columns], "counts": [...]}`` (:func:`radstack.labeling.labels.mask_rle`,
  the form masks read from a SEG take): the pixels in column-major order, alternately unset and set,
  starting with unset (so counts ``[5, 2, 3]`` set the 6th and 7th of 10 pixels);
* ``{}`` for an image-level ``class`` (which alone may carry a ``value``).

Every refusal is a :class:`~radstack.errors.BadRequest` naming the field (``labels[2].geometry``,
``schema.labels[0].code.scheme``) and what would be accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from radstack.dicom.uids import check_uid
from radstack.errors import BadRequest

__all__ = [
    "LATERALITIES",
    "CheckedLabel",
    "Code",
    "Geometry",
    "ImageSize",
    "LabelDef",
    "LabelSchema",
    "check_flag",
    "check_label",
    "check_name",
    "check_on_image",
    "check_text",
    "choices",
]

#: Image Laterality (0020,0062) values: right, left, both, unpaired.
LATERALITIES = ("R", "L", "B", "U")
#: Longest site text, class value, code value and meaning (LO), coding scheme designator (SH).
TEXT_MAX = 64
SCHEME_MAX = 16
#: The most labels one schema defines.
SCHEMA_LABELS_MAX = 200

#: Project names and label keys.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
JsonDict = dict[str, Any]


def choices(values: Iterable[str]) -> str:
    """``a, b, c``: the accepted values, as messages list them."""
    return ", ".join(values)


def check_name(name: Any, what: str) -> str:
    """``name`` itself when it is 1 to 64 lowercase letters, digits, '.', '_' or '-' starting with a
    letter or digit (a project's name, a label's key).

    Raises
    ------
    BadRequest
        Otherwise, naming ``what``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(
            f"{what} {name!r} is not valid: use 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class Geometry(StrEnum):
    """What a label marks: a region, a point, a line, a mask, or the whole image (a class)."""

    BOX = "box"
    POINT = "point"
    LINE = "line"
    MASK = "mask"
    CLASS = "class"


def check_text(value: Any, where: str, longest: int) -> str:
    """``value`` stripped, when it is a non-empty string of at most ``longest`` characters.

    Raises
    ------
    BadRequest
        Otherwise, naming ``where``.
    """
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{where} must be a non-empty string, not {value!r}")
    if len(value) > longest:
        raise BadRequest(f"{where} has {len(value)} characters; at most {longest}")
    return value.strip()


def _fields(document: Any, where: str, required: Sequence[str], optional: Sequence[str]) -> JsonDict:
    """``document`` as an object with exactly the named fields (the ``required`` ones present).

    Raises
    ------
    BadRequest
        Not an object, an unknown field (the accepted ones listed), a required one missing.
    """
    if not isinstance(document, Mapping):
        raise BadRequest(f"{where} must be a JSON object, not {type(document).__name__}")
    accepted = (*required, *optional)
    unknown = [key for key in document if key not in accepted]
    if unknown:
        raise BadRequest(f"{where}: unknown field {unknown[0]!r}; accepted: {choices(accepted)}")
    missing = [key for key in required if key not in document]
    if missing:
        raise BadRequest(f"{where}.{missing[0]} is missing")
    return dict(document)


def check_flag(value: Any, where: str) -> bool:
    """``value`` when it is a boolean.

    Raises
    ------
    BadRequest
        Otherwise, naming ``where``.
    """
    if not isinstance(value, bool):
        raise BadRequest(f"{where} must be true or false, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept (PS3.3 §8.8): ``125605004``, ``SCT``, ``Fracture of bone``."""

    value: str
    scheme: str
    meaning: str

    def to_json(self) -> JsonDict:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


@dataclass(frozen=True, slots=True)
class LabelDef:
    """One label of a schema: its key, code, the geometries it may be given, laterality and site."""

    key: str
    code: Code
    geometry: tuple[Geometry, ...]
    laterality: bool = False
    site: bool = False

    def to_json(self) -> JsonDict:
        return {
            "key": self.key,
            "code": self.code.to_json(),
            "geometry": [g.value for g in self.geometry],
            "laterality": self.laterality,
            "site": self.site,
        }


@dataclass(frozen=True, slots=True)
class LabelSchema:
    """A project's labels; :meth:`from_json` reads and checks the JSON form::

    {"labels": [{"key": "fracture",
                 "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
                 "geometry": ["box", "point", "class"], "laterality": true, "site": true}]}
    """

    labels: tuple[LabelDef, ...]

    @classmethod
    def from_json(cls, document: Any) -> LabelSchema:
        """The schema ``document`` describes.

        Raises
        ------
        BadRequest
            Naming the field: not an object with a non-empty ``labels`` list; a label without a
            valid key (``[a-z0-9][a-z0-9._-]{0,63}``), code (``value``, ``scheme``, ``meaning``) or
            geometry (a non-empty subset of box, point, line, mask, class); a flag that is not a
            boolean; an unknown field; two labels with the same key or code meaning.
        """
        top = _fields(document, "schema", ("labels",), ())
        labels = top["labels"]
        if not isinstance(labels, list) or not labels:
            raise BadRequest("schema.labels must be a non-empty list of labels")
        if len(labels) > SCHEMA_LABELS_MAX:
            raise BadRequest(f"schema.labels has {len(labels)} labels; at most {SCHEMA_LABELS_MAX}")
        parsed = tuple(_label_def(item, f"schema.labels[{i}]") for i, item in enumerate(labels))
        # A reader's text (an OHIF label) finds its label by key or meaning: each must name one label.
        seen: dict[str, tuple[int, str]] = {}
        for i, label in enumerate(parsed):
            for name in sorted({label.key.lower(), label.code.meaning.lower()}):
                if name in seen:
                    j, key = seen[name]
                    raise BadRequest(
                        f"schema.labels[{i}]: {name!r} already names schema.labels[{j}] ({key!r}); "
                        "keys and code meanings must name one label each"
                    )
                seen[name] = (i, label.key)
        return cls(parsed)

    def to_json(self) -> JsonDict:
        return {"labels": [label.to_json() for label in self.labels]}

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(label.key for label in self.labels)

    def find(self, text: str) -> LabelDef | None:
        """The label ``text`` names: its key or its code meaning, case-insensitive; None if none."""
        wanted = text.strip().lower()
        for label in self.labels:
            if wanted in (label.key.lower(), label.code.meaning.lower()):
                return label
        return None


def _label_def(item: Any, where: str) -> LabelDef:
    document = _fields(item, where, ("key", "code", "geometry"), ("laterality", "site"))
    key = check_name(document["key"], f"{where}.key")
    code = _fields(document["code"], f"{where}.code", ("value", "scheme", "meaning"), ())
    geometry = document["geometry"]
    if not isinstance(geometry, list) or not geometry:
        raise BadRequest(f"{where}.geometry must be a non-empty list of {choices(Geometry)}")
    kinds: list[Geometry] = []
    for i, value in enumerate(geometry):
        if value not in tuple(Geometry):
            raise BadRequest(f"{where}.geometry[{i}] {value!r} is not one of {choices(Geometry)}")
        if Geometry(value) in kinds:
            raise BadRequest(f"{where}.geometry lists {value!r} twice")
        kinds.append(Geometry(value))
    return LabelDef(
        key=key,
        code=Code(
            value=check_text(code["value"], f"{where}.code.value", TEXT_MAX),
            scheme=check_text(code["scheme"], f"{where}.code.scheme", SCHEME_MAX),
            meaning=check_text(code["meaning"], f"{where}.code.meaning", TEXT_MAX),
        ),
        geometry=tuple(kinds),
        laterality=check_flag(document.get("laterality", False), f"{where}.laterality"),
        site=check_flag(document.get("site", False), f"{where}.site"),
    )


@dataclass(frozen=True, slots=True)
class CheckedLabel:
    """A label that passed the schema's checks (:func:`check_label`), before its image is looked at.

    ``index`` is its place in the submission (messages name it ``labels[index]``)."""

    index: int
    label: LabelDef
    geometry: Geometry
    data: JsonDict
    sop_uid: str
    frame: int | None
    laterality: str | None
    site: str | None
    value: str | None


def _number(value: Any, where: str) -> float:
    # bool is an int to Python, never a coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{where} {value!r} is not a finite number")
    return float(value)


def _coordinates(value: Any, where: str, count: int, form: str) -> list[float]:
    if not isinstance(value, list) or len(value) != count:
        raise BadRequest(f"{where} must be {form}, not {value!r}")
    return [_number(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _geometry_data(geometry: Geometry, data: Any, where: str) -> JsonDict:
    """``data`` checked for its form (the image's bounds are checked once the image is known).

    Raises
    ------
    BadRequest
        Not the form of ``geometry`` (see the module's docstring), an inverted or empty box, a line
        with both ends at one point, a mask whose runs do not cover it or set no pixel.
    """
    if geometry is Geometry.CLASS:
        if data not in (None, {}):
            raise BadRequest(f"{where}.data must be {{}} for a class label, not {data!r}")
        return {}
    name = geometry.value
    document = _fields(data, f"{where}.data", (name,), ())
    if geometry is Geometry.BOX:
        x0, y0, x1, y1 = _coordinates(document[name], f"{where}.data.box", 4, "[x0, y0, x1, y1]")
        if not (x0 < x1 and y0 < y1):
            raise BadRequest(
                f"{where}.data.box {[x0, y0, x1, y1]} is inverted or empty; x0 < x1 and y0 < y1 are required"
            )
        return {"box": [x0, y0, x1, y1]}
    if geometry is Geometry.POINT:
        return {"point": _coordinates(document[name], f"{where}.data.point", 2, "[x, y]")}
    if geometry is Geometry.LINE:
        line = _coordinates(document[name], f"{where}.data.line", 4, "[x0, y0, x1, y1]")
        if line[:2] == line[2:]:
            raise BadRequest(f"{where}.data.line {line} has both ends at the same point")
        return {"line": line}
    mask = _fields(document[name], f"{where}.data.mask", ("rows", "columns", "rle"), ())
    for side in ("rows", "columns"):
        size = mask[side]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise BadRequest(f"{where}.data.mask.{side} {size!r} is not a positive integer")
    rle = mask["rle"]
    counts = rle.get("counts") if isinstance(rle, dict) else None
    if not isinstance(counts, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts
    ):
        raise BadRequest(
            f"{where}.data.mask.rle must be COCO's uncompressed RLE {{'size': [rows, columns], "
            "'counts': [run lengths, integers, 0 or more]}"
        )
    if rle.get("size") != [mask["rows"], mask["columns"]]:
        raise BadRequest(
            f"{where}.data.mask.rle.size {rle.get('size')!r} is not [rows, columns] "
            f"[{mask['rows']}, {mask['columns']}]"
        )
    pixels = mask["rows"] * mask["columns"]
    if sum(counts) != pixels:
        raise BadRequest(
            f"{where}.data.mask.rle covers {sum(counts)} pixels; a {mask['rows']} × {mask['columns']} mask "
            f"has {pixels}"
        )
    if not any(counts[1::2]):
        raise BadRequest(f"{where}.data.mask sets no pixel")
    rle = {"size": [mask["rows"], mask["columns"]], "counts": counts}
    return {"mask": {"rows": mask["rows"], "columns": mask["columns"], "rle": rle}}


def check_label(schema: LabelSchema, raw: Any, index: int) -> CheckedLabel:
    """One label of a JSON submission, checked against the schema (not yet against its image).

    Raises
    ------
    BadRequest
        Naming the field: an unknown field, a label outside the schema (the accepted ones listed), a
        geometry that label may not have, malformed data, a laterality or site the label does not
        take or an unknown laterality, a value on a label that is not a class, a frame below 1.
    """
    where = f"labels[{index}]"
    document = _fields(
        raw,
        where,
        ("label", "geometry", "sop_uid"),
        ("data", "frame", "laterality", "site", "value"),
    )
    name = document["label"]
    found = schema.find(name) if isinstance(name, str) else None
    if found is None:
        raise BadRequest(
            f"{where}.label {name!r} is not a label of this project; accepted: {choices(schema.keys)}"
        )
    geometry = document["geometry"]
    if geometry not in tuple(Geometry) or Geometry(geometry) not in found.geometry:
        allowed = choices(g.value for g in found.geometry)
        raise BadRequest(
            f"{where}.geometry {geometry!r} is not allowed for {found.key!r}; it takes {allowed}"
        )
    kind = Geometry(geometry)
    data = _geometry_data(kind, document.get("data"), where)
    sop_uid = check_uid(document["sop_uid"], f"{where}.sop_uid", in_request=True)
    frame = document.get("frame")
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
        raise BadRequest(f"{where}.frame {frame!r} is not a frame number (1, 2, …)")
    laterality = document.get("laterality")
    if laterality is not None:
        if not found.laterality:
            raise BadRequest(f"{where}.laterality: label {found.key!r} takes no laterality")
        if laterality not in LATERALITIES:
            raise BadRequest(
                f"{where}.laterality {laterality!r} is not one of {choices(LATERALITIES)} "
                "(right, left, both, unpaired)"
            )
    site = document.get("site")
    if site is not None:
        if not found.site:
            raise BadRequest(f"{where}.site: label {found.key!r} takes no site")
        site = check_text(site, f"{where}.site", TEXT_MAX)
    value = document.get("value")
    if value is not None:
        if kind is not Geometry.CLASS:
            raise BadRequest(f"{where}.value: only a class label has a value, not a {kind.value}")
        value = check_text(value, f"{where}.value", TEXT_MAX)
    return CheckedLabel(index, found, kind, data, sop_uid, frame, laterality, site, value)


@dataclass(frozen=True, slots=True)
class ImageSize:
    """What the checks need of an image: its size and frames."""

    rows: int
    columns: int
    frames: int


def check_on_image(checked: CheckedLabel, image: ImageSize) -> None:
    """The label's frame and coordinates inside its image.

    Raises
    ------
    BadRequest
        A frame the image does not have (or none for a multi-frame image), a coordinate outside the
        image, or a mask of another size than the image.
    """
    where = f"labels[{checked.index}]"
    if checked.frame is not None and checked.frame > image.frames:
        raise BadRequest(
            f"{where}.frame {checked.frame}: image {checked.sop_uid} has {image.frames} frame(s)"
        )
    if checked.frame is None and image.frames > 1:
        raise BadRequest(f"{where}.frame is missing: image {checked.sop_uid} has {image.frames} frames")
    data = checked.data
    if checked.geometry is Geometry.MASK:
        mask = data["mask"]
        if (mask["rows"], mask["columns"]) != (image.rows, image.columns):
            raise BadRequest(
                f"{where}.data.mask is {mask['rows']} × {mask['columns']}; image {checked.sop_uid} "
                f"is {image.rows} × {image.columns} (rows × columns)"
            )
        return
    if checked.geometry is Geometry.CLASS:
        return
    values: list[float] = data[checked.geometry.value]
    for i in range(0, len(values), 2):
        x, y = values[i], values[i + 1]
        if not (0 <= x <= image.columns and 0 <= y <= image.rows):
            raise BadRequest(
                f"{where}.data.{checked.geometry.value} {values}: ({x:g}, {y:g}) is outside image "
                f"{checked.sop_uid} (0–{image.columns} across, 0–{image.rows} down, in pixel edges)"
            )
