"""The model card: its text, the metrics JSON it shows, and the ROC, FROC and calibration plots as SVG.

A version's metrics are one JSON object, as :func:`radstack.ai.evaluate.evaluate` writes it
(``Evaluation.to_dict()``). Every field is optional; a field that is present must have this shape
(numbers may be ``null`` where a value is undefined, e.g. an empty calibration bin)::

    {
      "n_images": 2000, "n_fracture": 1000, "n_normal": 1000,
      "auroc": 0.97, "auroc_ci": [0.96, 0.98],
      "roc": {"fpr": [0, ..., 1], "tpr": [0, ..., 1], "thresholds": [null, ...]},
      "operating_points": {
        "suspicious": {"threshold": 0.2, "sensitivity": 0.95, "sensitivity_ci": [lo, hi],
                       "specificity": 0.88, "specificity_ci": [lo, hi], "box_recall": 0.93},
        "definite": {...}
      },
      "box_recall_iou": 0.3,
      "froc": {"fp_per_image": [0, ...], "sensitivity": [0, ...], "thresholds": [...],
               "at": {"0.5": 0.85, "1": 0.9, "2": 0.93}, "n_boxes": 1200, "n_images": 2000},
      "calibration": {"bin_edges": [0, 0.1, ..., 1], "counts": [...], "mean_predicted": [...],
                      "observed": [...], "ece": 0.03, "brier": 0.05},
      "per_type": {"transverse": {"n": 120, "auroc": 0.98,
                                  "suspicious": {"sensitivity": 0.97, "sensitivity_ci": [lo, hi],
                                                 "box_recall": 0.95},
                                  "definite": {...}}, ...}
    }

``roc.fpr``/``roc.tpr`` (and ``froc.fp_per_image``/``froc.sensitivity``) are lists of equal length;
the calibration lists have one entry per bin and ``bin_edges`` one more. Other fields are kept and
shown as they are. The plots are drawn here as inline SVG (no plotting library, nothing fetched):
:func:`roc_svg`, :func:`froc_svg`, :func:`calibration_svg`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from radstack.errors import BadRequest

__all__ = ["ModelCard", "calibration_svg", "check_metrics", "froc_svg", "roc_svg"]

#: Largest metrics document accepted (its JSON text).
METRICS_MAX_BYTES = 4 * 1024 * 1024
#: Longest text of one model card field.
CARD_FIELD_MAX = 20_000
#: Most points a plotted curve keeps (evenly spaced, ends included).
PLOT_POINTS = 400


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What a model is for and what it is not (the text of a model card; the metrics come with the version)."""

    intended_use: str = ""
    training_data: str = ""
    limitations: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "intended_use": self.intended_use,
            "training_data": self.training_data,
            "limitations": self.limitations,
        }

    @classmethod
    def from_json(cls, document: Any, where: str = "card") -> ModelCard:
        """The card in a JSON object with the three text fields (each optional).

        Raises
        ------
        BadRequest
            Not an object, an unknown field, or a field that is not text.
        """
        if document is None:
            return cls()
        if not isinstance(document, Mapping):
            raise BadRequest(f"{where} must be a JSON object with intended_use, training_data, limitations")
        unknown = set(document) - {"intended_use", "training_data", "limitations"}
        if unknown:
            raise BadRequest(
                f"{where} has unknown fields {sorted(unknown)}; accepted: intended_use, training_data, limitations"
            )
        values = {}
        for key in ("intended_use", "training_data", "limitations"):
            value = document.get(key, "")
            if not isinstance(value, str):
                raise BadRequest(f"{where}.{key} must be text, not {type(value).__name__}")
            if len(value) > CARD_FIELD_MAX:
                raise BadRequest(f"{where}.{key} is {len(value)} characters; at most {CARD_FIELD_MAX}")
            values[key] = value.strip()
        return cls(**values)


