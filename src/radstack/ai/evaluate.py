"""Evaluation of a fracture detector: the one place metrics come from (numpy only).

Image level
    AUROC (Mann-Whitney, ties count half) with a stratified percentile bootstrap 95% CI; sensitivity and
    specificity (Wilson 95% CIs) at two operating points chosen on the *validation* split and then applied
    unchanged to the test split; calibration (reliability bins, expected calibration error, Brier score).

Box level
    A predicted box is a true positive when it matches a ground-truth box with IoU ≥ 0.3 that no
    higher-scoring box of the same image matched (greedy in score order, the usual FROC rule). A second box
    on the same fracture counts as a false positive. **Box recall** is the share of ground-truth boxes
    matched by a box scoring at least the operating point's threshold; **FROC** plots box sensitivity
    against false-positive boxes per image (over all images), read at 0.5, 1 and 2 FP/image.

Operating points (:func:`choose_operating_points`), the rule
    A case is called positive when its score is ≥ the threshold.

    - *suspicious*: the highest threshold whose validation sensitivity is ≥ ``sensitivity_target``
      (default 0.95), i.e. the best specificity that still finds 95% of fractures;
    - *definite*: the lowest threshold whose validation specificity is ≥ ``specificity_target``
      (default 0.95), i.e. the best sensitivity with at most 5% of normal images flagged.

Every result is a frozen dataclass with ``to_dict()`` giving JSON-serialisable data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from radstack.ai.samples import Prediction
from radstack.measures import box_iou, wilson_interval

__all__ = [
    "FROC_RATES",
    "IOU_THRESHOLD",
    "Calibration",
    "Evaluation",
    "Froc",
    "OperatingPoints",
    "Truth",
    "auroc",
    "bootstrap_auroc_ci",
    "calibration",
    "choose_operating_points",
    "evaluate",
    "fit_platt",
    "froc",
    "roc_curve",
]

#: A detection hits a fracture at IoU ≥ this.
IOU_THRESHOLD = 0.3
#: False positives per image at which FROC sensitivity is reported.
FROC_RATES = (0.5, 1.0, 2.0)


class Truth(Protocol):
    """The ground truth of one image (a :class:`~radstack.ai.samples.Sample` is one)."""

    @property
    def label(self) -> bool: ...
    @property
    def boxes(self) -> NDArray[np.float32]: ...
    @property
    def fracture_type(self) -> str | None: ...


def _labels_scores(labels: Any, scores: Any) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def _require_both_classes(y: NDArray[np.bool_], what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"{what} needs both fracture and normal images; got {n_pos} fracture and {y.size - n_pos} normal"
        )


def _auroc_sorted(y: NDArray[np.bool_], s: NDArray[np.float64]) -> float:
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    ranks_by_group = first + (counts + 1) / 2.0
    ranks = np.repeat(ranks_by_group, counts)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    rank_sum = float(ranks[y[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve: the probability a random fracture image scores above a random normal one.

    Raises
    ------
    ValueError
        If only one class is present, or lengths differ.
    """
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y, "AUROC")
    return _auroc_sorted(y, s)


def bootstrap_auroc_ci(
    labels: Any, scores: Any, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC, resampling fracture and normal images separately.

    Stratifying keeps every resample's class balance equal to the data's, so no resample is degenerate.
    Same ``seed``, same interval.
    """
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y, "AUROC")
    rng = np.random.default_rng(seed)
    pos, neg = s[y], s[~y]
    y_boot = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        boot = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        values[i] = _auroc_sorted(y_boot, boot)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def roc_curve(
    labels: Any, scores: Any
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(fpr, tpr, thresholds)`` at each distinct score, from (0, 0) to (1, 1); thresholds descend
    (the first is ``+inf``)."""
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y, "a ROC curve")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last_of_group]
    fp = (last_of_group + 1) - tp
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s_sorted[last_of_group]]


