"""Consensus of several readers' labels on one image, by rule (numpy only, no I/O).

Image-level classes
    :func:`majority_class`: the most frequent category; a tie or too few votes leaves it undecided
    (``category`` None), which opens an adjudication task.
Boxes (one label at a time: the caller groups boxes by label first)
    :func:`weighted_box_fusion` (Solovyev et al. 2021) fuses every cluster and scores it by the share of
    readers behind it; :func:`quorum_boxes` keeps the clusters that at least ``quorum`` readers drew and
    returns the rest as disagreements.
Masks
    :func:`majority_mask` (strict pixel-wise majority) and :func:`staple` (Warfield, Zou and Wells 2004),
    which weighs each reader by their estimated sensitivity and specificity.

Boxes are ``[x0, y0, x1, y1]`` in pixel-edge coordinates; two boxes belong together when their IoU is
≥ the threshold (the same rule as :func:`radstack.labeling.agreement.match_boxes`). Every function checks
its input and raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from radstack.labeling._geometry import (
    Box,
    BoxesLike,
    as_boxes,
    as_masks,
    check_iou_threshold,
    is_missing,
)
from radstack.labeling.agreement import match_boxes
from radstack.measures import box_iou

__all__ = [
    "FusedBox",
    "MajorityVote",
    "QuorumResult",
    "StapleResult",
    "VoteOutcome",
    "majority_class",
    "majority_mask",
    "quorum_boxes",
    "staple",
    "weighted_box_fusion",
]


class VoteOutcome(StrEnum):
    """How a vote on an image-level class ended."""

    MAJORITY = "majority"
    #: Two or more categories share the highest count.
    TIE = "tie"
    #: Fewer votes than ``min_votes``.
    TOO_FEW_VOTES = "too_few_votes"


@dataclass(frozen=True, slots=True)
class MajorityVote:
    """The outcome of :func:`majority_class`."""

    #: The winning category; None when the vote is tied or too small (it needs adjudication).
    category: Hashable | None
    outcome: VoteOutcome
    #: Share of the votes cast for the most frequent category; None when no vote was cast.
    share: float | None
    #: Votes cast (missing reads not counted).
    votes: int
    #: ``(category, votes)``, most votes first (ties in order of first vote).
    counts: tuple[tuple[Hashable, int], ...]

    @property
    def needs_adjudication(self) -> bool:
        """Whether no category won (a tie or too few votes)."""
        return self.outcome is not VoteOutcome.MAJORITY


def majority_class(votes: Sequence[Hashable], *, min_votes: int | None = None) -> MajorityVote:
    """The category most readers gave an image; a tie for first place decides nothing.

    This is a plurality: with four readers voting 2-1-1 the 2 wins with ``share`` 0.5. A caller that wants
    more (a strict majority, a share of at least 2/3) compares ``share`` itself.

    Parameters
    ----------
    votes
        One category per reader. ``None`` or NaN (a reader who has not read the image) is not a vote.
    min_votes
        Fewer votes than this leave the category undecided (default 1: any vote decides).

    Returns
    -------
    MajorityVote
        The category (None on a tie or too few votes), the outcome, the agreement share and the counts.

    Raises
    ------
    ValueError
        ``min_votes`` below 1, or a single string given instead of a sequence of votes.
    """
    if isinstance(votes, str | bytes):
        raise ValueError(f"majority_class: votes {votes!r} is one string; pass one category per reader")
    needed = 1 if min_votes is None else min_votes
    if needed < 1:
        raise ValueError(f"majority_class: min_votes {min_votes} must be at least 1")
    cast = [vote for vote in votes if not is_missing(vote)]
    counts = tuple(Counter(cast).most_common())  # insertion order breaks ties: first vote first
    share = counts[0][1] / len(cast) if cast else None
    if len(cast) < needed:
        return MajorityVote(None, VoteOutcome.TOO_FEW_VOTES, share, len(cast), counts)
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return MajorityVote(None, VoteOutcome.TIE, share, len(cast), counts)
    return MajorityVote(counts[0][0], VoteOutcome.MAJORITY, share, len(cast), counts)


@dataclass(frozen=True, slots=True)
class FusedBox:
    """A consensus box and the readers' boxes behind it."""

    box: Box
    #: WBF: mean score × readers / all readers; quorum: readers / all readers.
    score: float
    #: Distinct readers whose boxes are in the cluster.
    readers: int
    #: ``(reader index, box index)`` of every box in the cluster.
    members: tuple[tuple[int, int], ...]