# ----------------------------------------------------------------------------- metrics validation
def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _numbers(document: Mapping[str, Any], key: str, where: str) -> list[float | None]:
    value = document.get(key)
    if not isinstance(value, list) or not all(_number(v) for v in value):
        raise BadRequest(f"{where}.{key} must be a list of numbers (or null), not {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _curve(document: Any, where: str, x: str, y: str) -> None:
    if not isinstance(document, Mapping):
        raise BadRequest(f"{where} must be an object with {x} and {y}")
    xs, ys = _numbers(document, x, where), _numbers(document, y, where)
    if len(xs) != len(ys):
        raise BadRequest(f"{where}.{x} and {where}.{y} must have the same length ({len(xs)} and {len(ys)})")


def check_metrics(document: Any, where: str = "metrics") -> dict[str, Any]:
    """``document`` itself once it has the shape of the module docstring.

    Raises
    ------
    BadRequest
        Not a JSON object, too large, or a plotted field of another shape (the message names it).
    """
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise BadRequest(
            f"{where} must be a JSON object (see radstack.ai.card), not {type(document).__name__}"
        )
    try:
        size = len(json.dumps(document, allow_nan=False))
    except ValueError:
        raise BadRequest(f"{where} holds NaN or infinity; write null for an undefined value") from None
    if size > METRICS_MAX_BYTES:
        raise BadRequest(f"{where} is {size} bytes of JSON; at most {METRICS_MAX_BYTES}")
    for key in ("auroc", "n_images", "n_fracture", "n_normal", "box_recall_iou"):
        if key in document and not _number(document[key]):
            raise BadRequest(f"{where}.{key} must be a number, not {_short(document[key])}")
    if "auroc_ci" in document:
        ci = document["auroc_ci"]
        if not isinstance(ci, list) or len(ci) != 2 or not all(_number(v) for v in ci):
            raise BadRequest(f"{where}.auroc_ci must be [low, high], not {_short(ci)}")
    if "roc" in document:
        _curve(document["roc"], f"{where}.roc", "fpr", "tpr")
    if "froc" in document:
        _curve(document["froc"], f"{where}.froc", "fp_per_image", "sensitivity")
        at = document["froc"].get("at", {})
        if not isinstance(at, Mapping) or not all(_number(v) for v in at.values()):
            raise BadRequest(f"{where}.froc.at must map a false-positive rate to a sensitivity")
    if "calibration" in document:
        calibration = document["calibration"]
        at = f"{where}.calibration"
        if not isinstance(calibration, Mapping):
            raise BadRequest(f"{at} must be an object with bin_edges, counts, mean_predicted, observed")
        lengths = {
            key: len(_numbers(calibration, key, at)) for key in ("counts", "mean_predicted", "observed")
        }
        if len(set(lengths.values())) != 1:
            raise BadRequest(
                f"{at}: counts, mean_predicted and observed must have one entry per bin: {lengths}"
            )
        if "bin_edges" in calibration:
            edges = _numbers(calibration, "bin_edges", at)
            if len(edges) != lengths["counts"] + 1:
                raise BadRequest(
                    f"{at}.bin_edges must have one more entry than the bins ({len(edges)} edges)"
                )
    for key in ("operating_points", "per_type"):
        if key in document and not isinstance(document[key], Mapping):
            raise BadRequest(f"{where}.{key} must be an object of name → metrics")
    for name, point in (document.get("operating_points") or {}).items():
        if not isinstance(point, Mapping):
            raise BadRequest(f"{where}.operating_points.{name} must be an object of metrics")
    return document


# ----------------------------------------------------------------------------- SVG plots
_W, _H = 320, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 30, 44


@dataclass(frozen=True, slots=True)
class _Axes:
    x_max: float
    y_max: float = 1.0

    def x(self, value: float) -> float:
        return _LEFT + (_W - _LEFT - _RIGHT) * min(max(value / self.x_max, 0.0), 1.0)

    def y(self, value: float) -> float:
        return _H - _BOTTOM - (_H - _TOP - _BOTTOM) * min(max(value / self.y_max, 0.0), 1.0)


def _f(value: float) -> str:
    return f"{value:.1f}"


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= PLOT_POINTS:
        return points
    step = (len(points) - 1) / (PLOT_POINTS - 1)
    return [points[round(i * step)] for i in range(PLOT_POINTS)]


def _pairs(xs: Sequence[Any], ys: Sequence[Any]) -> list[tuple[float, float]]:
    return [
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=False)
        if _number(x)
        and _number(y)
        and x is not None
        and y is not None
        and math.isfinite(x)
        and math.isfinite(y)
    ]


