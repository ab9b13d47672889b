"""Evaluation metrics against cases worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radstack.ai.evaluate import (
    OperatingPoints,
    auroc,
    bootstrap_auroc_ci,
    calibration,
    choose_operating_points,
    evaluate,
    fit_platt,
    froc,
    roc_curve,
)
from radstack.ai.samples import Prediction, Sample


def test_auroc_of_known_scores_counts_ties_as_half() -> None:
    # Pairs (fracture, normal): 0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1 → 3 of 4.
    assert auroc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    # 0.8>0.5 and a tie 0.5=0.5 → (1 + 0.5) / 2.
    assert auroc([1, 1, 0], [0.8, 0.5, 0.5]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.2, 0.2]) == pytest.approx(0.5)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)


def test_auroc_refuses_a_single_class() -> None:
    with pytest.raises(ValueError, match="both fracture and normal images; got 3 fracture and 0 normal"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])


def test_roc_curve_runs_from_origin_to_one_one_through_each_threshold() -> None:
    fpr, tpr, thresholds = roc_curve([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thresholds[0] == np.inf and list(thresholds[1:]) == [0.9, 0.5, 0.4, 0.1]


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(200) < 0.4
    scores = labels * 0.8 + rng.normal(0, 0.5, 200)
    first = bootstrap_auroc_ci(labels, scores, n_resamples=300, seed=7)
    assert first == bootstrap_auroc_ci(labels, scores, n_resamples=300, seed=7)
    assert first != bootstrap_auroc_ci(labels, scores, n_resamples=300, seed=8)
    assert first[0] < auroc(labels, scores) < first[1]
    assert 0.05 < first[1] - first[0] < 0.25  # about ±2 standard errors for 200 cases


def test_operating_points_follow_the_documented_rule() -> None:
    positives = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    negatives = [0.02 * i for i in range(20)]  # 0.00 … 0.38
    labels = [1] * 10 + [0] * 20
    points = choose_operating_points(
        labels, positives + negatives, sensitivity_target=0.9, specificity_target=0.9
    )
    # Suspicious: the highest threshold keeping 9 of 10 fractures → the 9th highest fracture score.
    assert points.suspicious == 0.1
    # Definite: the lowest threshold with at most 2 of 20 normals at or above it → just above 0.34.
    assert 0.34 < points.definite < 0.34 + 1e-12
    scores = np.array(positives + negatives)
    called = scores >= points.definite
    assert (~called[10:]).mean() == 0.9
    assert (called[:10]).mean() == 0.6  # 0.4 and above
    # The default targets are 0.95: all ten fractures (ceil(9.5)) → the lowest fracture score.
    assert choose_operating_points(labels, scores).suspicious == 0.05


def _truth(boxes: list[list[float]], kind: str | None = "transverse") -> Sample:
    return Sample(
        image=np.zeros((64, 64), np.uint16),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        label=bool(boxes),
        fracture_type=kind if boxes else None,
    )


def _prediction(probability: float, boxes: list[list[float]], scores: list[float]) -> Prediction:
    return Prediction(probability, np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32))


def _froc_case() -> tuple[list[Prediction], list[Sample]]:
    truths = [_truth([[0, 0, 10, 10]]), _truth([[20, 20, 30, 30]])]
    predictions = [
        # A hit (0.9), a false positive (0.8) and a second box on the same fracture (0.5: a false positive).
        _prediction(0.9, [[0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 11, 11]], [0.9, 0.8, 0.5]),
        # A false positive (0.7), then a hit with IoU 81/119 = 0.68 (0.6).
        _prediction(0.7, [[0, 0, 5, 5], [21, 21, 31, 31]], [0.7, 0.6]),
    ]
    return predictions, truths


def test_froc_of_a_hand_worked_case() -> None:
    predictions, truths = _froc_case()
    curve = froc(predictions, truths)
    # In score order: TP, FP, FP, TP, FP over 2 images and 2 fractures.
    assert curve.fp_per_image == (0.0, 0.0, 0.5, 1.0, 1.0, 1.5)
    assert curve.sensitivity == (0.0, 0.5, 0.5, 0.5, 1.0, 1.0)
    assert curve.at == {"0.5": 0.5, "1": 1.0, "2": 1.0}


def test_a_box_below_iou_0_3_is_not_a_hit() -> None:
    truths = [_truth([[0, 0, 10, 10]])]
    # IoU of [5,0,15,10] with [0,0,10,10] = 50 / 150 = 0.33; of [6,0,16,10] = 40 / 160 = 0.25.
    assert froc([_prediction(0.9, [[5, 0, 15, 10]], [0.9])], truths).at["1"] == 1.0
    assert froc([_prediction(0.9, [[6, 0, 16, 10]], [0.9])], truths).at["1"] == 0.0


def test_calibration_of_a_hand_worked_case() -> None:
    result = calibration([0, 0, 1, 0], [0.05, 0.15, 0.95, 0.95])
    assert result.counts == (1, 1, 0, 0, 0, 0, 0, 0, 0, 2)
    assert result.observed[9] == 0.5 and result.mean_predicted[9] == pytest.approx(0.95)
    assert result.observed[2] is None
    assert result.ece == pytest.approx((0.05 + 0.15 + 2 * 0.45) / 4)
    assert result.brier == pytest.approx((0.05**2 + 0.15**2 + 0.05**2 + 0.95**2) / 4)


def test_platt_scaling_recovers_a_known_miscalibration() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20000)
    labels = rng.random(logits.size) < 1 / (1 + np.exp(-(2.0 * logits - 1.0)))
    a, b = fit_platt(labels, 1 / (1 + np.exp(-logits)))
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)
    calibrated = 1 / (1 + np.exp(-(a * logits + b)))
    assert calibration(labels, calibrated).ece < 0.02 < calibration(labels, 1 / (1 + np.exp(-logits))).ece
    with pytest.raises(ValueError, match="do not rank fractures above normal"):
        fit_platt(~labels, 1 / (1 + np.exp(-logits)))


def test_evaluate_applies_validation_thresholds_and_breaks_down_by_type() -> None:
    predictions, truths = _froc_case()
    truths = [*truths, _truth([[5, 5, 15, 15]], kind="buckle"), _truth([]), _truth([])]
    predictions = [
        *predictions,
        _prediction(0.3, [[5, 5, 15, 15]], [0.3]),  # a buckle fracture found, with a low score
        _prediction(0.65, [[40, 40, 50, 50]], [0.65]),
        _prediction(0.1, [], []),
    ]
    result = evaluate(predictions, truths, OperatingPoints(suspicious=0.25, definite=0.68), n_bootstrap=200)
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert (data["n_images"], data["n_fracture"], data["n_normal"]) == (5, 3, 2)
    # Fracture probabilities 0.9, 0.7, 0.3 against normals 0.65, 0.1: 5 of 6 pairs.
    assert data["auroc"] == pytest.approx(5 / 6)
    suspicious = data["operating_points"]["suspicious"]
    assert (suspicious["sensitivity"], suspicious["specificity"]) == (1.0, 0.5)
    assert suspicious["box_recall"] == 1.0  # all three fractures have a hit scoring ≥ 0.25
    definite = data["operating_points"]["definite"]
    assert definite["sensitivity"] == pytest.approx(2 / 3) and definite["specificity"] == 1.0
    assert definite["box_recall"] == pytest.approx(1 / 3)  # only the 0.9 hit scores ≥ 0.68
    assert set(data["per_type"]) == {"transverse", "buckle"}
    assert data["per_type"]["buckle"]["n"] == 1
    assert data["per_type"]["buckle"]["definite"]["sensitivity"] == 0.0
    assert data["per_type"]["transverse"]["auroc"] == pytest.approx(1.0)
    assert data["froc"]["n_boxes"] == 3
