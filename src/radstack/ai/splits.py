"""The rules of a data set's content: labels, split shares, the split by patient and its counts.

Pure functions (no I/O), used by :mod:`radstack.ai.datasets` and by whatever makes labels (a
labeling project's export) or reads them (training, evaluation).

The split is by patient, never by image: patients are put in order by SHA-256 of the seed and
their key, separately for those with a fracture on any image and those without (so each split gets
its share of both), and cut by the ratios with the largest remainders. A data set with one class,
or a split that would be empty or lack a class, is refused with the counts per split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from radstack.errors import BadRequest

__all__ = [
    "DEFAULT_RATIOS",
    "SplitValues",
    "assign_splits",
    "check_counts",
    "check_label",
    "parse_ratios",
    "split_counts",
]

JsonDict = dict[str, Any]

#: Train, validation and test shares when none are given.
DEFAULT_RATIOS: tuple[float, float, float] = (0.70, 0.15, 0.15)
#: Label fields kept beside fracture, type and boxes when a truth file has them (for breakdowns).
_LABEL_EXTRAS = ("anatomy", "view", "displaced", "composited", "source")


class SplitValues(StrEnum):
    """The three splits, in their order."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


_SPLITS = tuple(SplitValues)


# ---------------------------------------------------------------------------------------- labels
def parse_ratios(value: str | Sequence[float]) -> tuple[float, float, float]:
    """Train/validation/test shares from ``"70/15/15"`` or ``[0.7, 0.15, 0.15]``, as fractions.

    Raises
    ------
    BadRequest
        Not three positive numbers (they are scaled to sum to one).
    """
    parts: list[Any] = value.split("/") if isinstance(value, str) else list(value)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 3 or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise BadRequest(
            f"split {value!r} is not three positive shares train/validation/test, e.g. 70/15/15; "
            "every split needs a share (an empty split is refused)"
        )
    total = sum(numbers)
    train, validation, test = (n / total for n in numbers)
    return train, validation, test


def check_label(label: Any, where: str, rows: int | None = None, columns: int | None = None) -> JsonDict:
    """A label in the data set's form; :class:`BadRequest` naming ``where`` and the bad value.

    ``{"fracture": bool, "type": str | None, "boxes": [[x0, y0, x1, y1], …]}`` with ``x0 < x1``
    and ``y0 < y1``, inside the image when its size is known; an image without a fracture has no
    boxes. The extra fields of a truth file (``anatomy``, ``view``, …) are kept.

    Raises
    ------
    BadRequest
        ``label`` is not an object, ``fracture`` is not a boolean, ``type`` is neither a string nor
        null, ``boxes`` is not a list, an image without a fracture has boxes, or a box is not four
        finite numbers with ``x0 < x1`` and ``y0 < y1`` inside the image.
    """
    if not isinstance(label, dict):
        raise BadRequest(f"{where}: the label must be a JSON object with 'fracture', 'type' and 'boxes'")
    fracture = label.get("fracture")
    if not isinstance(fracture, bool):
        raise BadRequest(f"{where}: 'fracture' must be true or false, not {fracture!r}")
    kind = label.get("type")
    if kind is not None and not isinstance(kind, str):
        raise BadRequest(f"{where}: 'type' must be a string or null, not {kind!r}")
    boxes = label.get("boxes") or []
    if not isinstance(boxes, list):
        raise BadRequest(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1]")
    if boxes and not fracture:
        raise BadRequest(f"{where}: an image without a fracture has boxes {boxes!r}")
    checked: list[list[float | int]] = []
    for box in boxes:
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box
            )
        ):
            raise BadRequest(f"{where}: box {box!r} is not [x0, y0, x1, y1] (four numbers, in pixels)")
        x0, y0, x1, y1 = box
        if not (x0 < x1 and y0 < y1):
            raise BadRequest(f"{where}: box {box!r} needs x0 < x1 and y0 < y1")
        if x0 < 0 or y0 < 0 or (columns is not None and x1 > columns) or (rows is not None and y1 > rows):
            raise BadRequest(f"{where}: box {box!r} lies outside the {columns}×{rows} image")
        checked.append([int(v) if float(v).is_integer() else float(v) for v in box])
    out: JsonDict = {"fracture": fracture, "type": kind if fracture else None, "boxes": checked}
    for extra in _LABEL_EXTRAS:
        value = label.get(extra)
        if isinstance(value, str | bool | int | float) or (value is None and extra in label):
            out[extra] = value
    return out