def _wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (``(nan, nan)`` for ``n == 0``)."""
    return (math.nan, math.nan) if n == 0 else wilson_interval(successes, n)


@dataclass(frozen=True, slots=True)
class OperatingPoints:
    """Thresholds chosen on validation (see the module docstring for the rule)."""

    suspicious: float
    definite: float
    sensitivity_target: float = 0.95
    specificity_target: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return {
            "suspicious": self.suspicious,
            "definite": self.definite,
            "sensitivity_target": self.sensitivity_target,
            "specificity_target": self.specificity_target,
        }

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> OperatingPoints:
        return cls(**data)


def choose_operating_points(
    labels: Any, scores: Any, *, sensitivity_target: float = 0.95, specificity_target: float = 0.95
) -> OperatingPoints:
    """The *suspicious* and *definite* thresholds on validation scores.

    *suspicious* is the highest threshold with sensitivity ≥ ``sensitivity_target``: the
    ``ceil(target · n_fracture)``-th highest fracture score. *definite* is the lowest threshold with
    specificity ≥ ``specificity_target``: just above the ``(floor((1 - target) · n_normal) + 1)``-th highest
    normal score (so at most that many minus one normal images score at or above it).

    Raises
    ------
    ValueError
        If only one class is present or a target is outside (0, 1].
    """
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y, "choosing operating points")
    for name, target in (("sensitivity", sensitivity_target), ("specificity", specificity_target)):
        if not 0.0 < target <= 1.0:
            raise ValueError(f"{name} target {target} must be in (0, 1]")
    pos = np.sort(s[y])[::-1]
    neg = np.sort(s[~y])[::-1]
    k = max(1, math.ceil(sensitivity_target * pos.size - 1e-9))
    suspicious = float(pos[k - 1])
    allowed = math.floor((1.0 - specificity_target) * neg.size + 1e-9)
    definite = float(np.nextafter(neg[allowed], np.inf)) if allowed < neg.size else float(s.min())
    return OperatingPoints(suspicious, definite, sensitivity_target, specificity_target)


def _match(prediction: Prediction, truth: Truth, iou_threshold: float) -> NDArray[np.bool_]:
    """Per predicted box, whether it is a true positive (greedy in descending score order)."""
    boxes = np.asarray(prediction.boxes).reshape(-1, 4)
    hit = np.zeros(len(boxes), bool)
    gt = np.asarray(truth.boxes).reshape(-1, 4)
    if not len(boxes) or not len(gt):
        return hit
    iou = box_iou(boxes, gt)
    free = np.ones(len(gt), bool)
    for i in np.argsort(-np.asarray(prediction.scores), kind="mergesort"):
        candidates = np.where(free & (iou[i] >= iou_threshold), iou[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= 0:
            free[j] = False
            hit[i] = True
    return hit


def _box_table(
    predictions: Sequence[Prediction], truths: Sequence[Truth], iou_threshold: float
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.intp], int]:
    """All predicted boxes' scores, their TP flags and image indices, and the number of truth boxes."""
    scores, hits, images = [], [], []
    n_truth = 0
    for index, (prediction, truth) in enumerate(zip(predictions, truths, strict=True)):
        scores.append(np.asarray(prediction.scores, np.float64).ravel())
        hits.append(_match(prediction, truth, iou_threshold))
        images.append(np.full(len(prediction.scores), index, np.intp))
        n_truth += len(np.asarray(truth.boxes).reshape(-1, 4))
    return (
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(hits) if hits else np.zeros(0, bool),
        np.concatenate(images) if images else np.zeros(0, np.intp),
        n_truth,
    )


@dataclass(frozen=True, slots=True)
class Froc:
    """Box sensitivity against false-positive boxes per image, as the threshold falls."""

    fp_per_image: tuple[float, ...]
    sensitivity: tuple[float, ...]
    thresholds: tuple[float, ...]
    at: dict[str, float]  # sensitivity at each of FROC_RATES, keyed "0.5", "1", "2"
    n_boxes: int
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp_per_image": list(self.fp_per_image),
            "sensitivity": list(self.sensitivity),
            "thresholds": list(self.thresholds),
            "at": dict(self.at),
            "n_boxes": self.n_boxes,
            "n_images": self.n_images,
        }


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def froc(
    predictions: Sequence[Prediction],
    truths: Sequence[Truth],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    rates: Sequence[float] = FROC_RATES,
) -> Froc:
    """The FROC curve over all images and its sensitivity at ``rates`` false positives per image.

    The sensitivity at a rate is the highest reached while false positives per image stay ≤ that rate.

    Raises
    ------
    ValueError
        If there are no images or no ground-truth boxes, or the lengths differ.
    """
    if len(predictions) != len(truths) or not truths:
        raise ValueError(f"FROC needs one prediction per image: {len(predictions)} for {len(truths)} images")
    scores, hits, _, n_truth = _box_table(predictions, truths, iou_threshold)
    if n_truth == 0:
        raise ValueError("FROC needs ground-truth boxes; the data set has none")
    order = np.argsort(-scores, kind="mergesort")
    scores, hits = scores[order], hits[order]
    # One point per distinct threshold: at the last box of each group of equal scores.
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1] if scores.size else np.zeros(0, np.intp)
    tp = np.cumsum(hits)[last]
    fp = (last + 1) - tp
    fppi = np.r_[0.0, fp / len(truths)]
    sens = np.r_[0.0, tp / n_truth]
    at = {}
    for rate in rates:
        within = fppi <= rate + 1e-12
        at[_rate_key(rate)] = float(sens[within].max())
    return Froc(
        fp_per_image=tuple(float(v) for v in fppi),
        sensitivity=tuple(float(v) for v in sens),
        thresholds=(math.inf, *(float(v) for v in scores[last])),
        at=at,
        n_boxes=n_truth,
        n_images=len(truths),
    )