def _readers_boxes(boxes_per_reader: Sequence[BoxesLike], what: str) -> list[NDArray[np.float64]]:
    """Every reader's boxes, validated.

    Raises
    ------
    ValueError
        No readers, or an invalid box.
    """
    if len(boxes_per_reader) == 0:
        raise ValueError(f"{what}: no readers")
    return [as_boxes(boxes, f"{what} reader {r}") for r, boxes in enumerate(boxes_per_reader)]


def _as_box(row: NDArray[np.float64]) -> Box:
    x0, y0, x1, y1 = (float(c) for c in row)
    return (x0, y0, x1, y1)


def weighted_box_fusion(
    boxes_per_reader: Sequence[BoxesLike],
    scores_per_reader: Sequence[Sequence[float]] | None = None,
    iou_threshold: float = 0.55,
    skip_threshold: float = 0.0,
) -> list[FusedBox]:
    """Weighted box fusion of several readers' boxes for one label on one image.

    Solovyev, Wang and Gabruseva (2021), "Weighted boxes fusion: Ensembling boxes from different object
    detection models", Image and Vision Computing 107:104117, section 3: boxes with score ≥
    ``skip_threshold`` are taken in descending score order; each joins the cluster whose current fused
    box it overlaps most, if that IoU is ≥ ``iou_threshold`` (the paper writes ``>``; here, as everywhere
    in this package, ``≥``), or starts a new cluster. A cluster's fused box is the score-weighted mean of
    its boxes' coordinates (their plain mean when every score is 0) and its confidence the mean score,
    finally scaled by ``R / N``: ``R`` readers in the cluster of ``N`` readers. The paper scales by the
    number of boxes ``T``, which equals ``R`` when each reader draws one box per object; counting readers
    keeps a reader who drew the same finding twice from counting as two votes. For human readers (scores
    1.0, the default) the fused box is the mean box and the score is the share of readers who drew it.

    Parameters
    ----------
    boxes_per_reader
        Per reader, ``[x0, y0, x1, y1]`` boxes.
    scores_per_reader
        Per reader, a score in ``[0, 1]`` for each box (a model's probability); None: 1.0 for every box.
    iou_threshold
        Cluster threshold in ``(0, 1]`` (the paper's default 0.55).
    skip_threshold
        Boxes scoring below this are left out.

    Returns
    -------
    list of FusedBox
        Highest score first.

    Raises
    ------
    ValueError
        No readers, an invalid box or threshold, or scores that do not pair with the boxes or lie
        outside ``[0, 1]``.
    """
    check_iou_threshold(iou_threshold)
    readers = _readers_boxes(boxes_per_reader, "weighted_box_fusion")
    if scores_per_reader is None:
        scores = [np.ones(len(boxes)) for boxes in readers]
    else:
        if len(scores_per_reader) != len(readers):
            raise ValueError(
                f"weighted_box_fusion: {len(scores_per_reader)} score lists for {len(readers)} readers"
            )
        scores = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_per_reader]
        for r, (boxes, s) in enumerate(zip(readers, scores, strict=True)):
            if len(s) != len(boxes):
                raise ValueError(
                    f"weighted_box_fusion: reader {r} has {len(boxes)} boxes but {len(s)} scores"
                )
            if not (np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()):
                raise ValueError(f"weighted_box_fusion: reader {r} scores {s.tolist()} must lie in [0, 1]")
    entries = [
        (float(scores[r][i]), r, i)
        for r, boxes in enumerate(readers)
        for i in range(len(boxes))
        if scores[r][i] >= skip_threshold
    ]
    entries.sort(key=lambda entry: -entry[0])  # stable: equal scores keep reader, then box order
    members: list[list[tuple[float, int, int]]] = []
    fused = np.zeros((0, 4))
    for score, r, i in entries:
        box = readers[r][i]
        best = -1
        if len(members):
            iou = box_iou(box[None, :], fused)[0]
            best = int(np.argmax(iou))
            if iou[best] < iou_threshold:
                best = -1
        if best < 0:
            members.append([(score, r, i)])
            fused = np.vstack([fused, box])
            continue
        members[best].append((score, r, i))
        weights = np.array([s for s, _, _ in members[best]])
        coordinates = np.array([readers[rr][ii] for _, rr, ii in members[best]])
        if weights.sum() > 0:
            fused[best] = weights @ coordinates / weights.sum()
        else:
            fused[best] = coordinates.mean(axis=0)
    result = []
    for cluster, box in zip(members, fused, strict=True):
        distinct = len({r for _, r, _ in cluster})
        mean_score = sum(s for s, _, _ in cluster) / len(cluster)
        result.append(
            FusedBox(
                _as_box(box),
                mean_score * distinct / len(readers),
                distinct,
                tuple(sorted((r, i) for _, r, i in cluster)),
            )
        )
    result.sort(key=lambda fused_box: -fused_box.score)
    return result