# ---------------------------------------------------------------------------------------- split
def assign_splits(
    patients: dict[str, bool], seed: int, ratios: tuple[float, float, float]
) -> dict[str, SplitValues]:
    """Each patient's split: stratified by whether they have a positive image, deterministic.

    Within each stratum patients are ordered by SHA-256 of the seed and their key (so adding a
    patient does not reorder the others) and cut by the ratios with the largest remainders; when a
    stratum has at least as many patients as there are splits, every split gets at least one.
    """
    out: dict[str, SplitValues] = {}
    for positive in (True, False):
        keys = sorted(
            (k for k, p in patients.items() if p is positive),
            key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest(),
        )
        sizes = _shares(len(keys), ratios)
        start = 0
        for split, size in zip(_SPLITS, sizes, strict=True):
            for key in keys[start : start + size]:
                out[key] = split
            start += size
    return out


def _shares(count: int, ratios: tuple[float, float, float]) -> list[int]:
    exact = [count * r for r in ratios]
    sizes = [math.floor(e) for e in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    if count >= len(sizes):
        while 0 in sizes:
            sizes[sizes.index(max(sizes))] -= 1
            sizes[sizes.index(0)] = 1
    return sizes


def split_counts(images: Iterable[tuple[str, JsonDict]], splits: Mapping[str, SplitValues]) -> JsonDict:
    """Patients, images, positive and negative images, and positive images by type, per split and
    in ``all``, of ``images`` given as (patient, label) with each patient's split."""

    def empty() -> JsonDict:
        return {"patients": 0, "images": 0, "positive": 0, "negative": 0, "types": {}}

    counts: JsonDict = {str(s): empty() for s in _SPLITS} | {"all": empty()}
    seen: set[tuple[str, str]] = set()
    for patient, label in images:
        split = str(splits[patient])
        for bucket in (split, "all"):
            entry = counts[bucket]
            if (bucket, patient) not in seen:
                seen.add((bucket, patient))
                entry["patients"] += 1
            entry["images"] += 1
            if label["fracture"]:
                entry["positive"] += 1
                kind = label.get("type") or "unknown"
                entry["types"][kind] = entry["types"].get(kind, 0) + 1
            else:
                entry["negative"] += 1
    return counts


def _describe(counts: JsonDict) -> str:
    """``train: 6 patients, 2 positive and 10 negative images; validation: …; all: …``."""
    return "; ".join(
        f"{s}: {_plural(counts[s]['patients'], 'patient')}, {counts[s]['positive']} positive and "
        f"{_plural(counts[s]['negative'], 'negative image')}"
        for s in (*(str(s) for s in _SPLITS), "all")
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check_counts(counts: JsonDict) -> None:
    """Refuse (:class:`BadRequest`, naming the counts) a data set with one class, or a split that is
    empty or lacks a class.

    Raises
    ------
    BadRequest
        The data set has no images or only one class, or a split would be empty or lack a class.
    """
    total = counts["all"]
    if not total["images"]:
        raise BadRequest("the data set has no images")
    if not total["positive"] or not total["negative"]:
        only = "with a fracture" if total["positive"] else "without a fracture"
        raise BadRequest(
            f"the data set has one class: all {total['images']} images are {only} "
            f"({total['positive']} positive, {total['negative']} negative); a detector needs both"
        )
    for split in _SPLITS:
        entry = counts[str(split)]
        if not entry["images"]:
            raise BadRequest(
                f"split '{split}' would be empty ({_describe(counts)}); add patients or change the ratios"
            )
        if not entry["positive"] or not entry["negative"]:
            missing = "positive" if not entry["positive"] else "negative"
            raise BadRequest(
                f"split '{split}' would have no {missing} image ({_describe(counts)}); each split needs "
                "patients with and without a fracture: add patients or change the ratios"
            )