@dataclass(frozen=True, slots=True)
class Calibration:
    """Reliability diagram data and summary scores of the image-level probability."""

    bin_edges: tuple[float, ...]
    counts: tuple[int, ...]
    mean_predicted: tuple[float | None, ...]  # None for an empty bin
    observed: tuple[float | None, ...]
    ece: float  # expected calibration error: Σ n_b/N · |observed_b − predicted_b|
    brier: float  # mean squared error of the probability

    def to_dict(self) -> dict[str, Any]:
        return {
            "bin_edges": list(self.bin_edges),
            "counts": list(self.counts),
            "mean_predicted": list(self.mean_predicted),
            "observed": list(self.observed),
            "ece": self.ece,
            "brier": self.brier,
        }


def calibration(labels: Any, probabilities: Any, *, bins: int = 10) -> Calibration:
    """Reliability over ``bins`` equal-width probability bins (the last one includes 1.0), ECE and Brier.

    Raises
    ------
    ValueError
        If a probability is outside [0, 1] or there are no images.
    """
    y, p = _labels_scores(labels, probabilities)
    if y.size == 0:
        raise ValueError("calibration needs at least one image")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y.astype(np.float64), minlength=bins)
    mean_p = [float(sum_p[b] / counts[b]) if counts[b] else None for b in range(bins)]
    observed = [float(sum_y[b] / counts[b]) if counts[b] else None for b in range(bins)]
    ece = float(np.sum(np.abs(sum_y - sum_p)) / y.size)
    brier = float(np.mean((p - y) ** 2))
    return Calibration(
        bin_edges=tuple(float(e) for e in edges),
        counts=tuple(int(c) for c in counts),
        mean_predicted=tuple(mean_p),
        observed=tuple(observed),
        ece=ece,
        brier=brier,
    )