@dataclass(frozen=True, slots=True)
class QuorumResult:
    """The outcome of :func:`quorum_boxes`."""

    #: Clusters drawn by at least ``quorum`` readers: the consensus.
    accepted: tuple[FusedBox, ...]
    #: Clusters below the quorum: each is a disagreement to adjudicate.
    disagreements: tuple[FusedBox, ...]


def quorum_boxes(
    boxes_per_reader: Sequence[BoxesLike], iou_threshold: float = 0.5, quorum: int = 2
) -> QuorumResult:
    """Boxes that at least ``quorum`` readers drew, fused by the mean; the rest as disagreements.

    Readers are taken in the order given (pass them in a stable order, e.g. by reader id). The first
    reader's boxes each start a cluster; each later reader's boxes are matched one-to-one to the clusters'
    current mean boxes at IoU ≥ ``iou_threshold`` (the optimal matching of
    :func:`radstack.labeling.agreement.match_boxes`), so a reader is in a cluster at most once; a box
    that matches no cluster starts a new one. A cluster's box is the mean of its members and its score
    the share of readers in it.

    Parameters
    ----------
    boxes_per_reader
        Per reader, ``[x0, y0, x1, y1]`` boxes for one label on one image.
    iou_threshold
        In ``(0, 1]``.
    quorum
        Readers needed to accept a cluster, from 1 to the number of readers.

    Returns
    -------
    QuorumResult
        Accepted clusters and disagreements, each most-supported first.

    Raises
    ------
    ValueError
        No readers, an invalid box or threshold, or a quorum outside ``1 .. readers``.
    """
    check_iou_threshold(iou_threshold)
    readers = _readers_boxes(boxes_per_reader, "quorum_boxes")
    if not (1 <= quorum <= len(readers)):
        raise ValueError(f"quorum_boxes: quorum {quorum} must be between 1 and the {len(readers)} readers")
    clusters: list[list[tuple[int, int]]] = []
    means = np.zeros((0, 4))
    for r, boxes in enumerate(readers):
        matched = {m.a: m.b for m in match_boxes(boxes, means, iou_threshold)} if len(means) else {}
        for i in range(len(boxes)):
            if i in matched:
                clusters[matched[i]].append((r, i))
            else:
                clusters.append([(r, i)])
        means = np.array([np.mean([readers[rr][ii] for rr, ii in c], axis=0) for c in clusters]).reshape(
            -1, 4
        )
    fused = [
        FusedBox(_as_box(mean), len(cluster) / len(readers), len(cluster), tuple(cluster))
        for cluster, mean in zip(clusters, means, strict=True)
    ]
    fused.sort(key=lambda box: -box.readers)
    return QuorumResult(
        tuple(box for box in fused if box.readers >= quorum),
        tuple(box for box in fused if box.readers < quorum),
    )


def majority_mask(masks: Sequence[Any] | NDArray[Any]) -> NDArray[np.bool_]:
    """Pixel-wise strict majority of binary masks.

    A pixel is foreground when more than half of the readers marked it (``2 · votes > readers``); an even
    split (2 of 4) is background: the consensus claims only what a majority drew.

    Raises
    ------
    ValueError
        No masks, masks of different shapes, or non-binary values.
    """
    stack = as_masks(masks, "majority_mask")
    result: NDArray[np.bool_] = 2 * stack.sum(axis=0) > len(stack)
    return result


@dataclass(frozen=True, slots=True, eq=False)
class StapleResult:
    """The outcome of :func:`staple`."""

    #: Per pixel, the estimated probability that it is truly foreground (the masks' shape).
    truth: NDArray[np.float64]
    #: Per reader, estimated sensitivity ``p`` (NaN when nothing is foreground: undefined).
    sensitivity: NDArray[np.float64]
    #: Per reader, estimated specificity ``q`` (NaN when everything is foreground: undefined).
    specificity: NDArray[np.float64]
    #: The prior probability of foreground used (the readers' mean foreground fraction).
    prior: float
    iterations: int
    converged: bool

    @property
    def mask(self) -> NDArray[np.bool_]:
        """The consensus mask: ``truth > 0.5`` (an even 0.5 is background, as in :func:`majority_mask`)."""
        result: NDArray[np.bool_] = self.truth > 0.5
        return result