def _frame(kind: str, title: str, description: str, axes: _Axes, x_label: str, y_label: str) -> list[str]:
    ident = f"plot-{kind}"
    parts = [
        f'<svg class="plot" data-plot="{kind}" role="img" aria-labelledby="{ident}-title {ident}-desc" '
        f'viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(description)}</desc>',
        f'<text x="{_W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold" '
        f'fill="currentColor">{escape(title)}</text>',
    ]
    x0, x1, y0, y1 = axes.x(0), axes.x(axes.x_max), axes.y(0), axes.y(axes.y_max)
    for i in range(5):
        fx, fy = axes.x_max * i / 4, axes.y_max * i / 4
        parts.append(
            f'<line x1="{_f(axes.x(fx))}" y1="{_f(y0)}" x2="{_f(axes.x(fx))}" y2="{_f(y1)}" '
            'stroke="currentColor" stroke-opacity="0.12"/>'
        )
        parts.append(
            f'<line x1="{_f(x0)}" y1="{_f(axes.y(fy))}" x2="{_f(x1)}" y2="{_f(axes.y(fy))}" '
            'stroke="currentColor" stroke-opacity="0.12"/>'
        )
        parts.append(
            f'<text x="{_f(axes.x(fx))}" y="{_f(y0 + 14)}" text-anchor="middle" font-size="10" '
            f'fill="currentColor">{fx:g}</text>'
        )
        parts.append(
            f'<text x="{_f(x0 - 4)}" y="{_f(axes.y(fy) + 3)}" text-anchor="end" font-size="10" '
            f'fill="currentColor">{fy:g}</text>'
        )
    parts.append(
        f'<polyline points="{_f(x0)},{_f(y1)} {_f(x0)},{_f(y0)} {_f(x1)},{_f(y0)}" fill="none" '
        'stroke="currentColor"/>'
    )
    parts.append(
        f'<text x="{_f((x0 + x1) / 2)}" y="{_H - 8}" text-anchor="middle" font-size="11" '
        f'fill="currentColor">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{_f((y0 + y1) / 2)}" text-anchor="middle" font-size="11" fill="currentColor" '
        f'transform="rotate(-90 12 {_f((y0 + y1) / 2)})">{escape(y_label)}</text>'
    )
    return parts


def _polyline(axes: _Axes, points: list[tuple[float, float]], colour: str, *, dashed: bool = False) -> str:
    coords = " ".join(f"{_f(axes.x(x))},{_f(axes.y(y))}" for x, y in _thin(points))
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="{1 if dashed else 2}"{dash}/>'


def _marker(axes: _Axes, x: float, y: float, label: str) -> str:
    return (
        f'<circle cx="{_f(axes.x(x))}" cy="{_f(axes.y(y))}" r="4" fill="#e07b00"><title>{escape(label)}</title>'
        f'</circle><text x="{_f(axes.x(x) + 6)}" y="{_f(axes.y(y) + 12)}" font-size="10" '
        f'fill="currentColor">{escape(label.split(":")[0])}</text>'
    )


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _number(value) and value is not None else "n/a"


def roc_svg(metrics: Mapping[str, Any]) -> str | None:
    """The ROC curve (TPR against FPR) with the chance line and the operating points; None without one."""
    roc = metrics.get("roc")
    if not isinstance(roc, Mapping):
        return None
    points = _pairs(roc.get("fpr", []), roc.get("tpr", []))
    if not points:
        return None
    auroc, ci = metrics.get("auroc"), metrics.get("auroc_ci") or [None, None]
    title = f"ROC: AUROC {_fmt(auroc)}" + (
        f" (95% CI {_fmt(ci[0])}–{_fmt(ci[1])})" if ci[0] is not None else ""
    )
    axes = _Axes(1.0)
    parts = _frame(
        "roc",
        title,
        f"Receiver operating characteristic over {metrics.get('n_images', 'the')} images: true-positive "
        "rate against false-positive rate; the dashed diagonal is chance.",
        axes,
        "False-positive rate (1 − specificity)",
        "True-positive rate (sensitivity)",
    )
    parts.append(_polyline(axes, [(0, 0), (1, 1)], "currentColor", dashed=True))
    parts.append(_polyline(axes, points, "#1f5fbf"))
    for name, point in (metrics.get("operating_points") or {}).items():
        if isinstance(point, Mapping):
            sens, spec = point.get("sensitivity"), point.get("specificity")
            if _number(sens) and _number(spec) and sens is not None and spec is not None:
                parts.append(
                    _marker(
                        axes, 1 - spec, sens, f"{name}: sensitivity {_fmt(sens)}, specificity {_fmt(spec)}"
                    )
                )
    parts.append("</svg>")
    return "".join(parts)


