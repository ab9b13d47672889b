"""Consensus rules on small cases worked out by hand, and STAPLE on simulated readers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from radstack.labeling.consensus import (
    VoteOutcome,
    majority_class,
    majority_mask,
    quorum_boxes,
    staple,
    weighted_box_fusion,
)


def test_majority_class_plurality_ties_and_missing_reads() -> None:
    vote = majority_class(["fracture", "normal", "fracture"])
    assert (vote.category, vote.outcome, vote.votes) == ("fracture", VoteOutcome.MAJORITY, 3)
    assert vote.share == pytest.approx(2 / 3)
    assert vote.counts == (("fracture", 2), ("normal", 1))
    assert not vote.needs_adjudication
    # 2-1-1 of four readers: a plurality with half the votes.
    assert majority_class(["a", "b", "a", "c"]).category == "a"
    tie = majority_class(["fracture", "normal"])
    assert (tie.category, tie.outcome, tie.share, tie.needs_adjudication) == (
        None,
        VoteOutcome.TIE,
        0.5,
        True,
    )
    assert majority_class(["a", "b", "c"]).outcome is VoteOutcome.TIE
    # A reader who has not read (None / NaN) casts no vote.
    missing = majority_class([None, "normal", math.nan])
    assert (missing.category, missing.votes, missing.share) == ("normal", 1, 1.0)
    too_few = majority_class(["normal", None, "normal"], min_votes=3)
    assert (too_few.category, too_few.outcome, too_few.share) == (None, VoteOutcome.TOO_FEW_VOTES, 1.0)
    nobody = majority_class([None, None])
    assert (nobody.category, nobody.outcome, nobody.share, nobody.votes) == (
        None,
        VoteOutcome.TOO_FEW_VOTES,
        None,
        0,
    )


def test_majority_class_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="min_votes 0"):
        majority_class(["a"], min_votes=0)
    with pytest.raises(ValueError, match="one string"):
        majority_class("fracture")


def test_weighted_box_fusion_of_two_overlapping_boxes_is_the_score_weighted_mean() -> None:
    # IoU([0,0,10,10], [2,0,12,10]) = 80/120 = 0.667 ≥ 0.55: one cluster.
    # Coordinates weighted by score: x0 = (0.9·0 + 0.6·2)/1.5 = 0.8, x1 = (0.9·10 + 0.6·12)/1.5 = 10.8.
    # Confidence = mean score (0.75) × 2 readers of 2 = 0.75.
    fused = weighted_box_fusion([[[0, 0, 10, 10]], [[2, 0, 12, 10]]], [[0.9], [0.6]])
    assert len(fused) == 1
    assert fused[0].box == pytest.approx((0.8, 0.0, 10.8, 10.0))
    assert fused[0].score == pytest.approx(0.75)
    assert (fused[0].readers, fused[0].members) == (2, ((0, 0), (1, 0)))


def test_weighted_box_fusion_of_human_readers_scores_by_reader_share() -> None:
    readers = [
        [[0, 0, 10, 10], [50, 50, 60, 60]],
        [[1, 1, 11, 11]],
        [[0, 1, 10, 11]],
    ]
    fused = weighted_box_fusion(readers)
    # The three boxes near the origin are one cluster with the plain mean box; the lone box scores 1/3.
    assert [f.readers for f in fused] == [3, 1]
    assert fused[0].box == pytest.approx((1 / 3, 2 / 3, 31 / 3, 32 / 3))
    assert [f.score for f in fused] == pytest.approx([1.0, 1 / 3])
    assert fused[1].box == (50.0, 50.0, 60.0, 60.0)
    # One reader's two boxes on one finding count once in the confidence (2 boxes, 1 reader of 2).
    twice = weighted_box_fusion([[[0, 0, 10, 10], [0, 0, 10, 11]], []])
    assert (len(twice), twice[0].readers, twice[0].score) == (1, 1, 0.5)


def test_weighted_box_fusion_skips_low_scores_and_validates() -> None:
    fused = weighted_box_fusion([[[0, 0, 10, 10]], [[40, 40, 50, 50]]], [[0.9], [0.05]], skip_threshold=0.1)
    assert [f.box for f in fused] == [(0.0, 0.0, 10.0, 10.0)]
    assert fused[0].score == pytest.approx(0.9 / 2)
    with pytest.raises(ValueError, match="reader 1 has 1 boxes but 2 scores"):
        weighted_box_fusion([[[0, 0, 1, 1]], [[0, 0, 1, 1]]], [[1.0], [1.0, 0.5]])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        weighted_box_fusion([[[0, 0, 1, 1]]], [[1.5]])
    with pytest.raises(ValueError, match="1 score lists for 2 readers"):
        weighted_box_fusion([[[0, 0, 1, 1]], []], [[1.0]])
    with pytest.raises(ValueError, match=r"reader 0: box 0 .* inverted"):
        weighted_box_fusion([[[10, 0, 0, 10]]])
    with pytest.raises(ValueError, match="no readers"):
        weighted_box_fusion([])


def test_quorum_of_three_readers() -> None:
    readers = [
        [[0, 0, 10, 10], [30, 30, 40, 40]],  # a fracture all three see; one only reader 0 sees
        [[1, 0, 11, 10], [100, 100, 110, 110]],  # the same fracture; one only reader 1 sees
        [[0, 1, 10, 11], [31, 30, 41, 40]],  # the same fracture; reader 0's second one too
    ]
    result = quorum_boxes(readers, iou_threshold=0.5, quorum=2)
    assert [(box.readers, box.members) for box in result.accepted] == [
        (3, ((0, 0), (1, 0), (2, 0))),
        (2, ((0, 1), (2, 1))),
    ]
    # Mean boxes: x0 = (0 + 1 + 0)/3, y0 = (0 + 0 + 1)/3, ...; ([30,30,40,40] + [31,30,41,40]) / 2.
    assert result.accepted[0].box == pytest.approx((1 / 3, 1 / 3, 31 / 3, 31 / 3))
    assert result.accepted[1].box == pytest.approx((30.5, 30.0, 40.5, 40.0))
    assert [box.score for box in result.accepted] == pytest.approx([1.0, 2 / 3])
    assert [(box.box, box.readers) for box in result.disagreements] == [((100.0, 100.0, 110.0, 110.0), 1)]
    # A quorum of 3 keeps only what everyone drew.
    strict = quorum_boxes(readers, quorum=3)
    assert ([b.readers for b in strict.accepted], [b.readers for b in strict.disagreements]) == ([3], [2, 1])


def test_quorum_counts_each_reader_once_per_cluster() -> None:
    # Reader 0 drew the same fracture twice; reader 1 once. The pair is one cluster of 2 readers, and
    # reader 0's second box is a cluster of its own: it cannot lift the first cluster to 3.
    result = quorum_boxes([[[0, 0, 10, 10], [0, 0, 10, 10.5]], [[0, 0, 10, 10]]], quorum=2)
    assert [(b.readers, b.members) for b in result.accepted] == [(2, ((0, 0), (1, 0)))]
    assert [b.members for b in result.disagreements] == [((0, 1),)]


def test_quorum_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="quorum 3 must be between 1 and the 2 readers"):
        quorum_boxes([[], []], quorum=3)
    with pytest.raises(ValueError, match="no readers"):
        quorum_boxes([])
    assert quorum_boxes([[], []]) == quorum_boxes([[], []], quorum=1)


def test_majority_mask_needs_a_strict_majority() -> None:
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[1, 0, 1, 0]], bool)
    c = np.array([[1, 0, 0, 0]], bool)
    d = np.array([[0, 1, 1, 0]], bool)
    # Three readers: pixel votes 3, 1, 1, 0 → only the first has 2 or more.
    assert majority_mask([a, b, c]).tolist() == [[True, False, False, False]]
    # Two readers: 1 of 2 is a tie → background.
    assert majority_mask([a, b]).tolist() == [[True, False, False, False]]
    # Four readers: votes 3, 2, 2, 0 → the 2-2 ties stay background.
    assert majority_mask([a, b, c, d]).tolist() == [[True, False, False, False]]
    assert majority_mask(np.stack([a, a, d])).tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="different shapes"):
        majority_mask([a, np.zeros((2, 4), bool)])
    with pytest.raises(ValueError, match="no masks"):
        majority_mask([])


def _simulated_readers() -> tuple[NDArray[np.bool_], list[NDArray[np.bool_]]]:
    """A disk and three readers: A and B are good (each misses 10 pixels of the disk's right half, all
    different); C is bad: it misses the whole left half and marks 10 background pixels.

    (Were A or B also to mark a background pixel alone, that pixel would be ambiguous under STAPLE's
    model, a false positive of A or a miss of both B and C, and C misses often: STAPLE then believes A.)
    """
    yy, xx = np.mgrid[0:64, 0:64]
    truth = (yy - 32) ** 2 + (xx - 32) ** 2 <= 12**2
    rng = np.random.default_rng(14)
    missed = rng.choice(np.flatnonzero(truth & (xx >= 32)), size=20, replace=False)
    a, b, c = truth.copy(), truth.copy(), truth & (xx >= 32)
    a.flat[missed[:10]] = False
    b.flat[missed[10:]] = False
    c.flat[rng.choice(np.flatnonzero(~truth), size=10, replace=False)] = True
    return truth, [a, b, c]


def _naive_staple_round(
    d: NDArray[np.float64], prior: float, p: NDArray[np.float64], q: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """One EM round per pixel, straight from Warfield et al. (2004) eqs. for W, p, q (d: readers × pixels)."""
    a = prior * np.prod(np.where(d == 1, p[:, None], 1 - p[:, None]), axis=0)
    b = (1 - prior) * np.prod(np.where(d == 0, q[:, None], 1 - q[:, None]), axis=0)
    w = a / (a + b)
    return w, (d @ w) / w.sum(), ((1 - d) @ (1 - w)) / (1 - w).sum()


def test_staple_recovers_the_truth_and_finds_the_weak_reader() -> None:
    truth, readers = _simulated_readers()
    result = staple(readers)
    assert result.converged
    assert np.array_equal(result.mask, truth)
    # Each error is outvoted by the two other readers, so the strict majority is the truth as well.
    assert np.array_equal(majority_mask(readers), truth)
    # The estimated performance equals each reader's own against the truth (A and B miss 10 of the
    # disk's pixels; C finds the right half, centre column included: 233 of 441, and marks 10
    # background pixels).
    n_fg, n_bg, n_right = int(truth.sum()), int((~truth).sum()), int(truth[:, 32:].sum())
    assert (n_fg, n_right) == (441, 233)
    assert result.sensitivity == pytest.approx([431 / 441, 431 / 441, 233 / 441], abs=1e-3)
    assert result.specificity == pytest.approx([1.0, 1.0, 1 - 10 / n_bg], abs=1e-4)
    assert result.sensitivity[2] < 0.6 < 0.9 < min(result.sensitivity[:2])
    assert result.prior == pytest.approx(sum(int(r.sum()) for r in readers) / (3 * 64 * 64))
    # The soft truth: near 1 on the disk; on C's 10 false positives, with the readers' true rates,
    # a = γ (1 − p_A)(1 − p_B) p_C = γ (10/441)² (233/441), b = (1 − γ) q_A q_B (1 − q_C) = (1 − γ) 10/3655,
    # γ = (431 + 431 + 243) / (3 · 4096): W = a / (a + b) ≈ 0.0097 (STAPLE's own estimates: ≈ 0.010).
    assert result.truth[truth].min() > 0.99
    gamma = (431 + 431 + 243) / (3 * 4096)
    a = gamma * (10 / 441) ** 2 * (233 / 441)
    b = (1 - gamma) * 10 / n_bg
    alone = readers[2] & ~truth
    assert result.truth[alone] == pytest.approx(np.full(10, a / (a + b)), abs=1e-3)
    assert result.truth[~truth & ~alone].max() < 1e-3


def _many_noisy_readers() -> list[NDArray[np.bool_]]:
    """70 readers (more than the 63 that fit a 64-bit decision code) flipping 10% of a 12×12 square."""
    truth = np.zeros((12, 12), bool)
    truth[3:9, 2:10] = True
    rng = np.random.default_rng(70)
    return [truth ^ (rng.random(truth.shape) < 0.1) for _ in range(70)]


@pytest.mark.parametrize("readers", [_simulated_readers()[1], _many_noisy_readers()], ids=["3", "70"])
def test_staple_equals_a_per_pixel_em_from_the_paper(readers: list[NDArray[np.bool_]]) -> None:
    d = np.stack(readers).reshape(len(readers), -1).astype(np.float64)
    prior = float(d.mean())
    result = staple(readers, max_iter=3)
    assert result.iterations == (3 if len(readers) == 3 else 2)  # 70 readers settle at once
    p = q = np.full(len(readers), 0.99)
    for _ in range(result.iterations):
        w, p, q = _naive_staple_round(d, prior, p, q)
    assert result.sensitivity == pytest.approx(p, abs=1e-12)
    assert result.specificity == pytest.approx(q, abs=1e-12)
    # The returned truth is the posterior under the returned p and q: one more E-step.
    w, _, _ = _naive_staple_round(d, prior, p, q)
    assert result.truth.reshape(-1) == pytest.approx(w, abs=1e-9)


def test_staple_of_empty_and_full_masks() -> None:
    empty = staple([np.zeros((3, 3), bool)] * 3)
    assert not empty.mask.any()
    assert (empty.iterations, empty.prior) == (0, 0.0)
    assert np.isnan(empty.sensitivity).all()
    assert (empty.specificity == 1.0).all()
    full = staple([np.ones((2, 2), bool)] * 2)
    assert full.mask.all()
    assert (full.sensitivity == 1.0).all() and np.isnan(full.specificity).all()


def test_staple_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        staple([np.zeros((3, 3), bool), np.zeros((3, 4), bool)])
    with pytest.raises(ValueError, match="max_iter 0"):
        staple([np.zeros((3, 3), bool)], max_iter=0)
    with pytest.raises(ValueError, match="tol 0"):
        staple([np.zeros((3, 3), bool)], tol=0)
    with pytest.raises(ValueError, match="values other than 0/1"):
        staple([np.full((3, 3), 0.5)])
