"""Agreement figures against published examples and cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radstack.labeling.agreement import (
    BoxMatch,
    Proportion,
    box_agreement,
    cohen_kappa,
    dice,
    fleiss_kappa,
    krippendorff_alpha,
    match_boxes,
    reader_class_sensitivity,
    reader_sensitivity,
    wilson_interval,
)

# The classic 2×2 table: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no (reader a first).
COHEN_A = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
COHEN_B = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15


def test_cohen_kappa_of_the_classic_two_by_two_table() -> None:
    # p_o = (20 + 15) / 50 = 0.7; a says yes 25/50 = 0.5, b says yes 30/50 = 0.6;
    # p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = (0.7 − 0.5) / (1 − 0.5) = 0.4.
    assert cohen_kappa(COHEN_A, COHEN_B) == pytest.approx(0.4)
    assert cohen_kappa(COHEN_B, COHEN_A) == pytest.approx(0.4)


def test_cohen_kappa_perfect_chance_level_and_no_variation() -> None:
    assert cohen_kappa(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    # Reader b says yes to every other item regardless of a: p_o = 0.5 = p_e → 0.
    assert cohen_kappa(["y", "y", "n", "n"], ["y", "n", "y", "n"]) == pytest.approx(0.0)
    # Systematic disagreement: p_o = 0, p_e = 0.5 → −1.
    assert cohen_kappa(["y", "n"], ["n", "y"]) == pytest.approx(-1.0)
    # Both readers said "normal" to everything: p_e = 1; documented as 1.0, not NaN.
    assert cohen_kappa(["normal"] * 5, ["normal"] * 5) == 1.0


def test_cohen_kappa_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="3 items and reader b 2"):
        cohen_kappa(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="no items"):
        cohen_kappa([], [])
    with pytest.raises(ValueError, match=r"missing.*krippendorff_alpha"):
        cohen_kappa(["a", None], ["a", "b"])


# Wikipedia's "Fleiss' kappa" worked example: 10 items, 14 readers, 5 categories (counts n_ij).
FLEISS_COUNTS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_of_the_wikipedia_example() -> None:
    # The ratings themselves: each item's 14 categories, in a shuffled reader order.
    rng = np.random.default_rng(0)
    ratings = []
    for counts in FLEISS_COUNTS:
        row = [f"c{j + 1}" for j, c in enumerate(counts) for _ in range(c)]
        ratings.append([row[k] for k in rng.permutation(len(row))])
    # By hand from the counts: P_i = (Σ n_ij² − 14) / (14·13), P̄ = 0.378;
    # p_j = column sums / 140 = (0.143, 0.2, 0.279, 0.15, 0.229), P̄_e = Σ p_j² = 0.213.
    n, items = 14, len(FLEISS_COUNTS)
    p_bar = sum((sum(c * c for c in row) - n) / (n * (n - 1)) for row in FLEISS_COUNTS) / items
    p_j = [sum(row[j] for row in FLEISS_COUNTS) / (items * n) for j in range(5)]
    p_e = sum(p * p for p in p_j)
    assert p_bar == pytest.approx(0.378, abs=5e-4)
    assert p_e == pytest.approx(0.213, abs=5e-4)
    kappa = fleiss_kappa(ratings)
    assert kappa == pytest.approx((p_bar - p_e) / (1 - p_e))
    assert round(kappa, 3) == 0.210


def test_fleiss_kappa_of_two_readers_is_scotts_pi() -> None:
    # With two readers Fleiss' kappa is Scott's pi: pooled shares, yes = (25 + 30) / 100 = 0.55;
    # p_e = 0.55² + 0.45² = 0.505; p_o = 0.7; π = (0.7 − 0.505) / 0.495.
    rows = list(zip(COHEN_A, COHEN_B, strict=True))
    assert fleiss_kappa(rows) == pytest.approx((0.7 - 0.505) / 0.495)
    assert fleiss_kappa([["n", "n", "n"], ["n", "n", "n"]]) == 1.0


def test_fleiss_kappa_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[2, 3\] ratings"):
        fleiss_kappa([["a", "b"], ["a", "b", "c"]])
    with pytest.raises(ValueError, match="at least 2"):
        fleiss_kappa([["a"], ["b"]])
    with pytest.raises(ValueError, match="no items"):
        fleiss_kappa([])
    with pytest.raises(ValueError, match=r"item 1.*missing"):
        fleiss_kappa([["a", "b"], ["a", math.nan]])


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units.
N = None
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


def test_krippendorff_alpha_of_the_2011_example() -> None:
    # The paper's figures: nominal 0.743, ordinal 0.815, interval 0.849, ratio 0.797.
    assert round(krippendorff_alpha(KRIPPENDORFF_2011), 3) == 0.743
    assert round(krippendorff_alpha(KRIPPENDORFF_2011, "ordinal"), 3) == 0.815
    assert round(krippendorff_alpha(KRIPPENDORFF_2011, "interval"), 3) == 0.849
    assert round(krippendorff_alpha(KRIPPENDORFF_2011, "ratio"), 3) == 0.797


def test_krippendorff_nominal_alpha_from_pairs_counted_by_hand() -> None:
    # Pairable values: unit 12 has one value and drops out; n = 40 values in 11 units.
    # Disagreeing ordered pairs per unit, each weighted 1/(m_u − 1):
    #   unit 2 (2,2,3,2): 6 pairs/3; unit 6 (1,2,3,4): 12 pairs/3; unit 8 (1,1,2,1): 6 pairs/3 → 8.
    #   So Σ o_cc = 40 − 8 = 32 and D_o·n = 8.
    # Values pooled: 1×9, 2×13, 3×10, 4×5, 5×3 → Σ n_c² = 81 + 169 + 100 + 25 + 9 = 384.
    # α = 1 − (n − 1)(n − Σ o_cc) / (n² − Σ n_c²) = 1 − 39·8 / (1600 − 384) = 1 − 312/1216.
    pooled = [v for row in KRIPPENDORFF_2011 for v in row[:11] if v is not None]
    assert len(pooled) == 40
    assert sorted(pooled.count(v) for v in range(1, 6)) == sorted([9, 13, 10, 5, 3])
    assert krippendorff_alpha(KRIPPENDORFF_2011) == pytest.approx(1 - 312 / 1216)


def test_krippendorff_alpha_takes_numpy_with_nan_and_ignores_lonely_items() -> None:
    data = np.array(KRIPPENDORFF_2011, dtype=np.float64)  # None → NaN
    assert krippendorff_alpha(data, "interval") == pytest.approx(
        krippendorff_alpha(KRIPPENDORFF_2011, "interval")
    )
    # A 13th item only one coder rated changes nothing.
    extended = [[*row, 4 if i == 0 else None] for i, row in enumerate(KRIPPENDORFF_2011)]
    assert krippendorff_alpha(extended) == pytest.approx(krippendorff_alpha(KRIPPENDORFF_2011))


def test_krippendorff_alpha_on_two_complete_readers_and_no_variation() -> None:
    # Two readers, no missing values: nominal alpha is Scott's pi with the small-sample correction
    # (n − 1)/n on expected disagreement: α = 1 − (n − 1)·D_o / D_e with n = 100 values;
    # observed disagreements 15 of 50 items → 30 ordered pairs; pooled yes 55, no 45.
    alpha = krippendorff_alpha([COHEN_A, COHEN_B])
    assert alpha == pytest.approx(1 - 99 * 30 / (100**2 - 55**2 - 45**2))
    assert krippendorff_alpha([["x", "x", None], ["x", None, "x"]]) == 1.0


def test_krippendorff_alpha_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="same items"):
        krippendorff_alpha([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="no item was rated by two readers"):
        krippendorff_alpha([[1, None], [None, 2]])
    with pytest.raises(ValueError, match="must be numbers"):
        krippendorff_alpha([["mild", "severe"], ["mild", "mild"]], "interval")
    with pytest.raises(ValueError, match="level 'cardinal'"):
        krippendorff_alpha([[1, 2], [1, 2]], "cardinal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ratio data must be ≥ 0"):
        krippendorff_alpha([[1, -2], [1, 2]], "ratio")


def test_match_boxes_is_optimal_where_greedy_loses_a_pair() -> None:
    # Boxes 10 high; x-ranges: a1 [0,10], a2 [3,13]; b1 [1,11], b2 [-2,8].
    # IoU(a1,b1) = 9/11 = 0.818 (the best pair), IoU(a1,b2) = 8/12, IoU(a2,b1) = 8/12, IoU(a2,b2) = 5/15.
    # Greedy takes a1–b1 first and leaves a2 with b2 at 0.333 < 0.5: one pair.
    # The optimal matching pairs a1–b2 and a2–b1: two pairs at 2/3.
    a = [[0, 0, 10, 10], [3, 0, 13, 10]]
    b = [[1, 0, 11, 10], [-2, 0, 8, 10]]
    matches = match_boxes(a, b, 0.5)
    assert [(m.a, m.b) for m in matches] == [(0, 1), (1, 0)]
    assert [m.iou for m in matches] == pytest.approx([2 / 3, 2 / 3])
    # At τ = 0.7 only a1–b1 qualifies.
    assert match_boxes(a, b, 0.7) == [BoxMatch(0, 0, 9 / 11)]
    assert match_boxes([], b) == []


def test_match_boxes_prefers_higher_iou_among_maximum_matchings() -> None:
    # Boxes 10 high; x-ranges: a1 [0,10], a2 [1,11]; b1 [2,12], b2 [0,10]. Every pair has IoU ≥ 0.5:
    # a1–b2 = 1, a1–b1 = 8/12, a2–b1 = 9/11, a2–b2 = 9/11. Both matchings have two pairs;
    # a1–b2 + a2–b1 totals 1.818, a1–b1 + a2–b2 only 1.485: the first is chosen.
    a = [[0, 0, 10, 10], [1, 0, 11, 10]]
    b = [[2, 0, 12, 10], [0, 0, 10, 10]]
    assert [(m.a, m.b, m.iou) for m in match_boxes(a, b)] == [(0, 1, 1.0), (1, 0, pytest.approx(9 / 11))]


def test_box_agreement_f1_and_mean_iou_by_hand() -> None:
    a = [[0, 0, 10, 10], [20, 20, 30, 30]]
    b = [[0, 0, 10, 5], [25, 20, 35, 30], [50, 50, 60, 60]]
    # [0,0,10,10] vs [0,0,10,5]: ∩ 50, ∪ 100 → 0.5 (matches at τ = 0.5, IoU ≥ τ);
    # [20,20,30,30] vs [25,20,35,30]: ∩ 50, ∪ 150 → 1/3 (no match); F1 = 2·1/(2+3) = 0.4.
    result = box_agreement(a, b, 0.5)
    assert (result.f1, result.mean_iou, result.matches, result.boxes_a, result.boxes_b) == (0.4, 0.5, 1, 2, 3)
    assert box_agreement(a, b, 0.3).f1 == pytest.approx(2 * 2 / 5)
    assert box_agreement(a, b, 0.3).mean_iou == pytest.approx((0.5 + 1 / 3) / 2)
    empty = box_agreement([], [])
    assert (empty.f1, empty.mean_iou) == (1.0, None)
    one_sided = box_agreement(a, [])
    assert (one_sided.f1, one_sided.mean_iou) == (0.0, None)


def test_boxes_are_validated() -> None:
    with pytest.raises(ValueError, match=r"box 1 \[5.0, 5.0, 2.0, 8.0\] is inverted"):
        box_agreement([[0, 0, 1, 1], [5, 5, 2, 8]], [])
    with pytest.raises(ValueError, match="inverted or empty"):
        match_boxes([[0, 0, 0, 4]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="shape"):
        match_boxes([[0, 0, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="non-finite"):
        match_boxes([[0, 0, math.inf, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="iou_threshold 0"):
        match_boxes([[0, 0, 1, 1]], [[0, 0, 1, 1]], 0)


def test_dice_on_tiny_masks() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0:2, 0:2] = True  # 4 pixels
    b[1:3, 1:3] = True  # 4 pixels, 1 shared ([1, 1])
    assert dice(a, b) == pytest.approx(2 * 1 / (4 + 4))
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros((4, 4), np.uint8)) == 0.0
    assert dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="different shapes"):
        dice(a, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="values other than 0/1"):
        dice(a, np.full((4, 4), 2))


def test_wilson_interval_by_hand() -> None:
    # 8 of 10, z = 1.96: centre = (0.8 + 0.19208) / 1.38416 = 0.716735;
    # half = 1.96·√(0.016 + 0.009604) / 1.38416 = 0.226649 → (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="0 successes of 0"):
        wilson_interval(0, 0)


def test_reader_sensitivity_against_gold_boxes() -> None:
    gold = {
        "img1": [[0, 0, 10, 10], [20, 20, 30, 30]],
        "img2": [[5, 5, 15, 15]],
        "img3": [],
    }
    reader = {
        "img1": [[1, 1, 10, 10]],  # IoU 81/100: finds the first, misses the second
        "img2": [[5, 5, 15, 15], [40, 40, 50, 50]],  # finds it, plus one false positive
        "img3": [[0, 0, 4, 4]],  # a false positive on a normal image
        "other": [[0, 0, 1, 1]],  # not in the gold set: not scored
    }
    result = reader_sensitivity(reader, gold, 0.5)
    assert result.sensitivity == Proportion(2, 3, 2 / 3, wilson_interval(2, 3))
    assert (result.false_positives, result.images) == (2, 3)
    assert result.false_positives_per_image == pytest.approx(2 / 3)
    no_findings = reader_sensitivity({"a": []}, {"a": []})
    assert (no_findings.sensitivity.value, no_findings.sensitivity.ci95) == (None, None)
    with pytest.raises(ValueError, match=r"no entry for gold image.*'img3'"):
        reader_sensitivity({"img1": [], "img2": []}, gold)


def test_reader_class_sensitivity_and_specificity() -> None:
    gold = {i: ("fracture" if i < 4 else "normal") for i in range(10)}
    reader = dict(gold)
    reader[0] = "normal"  # a miss: TP 3 of 4
    reader[4] = "fracture"  # a false alarm: TN 5 of 6
    reader[5] = "dislocation"  # not the positive category: still negative
    result = reader_class_sensitivity(reader, gold, "fracture")
    assert result.sensitivity == Proportion(3, 4, 0.75, wilson_interval(3, 4))
    assert result.specificity == Proportion(5, 6, 5 / 6, wilson_interval(5, 6))
    with pytest.raises(ValueError, match="reader class of image 2 is missing"):
        reader_class_sensitivity({**reader, 2: None}, gold, "fracture")
    with pytest.raises(ValueError, match="gold set has no images"):
        reader_class_sensitivity(reader, {}, "fracture")
