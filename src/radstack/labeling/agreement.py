"""Agreement between readers, and of one reader against a gold set (numpy only, no I/O).

Chance-corrected agreement on categories
    :func:`cohen_kappa` (two readers, every item read by both), :func:`fleiss_kappa` (the same number of
    readers on every item) and :func:`krippendorff_alpha` (any readers, missing reads allowed; nominal,
    ordinal, interval and ratio data).

    **No variation.** When every rating falls in one and the same category, chance agreement is 1 and each
    coefficient is formally 0/0. Expected agreement can only be 1 when observed agreement is 1 too (every
    rating is the same), so all three return ``1.0`` then: the readers agreed on everything, and the figure
    must not turn into NaN on a project page. A caller that wants to flag "no variation, so
    uninformative" checks the counts itself.

Geometry
    :func:`match_boxes` pairs two readers' boxes one-to-one at IoU ≥ τ, :func:`box_agreement` gives F1 and
    the mean IoU of the pairs, :func:`dice` compares two masks.

One reader against a gold set
    :func:`reader_sensitivity` (boxes) and :func:`reader_class_sensitivity` (image-level classes), each a
    :class:`Proportion` with a Wilson score 95% interval (:func:`wilson_interval`).

Every function checks its input and raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from radstack.labeling._geometry import (
    BoxesLike,
    as_boxes,
    as_masks,
    check_iou_threshold,
    is_missing,
    min_cost_assignment,
)
from radstack.measures import box_iou, wilson_interval

__all__ = [
    "BoxAgreement",
    "BoxMatch",
    "ClassSensitivity",
    "Proportion",
    "ReaderSensitivity",
    "box_agreement",
    "cohen_kappa",
    "dice",
    "fleiss_kappa",
    "krippendorff_alpha",
    "match_boxes",
    "reader_class_sensitivity",
    "reader_sensitivity",
    "wilson_interval",
]

Level = Literal["nominal", "ordinal", "interval", "ratio"]
#: An image key (a SOP Instance UID, a task id, ...).
K = TypeVar("K", bound=Hashable)


def _complete_ratings(values: Sequence[Hashable], what: str) -> list[Hashable]:
    """``values`` as a list, refusing missing ratings (only Krippendorff's alpha allows them).

    Raises
    ------
    ValueError
        A rating is None or NaN.
    """
    ratings = list(values)
    for i, value in enumerate(ratings):
        if is_missing(value):
            raise ValueError(
                f"{what}: rating {i} is missing ({value!r}); use krippendorff_alpha when reads are missing"
            )
    return ratings


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two readers' categories on the same items.

    ``κ = (p_o − p_e) / (1 − p_e)`` with ``p_o`` the share of items both readers put in the same category
    and ``p_e = Σ_k p_a(k) p_b(k)`` the agreement expected from each reader's own category shares
    (Cohen 1960, "A coefficient of agreement for nominal scales", Educ. Psychol. Meas. 20:37-46).

    Parameters
    ----------
    a, b
        One category per item (any hashable: a code, a string, a bool), in the same item order.

    Returns
    -------
    float
        Kappa in ``[-1, 1]``; ``1.0`` when both readers put every item in one and the same category
        (``p_e = 1``, which forces ``p_o = 1``: see the module docstring).

    Raises
    ------
    ValueError
        No items, different item counts, or a missing rating.
    """
    ra = _complete_ratings(a, "cohen_kappa reader a")
    rb = _complete_ratings(b, "cohen_kappa reader b")
    if len(ra) != len(rb):
        raise ValueError(
            f"cohen_kappa: reader a rated {len(ra)} items and reader b {len(rb)}; both rate the same items"
        )
    n = len(ra)
    if n == 0:
        raise ValueError("cohen_kappa: no items")
    agree = sum(x == y for x, y in zip(ra, rb, strict=True))
    count_a, count_b = Counter(ra), Counter(rb)
    # In counts: n² p_e = Σ_k n_a(k) n_b(k); integer arithmetic decides the degenerate case exactly.
    chance = sum(count_a[k] * count_b[k] for k in count_a)
    if chance == n * n:
        return 1.0
    return (agree * n - chance) / (n * n - chance)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa of ``n`` readers per item (the readers may differ from item to item).

    With ``n_ij`` the number of readers who put item ``i`` in category ``j`` (``N`` items):
    ``P_i = (Σ_j n_ij² − n) / (n (n − 1))``, ``P̄ = mean P_i``, ``p_j = Σ_i n_ij / (N n)``,
    ``P̄_e = Σ_j p_j²`` and ``κ = (P̄ − P̄_e) / (1 − P̄_e)`` (Fleiss 1971, "Measuring nominal scale agreement
    among many raters", Psychol. Bull. 76:378-382).

    Parameters
    ----------
    ratings
        Items × readers: row ``i`` holds the ``n`` categories item ``i`` received.

    Returns
    -------
    float
        Kappa (at most 1); ``1.0`` when every rating is one and the same category (``P̄_e = 1``).

    Raises
    ------
    ValueError
        No items, fewer than two readers, rows of different lengths, or a missing rating.
    """
    rows = [_complete_ratings(row, f"fleiss_kappa item {i}") for i, row in enumerate(ratings)]
    if not rows:
        raise ValueError("fleiss_kappa: no items")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(
            f"fleiss_kappa: items have {sorted(lengths)} ratings; every item needs the same number of readers "
            "(use krippendorff_alpha when reads are missing)"
        )
    n = lengths.pop()
    if n < 2:
        raise ValueError(f"fleiss_kappa: {n} reader per item; at least 2 are needed")
    big_n = len(rows)
    counts = [Counter(row) for row in rows]
    # Σ_i P_i · N n (n − 1) and P̄_e · (N n)², kept in integers so the degenerate case is exact.
    observed = sum(sum(c * c for c in count.values()) - n for count in counts)
    totals: Counter[Hashable] = Counter()
    for count in counts:
        totals.update(count)
    chance = sum(t * t for t in totals.values())
    if chance == (big_n * n) ** 2:
        return 1.0
    p_bar = observed / (big_n * n * (n - 1))
    p_e = chance / (big_n * n) ** 2
    return (p_bar - p_e) / (1.0 - p_e)


def _delta2(values: list[Any], marginals: NDArray[np.float64], level: Level) -> NDArray[np.float64]:
    """Krippendorff's squared difference ``δ²(c, k)`` between every pair of values (2011, section E)."""
    if level == "nominal":
        size = len(values)
        return 1.0 - np.eye(size)
    v = np.asarray(values, dtype=np.float64)
    if level == "interval":
        result: NDArray[np.float64] = (v[:, None] - v[None, :]) ** 2
        return result
    if level == "ratio":
        total = v[:, None] + v[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total > 0, (v[:, None] - v[None, :]) / total, 0.0)
        result = ratio**2
        return result
    # ordinal: values are sorted; δ²(c, k) = (Σ_{g=c..k} n_g − (n_c + n_k) / 2)²
    cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
    lo = np.minimum.outer(np.arange(len(v)), np.arange(len(v)))
    hi = np.maximum.outer(np.arange(len(v)), np.arange(len(v)))
    span = cumulative[hi + 1] - cumulative[lo]
    result = (span - (marginals[:, None] + marginals[None, :]) / 2.0) ** 2
    return result


def krippendorff_alpha(data: Sequence[Sequence[Any]] | NDArray[Any], level: Level = "nominal") -> float:
    """Krippendorff's alpha of readers × items with missing reads allowed.

    Built from the coincidence matrix as in Krippendorff (2011), "Computing Krippendorff's
    Alpha-Reliability" (Annenberg School for Communication, University of Pennsylvania), section C: a unit
    (item) with ``m_u ≥ 2`` values contributes each ordered pair of values from two different readers with
    weight ``1 / (m_u − 1)`` to ``o_ck``; with ``n_c = Σ_k o_ck`` and ``n = Σ_c n_c``,
    ``α = 1 − (n − 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck``. Items with fewer than two values are not pairable
    and are ignored.

    Parameters
    ----------
    data
        Readers × items; ``None`` or NaN marks an item a reader did not rate.
    level
        The metric ``δ²``: ``"nominal"`` (categories, any hashable), ``"ordinal"`` (ranks of the numbers
        present), ``"interval"`` (squared difference) or ``"ratio"`` (``((c − k) / (c + k))²``, values ≥ 0).

    Returns
    -------
    float
        Alpha (at most 1); ``1.0`` when every pairable value is the same (no variation: see the module
        docstring).

    Raises
    ------
    ValueError
        An unknown level, readers with different item counts, non-numeric values for a numeric level,
        negative values at the ratio level, or no item rated by two readers.
    """
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ValueError(f"krippendorff_alpha: level {level!r}; use nominal, ordinal, interval or ratio")
    rows = [list(row) for row in data]
    if not rows:
        raise ValueError("krippendorff_alpha: no readers")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(
            f"krippendorff_alpha: readers rated {sorted(lengths)} items; give every reader the same items "
            "(None or NaN where a reader did not rate one)"
        )
    units: list[list[Any]] = []
    for u in range(lengths.pop()):
        present = [row[u] for row in rows if not is_missing(row[u])]
        if len(present) >= 2:
            units.append(present)
    if not units:
        raise ValueError("krippendorff_alpha: no item was rated by two readers; alpha needs pairable values")
    if level != "nominal":
        for unit in units:
            for value in unit:
                if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                    raise ValueError(f"krippendorff_alpha: {level} data must be numbers, got {value!r}")
                if level == "ratio" and value < 0:
                    raise ValueError(f"krippendorff_alpha: ratio data must be ≥ 0, got {value!r}")
        values: list[Any] = sorted({float(v) for unit in units for v in unit})
        units = [[float(v) for v in unit] for unit in units]
    else:
        values = list(dict.fromkeys(v for unit in units for v in unit))
    index = {value: i for i, value in enumerate(values)}
    coincidences = np.zeros((len(values), len(values)))
    for unit in units:
        counts = np.bincount([index[v] for v in unit], minlength=len(values)).astype(np.float64)
        coincidences += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    marginals = coincidences.sum(axis=1)
    n = float(marginals.sum())
    delta2 = _delta2(values, marginals, level)
    expected = float((np.outer(marginals, marginals) * delta2).sum())
    if expected == 0.0:
        return 1.0
    observed = float((coincidences * delta2).sum())
    return 1.0 - (n - 1.0) * observed / expected


@dataclass(frozen=True, slots=True)
class BoxMatch:
    """One pair of matched boxes: index in ``a``, index in ``b`` and their IoU."""

    a: int
    b: int
    iou: float


def match_boxes(a: BoxesLike, b: BoxesLike, iou_threshold: float = 0.5) -> list[BoxMatch]:
    """Pair two readers' boxes one-to-one where IoU ≥ ``iou_threshold``, as many pairs as possible.

    The matching is optimal, not greedy: among all one-to-one matchings of pairs with IoU ≥ τ it has the
    most pairs and, among those, the highest total IoU. It is solved exactly as an assignment problem
    (Hungarian method, Kuhn 1955) with weight ``M + IoU`` for an admissible pair (``M`` = one more than
    the largest possible number of pairs, so one more pair always outweighs any gain in IoU) and 0
    otherwise. Greedy matching by descending IoU can leave a pair unmatched that another choice would
    have matched (reader a's box takes b's best box, whose other candidate then has nothing left), which
    lowers F1 by accident of geometry; an image holds a few dozen boxes at most, so the ``O(n³)`` exact
    assignment costs nothing.

    Parameters
    ----------
    a, b
        ``[x0, y0, x1, y1]`` boxes in pixel-edge coordinates.
    iou_threshold
        τ in ``(0, 1]``.

    Returns
    -------
    list of BoxMatch
        The pairs, in the order of ``a``.

    Raises
    ------
    ValueError
        An invalid box (see :func:`radstack.labeling._geometry.as_boxes`) or threshold.
    """
    check_iou_threshold(iou_threshold)
    boxes_a = as_boxes(a, "match_boxes a")
    boxes_b = as_boxes(b, "match_boxes b")
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return []
    iou = box_iou(boxes_a, boxes_b)
    admissible = iou >= iou_threshold
    if not admissible.any():
        return []
    big = min(len(boxes_a), len(boxes_b)) + 1.0
    cost = np.where(admissible, -(big + iou), 0.0)
    return [BoxMatch(i, j, float(iou[i, j])) for i, j in min_cost_assignment(cost) if admissible[i, j]]


@dataclass(frozen=True, slots=True)
class BoxAgreement:
    """Agreement of two box sets after :func:`match_boxes`."""

    f1: float
    #: Mean IoU of the matched pairs; None when nothing matched.
    mean_iou: float | None
    matches: int
    boxes_a: int
    boxes_b: int


def box_agreement(a: BoxesLike, b: BoxesLike, iou_threshold: float = 0.5) -> BoxAgreement:
    """F1 and mean IoU of two readers' boxes on one image (or one label on one image).

    ``F1 = 2 · matches / (|a| + |b|)``: the harmonic mean of precision and recall taking either reader as
    the reference (so it is symmetric), ``1.0`` when neither reader drew a box (they agree there is
    nothing). Mean IoU is over the pairs :func:`match_boxes` found.

    Raises
    ------
    ValueError
        An invalid box or threshold.
    """
    boxes_a = as_boxes(a, "box_agreement a")
    boxes_b = as_boxes(b, "box_agreement b")
    matches = match_boxes(boxes_a, boxes_b, iou_threshold)
    total = len(boxes_a) + len(boxes_b)
    f1 = 1.0 if total == 0 else 2.0 * len(matches) / total
    mean_iou = float(np.mean([m.iou for m in matches])) if matches else None
    return BoxAgreement(f1, mean_iou, len(matches), len(boxes_a), len(boxes_b))


def dice(mask_a: Any, mask_b: Any) -> float:
    """Dice coefficient ``2 |A ∩ B| / (|A| + |B|)`` of two binary masks (Dice 1945; Sørensen 1948).

    Returns ``1.0`` when both masks are empty (both readers say there is nothing).

    Raises
    ------
    ValueError
        Masks of different shapes or non-binary values.
    """
    both = as_masks([mask_a, mask_b], "dice")
    total = int(both[0].sum()) + int(both[1].sum())
    if total == 0:
        return 1.0
    return 2.0 * int((both[0] & both[1]).sum()) / total


@dataclass(frozen=True, slots=True)
class Proportion:
    """``successes / n`` with its Wilson 95% interval; value and interval are None when ``n == 0``."""

    successes: int
    n: int
    value: float | None
    ci95: tuple[float, float] | None

    @classmethod
    def of(cls, successes: int, n: int) -> Proportion:
        """The proportion and its interval (undefined, None, for ``n == 0``)."""
        if n == 0:
            return cls(successes, 0, None, None)
        return cls(successes, n, successes / n, wilson_interval(successes, n))


@dataclass(frozen=True, slots=True)
class ReaderSensitivity:
    """One reader's boxes against the gold boxes."""

    #: Gold boxes the reader found (one-to-one, IoU ≥ τ) out of all gold boxes.
    sensitivity: Proportion
    #: The reader's boxes that match no gold box.
    false_positives: int
    images: int

    @property
    def false_positives_per_image(self) -> float:
        """False-positive boxes per gold image (0 for no images)."""
        return self.false_positives / self.images if self.images else 0.0


def _gold_keys(reader: Mapping[K, object], gold: Mapping[K, object], what: str) -> list[K]:
    """The gold set's images, all of which the reader must have read.

    Raises
    ------
    ValueError
        No gold images, or gold images the reader has no entry for.
    """
    if not gold:
        raise ValueError(f"{what}: the gold set has no images")
    missing = [key for key in gold if key not in reader]
    if missing:
        raise ValueError(
            f"{what}: the reader has no entry for gold image(s) {missing[:5]!r}"
            f"{' …' if len(missing) > 5 else ''}; an image read with no finding is an empty entry"
        )
    return list(gold)


def reader_sensitivity(
    reader_boxes_by_image: Mapping[K, BoxesLike],
    gold_boxes_by_image: Mapping[K, BoxesLike],
    iou_threshold: float = 0.5,
) -> ReaderSensitivity:
    """Box sensitivity of one reader against a gold set, with its Wilson 95% interval.

    On each gold image the reader's boxes are matched one-to-one to the gold boxes (:func:`match_boxes`,
    IoU ≥ τ); sensitivity is matched gold boxes over all gold boxes, and every unmatched reader box is a
    false positive. Images are the gold set's keys; the reader's images outside it are not scored.

    Raises
    ------
    ValueError
        No gold images, a gold image the reader has no entry for (an image read with no finding must be
        given as an empty list, not left out), or an invalid box or threshold.
    """
    check_iou_threshold(iou_threshold)
    keys = _gold_keys(reader_boxes_by_image, gold_boxes_by_image, "reader_sensitivity")
    found = gold_total = false_positives = 0
    for key in keys:
        gold = as_boxes(gold_boxes_by_image[key], f"reader_sensitivity gold image {key!r}")
        boxes = as_boxes(reader_boxes_by_image[key], f"reader_sensitivity reader image {key!r}")
        matched = len(match_boxes(boxes, gold, iou_threshold))
        found += matched
        gold_total += len(gold)
        false_positives += len(boxes) - matched
    return ReaderSensitivity(Proportion.of(found, gold_total), false_positives, len(keys))


@dataclass(frozen=True, slots=True)
class ClassSensitivity:
    """One reader's image-level class against the gold class, for one positive category."""

    sensitivity: Proportion
    specificity: Proportion


def reader_class_sensitivity(
    reader: Mapping[K, Hashable], gold: Mapping[K, Hashable], positive: Hashable
) -> ClassSensitivity:
    """Sensitivity and specificity of one reader's image-level classes against a gold set.

    An image is positive when its category equals ``positive`` and negative otherwise (so a multi-class
    label is scored one category at a time). Sensitivity = TP / gold positives, specificity = TN / gold
    negatives, each with a Wilson 95% interval; undefined (None) when the gold set has no positives or
    no negatives. Images are the gold set's keys.

    Raises
    ------
    ValueError
        No gold images, a gold image the reader did not rate, or a missing (None/NaN) class.
    """
    keys = _gold_keys(reader, gold, "reader_class_sensitivity")
    tp = fn = tn = fp = 0
    for key in keys:
        truth, call = gold[key], reader[key]
        for name, value in (("gold", truth), ("reader", call)):
            if is_missing(value):
                raise ValueError(f"reader_class_sensitivity: the {name} class of image {key!r} is missing")
        if truth == positive:
            tp += call == positive
            fn += call != positive
        else:
            tn += call != positive
            fp += call == positive
    return ClassSensitivity(Proportion.of(tp, tp + fn), Proportion.of(tn, tn + fp))
