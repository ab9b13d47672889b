"""ROC, FROC and calibration plots as small self-contained SVG documents (for the model card).

Drawn with :class:`radstack.charts.Chart` (hand-written SVG, no plotting stack). Each function takes the
JSON of :meth:`radstack.ai.evaluate.Evaluation.to_dict`, so a stored evaluation can be drawn again
without the model. The same input gives byte-identical output.
"""

from __future__ import annotations

import math
from typing import Any

from radstack.charts import LINE, Chart, Marker

__all__ = ["calibration_svg", "froc_svg", "roc_svg"]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def roc_svg(evaluation: dict[str, Any]) -> str:
    """The ROC curve, the chance diagonal, both operating points, and the AUROC with its CI."""
    chart = Chart("ROC", "1 − specificity", "sensitivity", 1.0)
    chart.line([0, 1], [0, 1], colour="#999", dashed=True)
    chart.line(evaluation["roc"]["fpr"], evaluation["roc"]["tpr"])
    markers = []
    for name, point in evaluation["operating_points"].items():
        if _finite(point.get("sensitivity")) and _finite(point.get("specificity")):
            markers.append(Marker(1 - point["specificity"], point["sensitivity"], name))
    chart.markers(markers)
    low, high = evaluation["auroc_ci"]
    ci = f" ({low:.3f}–{high:.3f})" if _finite(low) and _finite(high) else ""
    chart.note(f"AUROC {evaluation['auroc']:.3f}{ci}")
    return chart.svg()


def froc_svg(evaluation: dict[str, Any], x_max: float = 4.0) -> str:
    """The FROC curve up to ``x_max`` false positives per image, with the sensitivity at 0.5, 1 and 2."""
    froc = evaluation["froc"]
    chart = Chart("FROC", "false positives per image", "box sensitivity", x_max, x_ticks=4)
    xs = [x for x in froc["fp_per_image"] if x <= x_max]
    chart.line(xs, froc["sensitivity"][: len(xs)])
    chart.markers(
        [
            Marker(float(rate), value, f"{value:.2f}")
            for rate, value in froc["at"].items()
            if _finite(value) and float(rate) <= x_max
        ]
    )
    chart.note(f"IoU ≥ {evaluation['box_recall_iou']:g}, {froc['n_boxes']} boxes")
    return chart.svg()


def calibration_svg(evaluation: dict[str, Any]) -> str:
    """The reliability diagram (observed fracture rate against mean predicted probability per bin)."""
    calibration = evaluation["calibration"]
    chart = Chart("Calibration", "predicted probability", "observed fracture rate", 1.0)
    chart.line([0, 1], [0, 1], colour="#999", dashed=True)
    pairs = [
        (p, o)
        for p, o in zip(calibration["mean_predicted"], calibration["observed"], strict=True)
        if p is not None and o is not None
    ]
    if pairs:
        chart.line([p for p, _ in pairs], [o for _, o in pairs])
        chart.markers([Marker(p, o, "") for p, o in pairs], colour=LINE)
    chart.note(f"ECE {calibration['ece']:.3f}, Brier {calibration['brier']:.3f}")
    return chart.svg()
