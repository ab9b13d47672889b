"""ROC, FROC and calibration plots as small self-contained SVG documents (for the model card).

Hand-written SVG instead of matplotlib: three line charts do not justify a plotting stack on every
node, and the output is text that a page can inline and a test can read. Each function takes the
JSON of :meth:`radstack.ai.evaluate.Evaluation.to_dict`, so a stored evaluation can be drawn again
without the model. The same input gives byte-identical output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["calibration_svg", "froc_svg", "roc_svg"]

_WIDTH, _HEIGHT = 400, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 34, 46
_LINE = "#1f5fa8"
_ACCENT = "#c0392b"
_GRID = "#e3e3e3"


@dataclass(frozen=True, slots=True)
class _Marker:
    x: float
    y: float
    label: str


class _Chart:
    """A linear x/y chart with a frame, grid, ticks, axis labels and a title."""

    def __init__(
        self, title: str, x_label: str, y_label: str, x_max: float, y_max: float = 1.0, x_ticks: int = 5
    ) -> None:
        self.x_max, self.y_max = x_max, y_max
        self.parts: list[str] = []
        w, h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
        self.parts.append(
            f'<rect x="{_LEFT}" y="{_TOP}" width="{w}" height="{h}" fill="#fff" stroke="#444"/>'
        )
        for i in range(x_ticks + 1):
            value = x_max * i / x_ticks
            x, _ = self.point(value, 0)
            self.parts.append(
                f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_TOP + h}" stroke="{_GRID}"/>'
                f'<text x="{x:.1f}" y="{_TOP + h + 16}" text-anchor="middle">{value:g}</text>'
            )
        for i in range(6):
            value = y_max * i / 5
            _, y = self.point(0, value)
            self.parts.append(
                f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + w}" y2="{y:.1f}" stroke="{_GRID}"/>'
                f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>'
            )
        self.parts.append(
            f'<text x="{_WIDTH / 2:.0f}" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
            f'<text x="{_LEFT + w / 2:.0f}" y="{_HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>'
            f'<text x="14" y="{_TOP + h / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {_TOP + h / 2:.0f})">{escape(y_label)}</text>'
        )

    def point(self, x: float, y: float) -> tuple[float, float]:
        w, h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
        x = min(max(x, 0.0), self.x_max)
        y = min(max(y, 0.0), self.y_max)
        return _LEFT + w * x / self.x_max, _TOP + h * (1 - y / self.y_max)

    def line(
        self, xs: Sequence[float], ys: Sequence[float], colour: str = _LINE, dashed: bool = False
    ) -> None:
        points = " ".join(
            f"{px:.1f},{py:.1f}" for px, py in (self.point(x, y) for x, y in zip(xs, ys, strict=True))
        )
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        self.parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{1 if dashed else 2}"{dash}/>'
        )

    def markers(self, markers: Sequence[_Marker], colour: str = _ACCENT) -> None:
        for marker in markers:
            x, y = self.point(marker.x, marker.y)
            self.parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>'
                f'<text x="{x + 7:.1f}" y="{y + 12:.1f}" fill="{colour}">{escape(marker.label)}</text>'
            )

    def note(self, text: str) -> None:
        x, y = self.point(self.x_max, 0)
        self.parts.append(f'<text x="{x - 6:.1f}" y="{y - 8:.1f}" text-anchor="end">{escape(text)}</text>')

    def svg(self) -> str:
        body = "".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
            f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="11">{body}</svg>\n'
        )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def roc_svg(evaluation: dict[str, Any]) -> str:
    """The ROC curve, the chance diagonal, both operating points, and the AUROC with its CI."""
    chart = _Chart("ROC", "1 − specificity", "sensitivity", 1.0)
    chart.line([0, 1], [0, 1], colour="#999", dashed=True)
    chart.line(evaluation["roc"]["fpr"], evaluation["roc"]["tpr"])
    markers = []
    for name, point in evaluation["operating_points"].items():
        if _finite(point.get("sensitivity")) and _finite(point.get("specificity")):
            markers.append(_Marker(1 - point["specificity"], point["sensitivity"], name))
    chart.markers(markers)
    low, high = evaluation["auroc_ci"]
    ci = f" ({low:.3f}–{high:.3f})" if _finite(low) and _finite(high) else ""
    chart.note(f"AUROC {evaluation['auroc']:.3f}{ci}")
    return chart.svg()


def froc_svg(evaluation: dict[str, Any], x_max: float = 4.0) -> str:
    """The FROC curve up to ``x_max`` false positives per image, with the sensitivity at 0.5, 1 and 2."""
    froc = evaluation["froc"]
    chart = _Chart("FROC", "false positives per image", "box sensitivity", x_max, x_ticks=4)
    xs = [x for x in froc["fp_per_image"] if x <= x_max]
    chart.line(xs, froc["sensitivity"][: len(xs)])
    chart.markers(
        [
            _Marker(float(rate), value, f"{value:.2f}")
            for rate, value in froc["at"].items()
            if _finite(value) and float(rate) <= x_max
        ]
    )
    chart.note(f"IoU ≥ {evaluation['box_recall_iou']:g}, {froc['n_boxes']} boxes")
    return chart.svg()


def calibration_svg(evaluation: dict[str, Any]) -> str:
    """The reliability diagram (observed fracture rate against mean predicted probability per bin)."""
    calibration = evaluation["calibration"]
    chart = _Chart("Calibration", "predicted probability", "observed fracture rate", 1.0)
    chart.line([0, 1], [0, 1], colour="#999", dashed=True)
    pairs = [
        (p, o)
        for p, o in zip(calibration["mean_predicted"], calibration["observed"], strict=True)
        if p is not None and o is not None
    ]
    if pairs:
        chart.line([p for p, _ in pairs], [o for _, o in pairs])
        chart.markers([_Marker(p, o, "") for p, o in pairs], colour=_LINE)
    chart.note(f"ECE {calibration['ece']:.3f}, Brier {calibration['brier']:.3f}")
    return chart.svg()
