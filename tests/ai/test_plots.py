"""The model card's plots: well-formed SVG that draws the evaluation it is given."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from radstack.ai.evaluate import OperatingPoints, evaluate
from radstack.ai.plots import calibration_svg, froc_svg, roc_svg
from radstack.ai.samples import Prediction, Sample

SVG = "{http://www.w3.org/2000/svg}"


def _evaluation() -> dict[str, object]:
    rng = np.random.default_rng(0)
    truths, predictions = [], []
    for i in range(40):
        fracture = i % 2 == 1
        box = np.array([[10.0, 10.0, 30.0, 30.0]], np.float32) if fracture else np.zeros((0, 4), np.float32)
        truths.append(
            Sample(
                np.zeros((64, 64), np.uint16), box, fracture, fracture_type="oblique" if fracture else None
            )
        )
        score = float(np.clip(0.3 + 0.4 * fracture + rng.normal(0, 0.2), 0, 1))
        predictions.append(
            Prediction(score, np.array([[12.0, 11.0, 31.0, 29.0]], np.float32), np.array([score], np.float32))
        )
    return evaluate(predictions, truths, OperatingPoints(0.4, 0.6), n_bootstrap=100).to_dict()


def test_each_plot_is_valid_svg_with_its_curve_and_labels() -> None:
    evaluation = _evaluation()
    for render, title, label in (
        (roc_svg, "ROC", "AUROC"),
        (froc_svg, "FROC", "IoU ≥ 0.3"),
        (calibration_svg, "Calibration", "ECE"),
    ):
        svg = render(evaluation)
        root = ET.fromstring(svg)
        assert root.tag == f"{SVG}svg"
        texts = [t.text or "" for t in root.iter(f"{SVG}text")]
        assert title in texts
        assert any(label in t for t in texts)
        curves = [p for p in root.iter(f"{SVG}polyline") if p.get("stroke-dasharray") is None]
        assert curves and len(curves[0].get("points", "").split()) >= 3
        assert render(evaluation) == svg  # deterministic


def test_roc_plot_marks_both_operating_points_where_they_fall() -> None:
    evaluation = _evaluation()
    root = ET.fromstring(roc_svg(evaluation))
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "suspicious" in labels and "definite" in labels
    assert len(list(root.iter(f"{SVG}circle"))) == 2