def fit_platt(labels: Any, scores: Any, *, ridge: float = 1.0, iterations: int = 50) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` so that ``sigmoid(a · logit(score) + b)`` is a calibrated probability.

    Logistic regression on the scores' logits by Newton's method, with Platt's smoothed targets
    (``(n₊ + 1) / (n₊ + 2)`` and ``1 / (n₋ + 2)``) and a small ridge towards the identity ``(1, 0)``, so a
    separable validation set does not drive ``a`` to infinity. Fit it on validation, never on the set
    being evaluated.

    Raises
    ------
    ValueError
        If only one class is present, or the scores rank normal images above fractures (``a ≤ 0``): such
        a model should not be calibrated into looking useful.
    """
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y, "calibration fitting")
    clipped = np.clip(s, 1e-6, 1 - 1e-6)
    z = np.log(clipped) - np.log1p(-clipped)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    target = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    features = np.stack([z, np.ones_like(z)], 1)
    identity = np.array([1.0, 0.0])
    params = identity.copy()
    for _ in range(iterations):
        p = 0.5 * (1 + np.tanh(0.5 * (features @ params)))  # the sigmoid, without overflow
        # A ridge of one pseudo-observation towards the identity: negligible for a real validation set,
        # it keeps (a, b) finite when the scores separate the classes by a hair (an untrained model).
        gradient = features.T @ (p - target) + ridge * (params - identity)
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        params -= step
        if np.abs(step).max() < 1e-10:
            break
    a, b = float(params[0]), float(params[1])
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        raise ValueError(f"scores do not rank fractures above normal images (Platt slope {a:.3g})")
    return a, b


def _operating_point_metrics(
    y: NDArray[np.bool_],
    p: NDArray[np.float64],
    threshold: float,
    box_scores: NDArray[np.float64],
    box_hits: NDArray[np.bool_],
    n_boxes: int,
) -> dict[str, Any]:
    called = p >= threshold
    tp, n_pos = int((called & y).sum()), int(y.sum())
    tn, n_neg = int((~called & ~y).sum()), int((~y).sum())
    recall_hits = int((box_hits & (box_scores >= threshold)).sum())
    return {
        "threshold": threshold,
        "sensitivity": tp / n_pos if n_pos else math.nan,
        "sensitivity_ci": list(_wilson(tp, n_pos)),
        "specificity": tn / n_neg if n_neg else math.nan,
        "specificity_ci": list(_wilson(tn, n_neg)),
        "box_recall": recall_hits / n_boxes if n_boxes else math.nan,
    }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """All metrics of one model on one data set. ``to_dict()`` is what the registry stores."""

    n_images: int
    n_fracture: int
    n_normal: int
    auroc: float
    auroc_ci: tuple[float, float]
    roc: dict[str, list[float]]  # fpr, tpr, thresholds (the +inf threshold written as None)
    operating_points: dict[str, dict[str, Any]]  # "suspicious", "definite"
    froc: Froc
    calibration: Calibration
    per_type: dict[str, dict[str, Any]]
    iou_threshold: float

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _json_clean(
            {
                "n_images": self.n_images,
                "n_fracture": self.n_fracture,
                "n_normal": self.n_normal,
                "auroc": self.auroc,
                "auroc_ci": list(self.auroc_ci),
                "roc": self.roc,
                "operating_points": self.operating_points,
                "box_recall_iou": self.iou_threshold,
                "froc": self.froc.to_dict(),
                "calibration": self.calibration.to_dict(),
                "per_type": self.per_type,
            }
        )
        return data


def _json_clean(value: Any) -> Any:
    """Non-finite floats become ``None`` (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    return value


def evaluate(
    predictions: Sequence[Prediction],
    truths: Sequence[Truth],
    operating_points: OperatingPoints,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Every metric of the module docstring for one data set.

    Parameters
    ----------
    predictions
        One per image, boxes in the image's pixels.
    truths
        The matching ground truth (e.g. the :class:`~radstack.ai.samples.Sample` objects themselves).
    operating_points
        Thresholds chosen on validation with :func:`choose_operating_points` (never on this data set).
    iou_threshold
        A detection hits a fracture at IoU ≥ this.
    n_bootstrap, seed
        Bootstrap resamples for the AUROC CI, and their seed.

    Raises
    ------
    ValueError
        If the data set has one class only, no fracture boxes, or the lengths differ.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} images")
    y, p = _labels_scores([t.label for t in truths], [pr.probability for pr in predictions])
    _require_both_classes(y, "evaluation")
    box_scores, box_hits, box_images, n_boxes = _box_table(predictions, truths, iou_threshold)
    fpr, tpr, thresholds = roc_curve(y, p)
    points = {
        name: _operating_point_metrics(y, p, threshold, box_scores, box_hits, n_boxes)
        for name, threshold in (
            ("suspicious", operating_points.suspicious),
            ("definite", operating_points.definite),
        )
    }
    per_type: dict[str, dict[str, Any]] = {}
    types = sorted({t.fracture_type or "unspecified" for t in truths if t.label})
    negatives = ~y
    for kind in types:
        members = np.array([bool(t.label and (t.fracture_type or "unspecified") == kind) for t in truths])
        selected = members | negatives
        in_type = members[box_images] if box_images.size else np.zeros(0, bool)
        n_type_boxes = sum(
            len(np.asarray(truths[int(i)].boxes).reshape(-1, 4)) for i in np.flatnonzero(members)
        )
        entry: dict[str, Any] = {
            "n": int(members.sum()),
            "auroc": _auroc_sorted(y[selected], p[selected]) if negatives.any() else math.nan,
        }
        for name, threshold in (
            ("suspicious", operating_points.suspicious),
            ("definite", operating_points.definite),
        ):
            metrics = _operating_point_metrics(
                y[members], p[members], threshold, box_scores[in_type], box_hits[in_type], n_type_boxes
            )
            entry[name] = {
                "sensitivity": metrics["sensitivity"],
                "sensitivity_ci": metrics["sensitivity_ci"],
                "box_recall": metrics["box_recall"],
            }
        per_type[kind] = entry
    return Evaluation(
        n_images=int(y.size),
        n_fracture=int(y.sum()),
        n_normal=int((~y).sum()),
        auroc=_auroc_sorted(y, p),
        auroc_ci=bootstrap_auroc_ci(y, p, n_resamples=n_bootstrap, seed=seed),
        roc={"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()},
        operating_points=points,
        froc=froc(predictions, truths, iou_threshold=iou_threshold)
        if n_boxes
        else Froc((0.0,), (0.0,), (math.inf,), {_rate_key(r): math.nan for r in FROC_RATES}, 0, len(truths)),
        calibration=calibration(y, p),
        per_type=per_type,
        iou_threshold=iou_threshold,
    )
