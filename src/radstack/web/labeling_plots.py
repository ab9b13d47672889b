"""The labeling project page's plots, as inline SVG made on the server (:class:`radstack.charts.Chart`).

Each takes the figures of :mod:`radstack.labeling.report` and writes every value beside its bar, so
the plot reads without the table; an undefined figure shows as ``n/a`` at the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from radstack.charts import PALETTE, Chart
from radstack.labeling.report import HISTOGRAM_BINS, AgreementReport, Figure, LabelFigures

__all__ = ["agreement_svg", "iou_histogram_svg", "sensitivity_svg"]

#: Width of one category (a label, a reader) in a bar chart, and the narrowest chart.
_PER_CATEGORY = 120
_MIN_WIDTH = 400


def _width(categories: int) -> int:
    return max(_MIN_WIDTH, 72 + _PER_CATEGORY * categories)


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _grouped(chart: Chart, index: int, values: Sequence[float | None]) -> None:
    """Bars of ``values`` side by side in category ``index`` (one colour per series)."""
    slot = 0.8 / len(values)
    for i, value in enumerate(values):
        x0 = index + 0.1 + i * slot
        chart.bar(x0, x0 + slot * 0.9, value, _text(value), PALETTE[i % len(PALETTE)])


def agreement_svg(report: AgreementReport) -> str:
    """Cohen's and Fleiss' kappa and Krippendorff's alpha of each label, side by side."""
    labels = report.labels
    values = [
        figure.value
        for label in labels
        for figure in (label.cohen_kappa, label.fleiss_kappa, label.krippendorff_alpha)
        if figure.value is not None
    ]
    # Chance-corrected agreement can be negative: the axis goes down to the lowest value (by fifths).
    bottom = min([0.0, *values])
    y_min = -0.2 * int(-bottom / 0.2 + 0.999) if bottom < 0 else 0.0
    chart = Chart(
        "Agreement on presence, per label",
        "label",
        "coefficient",
        len(labels),
        1.0,
        y_min=max(-1.0, y_min),
        categories=[label.key for label in labels],
        width=_width(len(labels)),
    )
    names = ("Cohen's κ", "Fleiss' κ", "Krippendorff's α")
    chart.legend(list(zip(names, PALETTE, strict=False)))
    for index, label in enumerate(labels):
        _grouped(
            chart, index, [label.cohen_kappa.value, label.fleiss_kappa.value, label.krippendorff_alpha.value]
        )
    summary = "; ".join(
        f"{label.key}: "
        + ", ".join(
            f"{name} {_described(figure)}"
            for name, figure in zip(
                names, (label.cohen_kappa, label.fleiss_kappa, label.krippendorff_alpha), strict=True
            )
        )
        for label in labels
    )
    return chart.svg(f"Agreement per label. {summary}")


def _described(figure: Figure) -> str:
    return f"{_text(figure.value)} (n={figure.n})"


def sensitivity_svg(label: LabelFigures) -> str:
    """Each reader's sensitivity for ``label`` against the consensus, with its Wilson 95 % interval."""
    readers = label.readers
    chart = Chart(
        f"Sensitivity for {label.key} against the consensus",
        "reader",
        "sensitivity (whiskers: Wilson 95% CI)",
        len(readers),
        1.0,
        categories=[reader.reader for reader in readers],
        width=_width(len(readers)),
    )
    for index, reader in enumerate(readers):
        rate = reader.sensitivity
        text = _text(rate.value) if rate.value is None else f"{rate.value:.2f} ({rate.successes}/{rate.n})"
        chart.bar(index + 0.25, index + 0.75, rate.value, text)
        if rate.ci95 is not None:
            chart.whisker(index + 0.5, *rate.ci95)
    summary = "; ".join(
        f"{reader.reader}: {_text(reader.sensitivity.value)}"
        + (
            f", 95% CI {reader.sensitivity.ci95[0]:.2f}–{reader.sensitivity.ci95[1]:.2f}"
            if reader.sensitivity.ci95 is not None
            else ""
        )
        for reader in readers
    )
    return chart.svg(f"Sensitivity per reader for {label.key}. {summary}")


def iou_histogram_svg(label: LabelFigures, iou_threshold: float) -> str:
    """How well reader pairs' boxes of ``label`` overlap: pairs by IoU in tenths, τ as a line."""
    boxes = label.boxes
    assert boxes is not None
    counts = boxes.iou_histogram
    top = 5 * math.ceil(max([1, *counts]) / 5)  # whole ticks: 0, 1/5, … of a multiple of 5
    x_label = f"IoU of overlapping pairs ({boxes.unmatched} box(es) overlap none)"
    chart = Chart(f"Box IoU between readers: {label.key}", x_label, "box pairs", 1.0, float(top))
    for i, count in enumerate(counts):
        chart.bar(
            i / HISTOGRAM_BINS, (i + 1) / HISTOGRAM_BINS, float(count) if count else None, str(count or "")
        )
    chart.vertical(iou_threshold, f"τ = {iou_threshold:g}")
    edges = ", ".join(
        f"{i / HISTOGRAM_BINS:.1f}–{(i + 1) / HISTOGRAM_BINS:.1f}: {n}" for i, n in enumerate(counts)
    )
    return chart.svg(f"Box IoU histogram for {label.key}: {edges}; {boxes.unmatched} unmatched boxes")