def staple(masks: Sequence[Any] | NDArray[Any], max_iter: int = 50, tol: float = 1e-6) -> StapleResult:
    """Binary STAPLE: the true mask and each reader's sensitivity and specificity, by EM.

    Warfield, Zou and Wells (2004), "Simultaneous truth and performance level estimation (STAPLE)",
    IEEE Trans. Med. Imaging 23(7):903-921, section II, binary case. With ``D_ij`` reader ``j``'s decision
    at pixel ``i``, prior ``γ = P(T_i = 1)``, sensitivity ``p_j`` and specificity ``q_j``:

    - E-step: ``a_i = γ Π_j p_j^{D_ij} (1 − p_j)^{1 − D_ij}``,
      ``b_i = (1 − γ) Π_j q_j^{1 − D_ij} (1 − q_j)^{D_ij}``, ``W_i = a_i / (a_i + b_i)``;
    - M-step: ``p_j = Σ_i W_i D_ij / Σ_i W_i``, ``q_j = Σ_i (1 − W_i)(1 − D_ij) / Σ_i (1 − W_i)``;

    until no ``p_j`` or ``q_j`` moves by ``tol`` or more, or ``max_iter`` rounds. ``γ`` is fixed at the
    readers' mean foreground fraction (a global prior, one of the paper's options); ``p`` and ``q`` start
    at 0.99 (every reader assumed good, which selects the solution where readers are mostly right rather
    than the label-swapped one). Products are summed in log space, with ``p``, ``q`` kept in
    ``[1e-12, 1 − 1e-12]``. Pixels with the same decisions from every reader share ``W``, so the EM runs
    on the distinct decision patterns (at most ``2^readers``) weighted by their pixel counts: the same
    result at the cost of one pass over the pixels.

    All masks empty: the truth is empty, specificity 1, sensitivity NaN (no foreground to find). All full:
    the mirror image.

    Raises
    ------
    ValueError
        No masks, masks of different shapes, non-binary values, ``max_iter < 1`` or ``tol ≤ 0``.
    """
    if max_iter < 1:
        raise ValueError(f"staple: max_iter {max_iter} must be at least 1")
    if not tol > 0:
        raise ValueError(f"staple: tol {tol} must be positive")
    stack = as_masks(masks, "staple")
    shape = stack.shape[1:]
    readers = len(stack)
    flat = stack.reshape(readers, -1)
    prior = float(flat.mean())
    if prior in (0.0, 1.0):
        full = prior == 1.0
        return StapleResult(
            np.full(shape, prior),
            np.full(readers, 1.0 if full else math.nan),
            np.full(readers, math.nan if full else 1.0),
            prior,
            0,
            True,
        )
    patterns, inverse, counts = _decision_patterns(flat)
    d = patterns.astype(np.float64)  # patterns × readers
    weights = counts.astype(np.float64)
    p = np.full(readers, 0.99)
    q = np.full(readers, 0.99)
    converged = False
    iterations = 0
    while iterations < max_iter and not converged:
        iterations += 1
        w = _posterior(d, prior, p, q)
        fg, bg = weights * w, weights * (1 - w)
        p_new = fg @ d / fg.sum() if fg.sum() > 0 else p
        q_new = bg @ (1 - d) / bg.sum() if bg.sum() > 0 else q
        converged = max(float(np.abs(p_new - p).max()), float(np.abs(q_new - q).max())) < tol
        p, q = p_new, q_new
    truth = _posterior(d, prior, p, q)[inverse].reshape(shape)
    return StapleResult(truth, p, q, prior, iterations, converged)


def _posterior(
    d: NDArray[np.float64], prior: float, p: NDArray[np.float64], q: NDArray[np.float64]
) -> NDArray[np.float64]:
    """STAPLE's E-step: ``W = a / (a + b)`` per decision pattern, computed in log space."""
    eps = 1e-12
    pc, qc = np.clip(p, eps, 1 - eps), np.clip(q, eps, 1 - eps)
    log_a = math.log(prior) + d @ np.log(pc) + (1 - d) @ np.log1p(-pc)
    log_b = math.log1p(-prior) + (1 - d) @ np.log(qc) + d @ np.log1p(-qc)
    w: NDArray[np.float64] = np.exp(log_a - np.logaddexp(log_a, log_b))
    return w


def _decision_patterns(
    flat: NDArray[np.bool_],
) -> tuple[NDArray[np.bool_], NDArray[np.intp], NDArray[np.intp]]:
    """The distinct per-pixel decision vectors of ``(readers, pixels)``, each pixel's pattern, the counts."""
    readers = flat.shape[0]
    if readers <= 63:
        codes = np.zeros(flat.shape[1], dtype=np.uint64)
        for j in range(readers):
            codes |= flat[j].astype(np.uint64) << np.uint64(j)
        unique, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        patterns = ((unique[:, None] >> np.arange(readers, dtype=np.uint64)[None, :]) & np.uint64(1)).astype(
            bool
        )
        return patterns, inverse.reshape(-1), counts
    unique_columns, inverse, counts = np.unique(flat, axis=1, return_inverse=True, return_counts=True)
    return unique_columns.T, inverse.reshape(-1), counts