def froc_svg(metrics: Mapping[str, Any]) -> str | None:
    """The FROC curve (box sensitivity against false positives per image), read at its rates; None
    without one."""
    froc = metrics.get("froc")
    if not isinstance(froc, Mapping):
        return None
    points = _pairs(froc.get("fp_per_image", []), froc.get("sensitivity", []))
    if not points:
        return None
    at = {k: v for k, v in (froc.get("at") or {}).items() if _number(v) and v is not None}
    rates = []
    for key in at:
        try:
            rates.append(float(key))
        except ValueError:
            continue
    # A little past the largest reported rate (FROC is read at a few FP per image), in steps of 4 so
    # the five ticks fall on round numbers.
    x_max = 4.0 * math.ceil(max([*rates, 1.0]) * 1.5 / 4)
    axes = _Axes(x_max)
    summary = ", ".join(f"{_fmt(v, 2)} at {k} FP/image" for k, v in at.items())
    parts = _frame(
        "froc",
        "FROC" + (f": {summary}" if len(summary) < 48 else ""),
        f"Free-response ROC over {froc.get('n_boxes', 'the')} fracture boxes: the share of boxes found "
        f"against false-positive boxes per image. {summary}",
        axes,
        "False positives per image",
        "Box sensitivity",
    )
    parts.append(_polyline(axes, [p for p in points if p[0] <= x_max] or points[:1], "#1f5fbf"))
    for key, value in at.items():
        try:
            rate = float(key)
        except ValueError:
            continue
        parts.append(_marker(axes, rate, float(value), f"{key}: sensitivity {_fmt(value)} at {key} FP/image"))
    parts.append("</svg>")
    return "".join(parts)


def calibration_svg(metrics: Mapping[str, Any]) -> str | None:
    """The reliability diagram (observed fracture rate against mean predicted probability per bin)
    with the diagonal of perfect calibration; None without one."""
    calibration = metrics.get("calibration")
    if not isinstance(calibration, Mapping):
        return None
    points = _pairs(calibration.get("mean_predicted", []), calibration.get("observed", []))
    if not points:
        return None
    ece = calibration.get("ece")
    axes = _Axes(1.0)
    parts = _frame(
        "calibration",
        "Calibration" + (f": ECE {_fmt(ece)}" if _number(ece) and ece is not None else ""),
        "Reliability diagram: per probability bin, the observed share of fractures against the mean "
        "predicted probability; the dashed diagonal is perfect calibration.",
        axes,
        "Mean predicted probability",
        "Observed fracture rate",
    )
    parts.append(_polyline(axes, [(0, 0), (1, 1)], "currentColor", dashed=True))
    parts.append(_polyline(axes, points, "#1f5fbf"))
    counts = calibration.get("counts") or []
    observed = [
        (x, y)
        for x, y in zip(calibration.get("mean_predicted", []), calibration.get("observed", []), strict=False)
    ]
    for index, (x, y) in enumerate(observed):
        if x is None or y is None:
            continue
        n = counts[index] if index < len(counts) else "?"
        parts.append(
            f'<circle cx="{_f(axes.x(float(x)))}" cy="{_f(axes.y(float(y)))}" r="3" fill="#1f5fbf">'
            f"<title>predicted {_fmt(x, 2)}, observed {_fmt(y, 2)}, {n} images</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
