"""Small self-contained SVG charts: lines, markers, bars with whiskers (no plotting library).

Hand-written SVG instead of matplotlib: a few charts do not justify a plotting stack on every node,
and the output is text that a page can inline (no external assets) and a test can read. The same
input gives byte-identical output. The model card (:mod:`radstack.ai.plots`) and the labeling
project page (:mod:`radstack.web.labeling_data`) draw with it; it imports nothing of radstack, so
every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

__all__ = ["ACCENT", "LINE", "PALETTE", "Chart", "Marker"]

_WIDTH, _HEIGHT = 400, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 34, 46
LINE = "#1f5fa8"
ACCENT = "#c0392b"
_GRID = "#e3e3e3"
#: Colours of the series of a grouped bar chart, in order.
PALETTE = (LINE, "#e07b00", "#3a7d44", ACCENT, "#7d3c98")
#: Longest category name written under its bars (longer ones are cut, with an ellipsis).
_CATEGORY_CHARS = 16


@dataclass(frozen=True, slots=True)
class Marker:
    """A point drawn as a dot with a label beside it."""

    x: float
    y: float
    label: str


class Chart:
    """A linear x/y chart with a frame, grid, ticks, axis labels and a title.

    Parameters
    ----------
    title, x_label, y_label
        Text of the title and the axes.
    x_max, y_max
        The axes run from 0 (``y_min``) to these.
    x_ticks
        Numeric ticks on the x axis (ignored with ``categories``).
    y_min
        The bottom of the y axis (below 0 for figures that can be negative, such as a kappa).
    categories
        Names of the x axis' categories: category ``i`` spans ``[i, i + 1)`` (``x_max`` is their
        number), its name is written under its middle.
    width
        Of the whole chart, in pixels (a chart of many categories needs more).
    """

    def __init__(
        self,
        title: str,
        x_label: str,
        y_label: str,
        x_max: float,
        y_max: float = 1.0,
        x_ticks: int = 5,
        *,
        y_min: float = 0.0,
        categories: Sequence[str] | None = None,
        width: int = _WIDTH,
    ) -> None:
        self.width = width
        self.x_max, self.y_max, self.y_min = x_max, y_max, y_min
        self.parts: list[str] = []
        w, h = self.width - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
        self.parts.append(
            f'<rect x="{_LEFT}" y="{_TOP}" width="{w}" height="{h}" fill="#fff" stroke="#444"/>'
        )
        if categories is None:
            for i in range(x_ticks + 1):
                value = x_max * i / x_ticks
                x, _ = self.point(value, 0)
                self.parts.append(
                    f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_TOP + h}" stroke="{_GRID}"/>'
                    f'<text x="{x:.1f}" y="{_TOP + h + 16}" text-anchor="middle">{value:g}</text>'
                )
        else:
            for i, name in enumerate(categories):
                x, _ = self.point(i + 0.5, 0)
                shown = name if len(name) <= _CATEGORY_CHARS else name[: _CATEGORY_CHARS - 1] + "…"
                self.parts.append(
                    f'<text x="{x:.1f}" y="{_TOP + h + 16}" text-anchor="middle">{escape(shown)}</text>'
                )
        step = _tick_step(y_max - y_min)
        for i in range(math.floor((y_max - y_min) / step + 1e-9) + 1):
            value = round(y_min + step * i, 10)
            _, y = self.point(0, value)
            self.parts.append(
                f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + w}" y2="{y:.1f}" stroke="{_GRID}"/>'
                f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>'
            )
        self.parts.append(
            f'<text x="{self.width / 2:.0f}" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
            f'<text x="{_LEFT + w / 2:.0f}" y="{_HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>'
            f'<text x="14" y="{_TOP + h / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {_TOP + h / 2:.0f})">{escape(y_label)}</text>'
        )

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Where data point ``(x, y)`` lies in the SVG (clamped to the axes)."""
        w, h = self.width - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
        x = min(max(x, 0.0), self.x_max)
        y = min(max(y, self.y_min), self.y_max)
        return _LEFT + w * x / self.x_max, _TOP + h * (1 - (y - self.y_min) / (self.y_max - self.y_min))

    def line(
        self, xs: Sequence[float], ys: Sequence[float], colour: str = LINE, dashed: bool = False
    ) -> None:
        """A polyline through the points."""
        points = " ".join(
            f"{px:.1f},{py:.1f}" for px, py in (self.point(x, y) for x, y in zip(xs, ys, strict=True))
        )
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        self.parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{1 if dashed else 2}"{dash}/>'
        )

    def markers(self, markers: Sequence[Marker], colour: str = ACCENT) -> None:
        """Dots with their labels."""
        for marker in markers:
            x, y = self.point(marker.x, marker.y)
            self.parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>'
                f'<text x="{x + 7:.1f}" y="{y + 12:.1f}" fill="{colour}">{escape(marker.label)}</text>'
            )

    def bar(self, x0: float, x1: float, value: float | None, label: str, colour: str = LINE) -> None:
        """A bar from 0 (the axis' bottom, when it is above 0) to ``value`` over ``[x0, x1)``, with
        ``label`` written above it (below a negative one); with ``value`` None, only ``label`` at the
        baseline (a figure that is undefined)."""
        base = min(max(0.0, self.y_min), self.y_max)
        left, base_y = self.point(x0, base)
        right, _ = self.point(x1, base)
        middle = (left + right) / 2
        if value is None:
            self.parts.append(
                f'<text x="{middle:.1f}" y="{base_y - 4:.1f}" text-anchor="middle" fill="#666">'
                f"{escape(label)}</text>"
            )
            return
        _, top = self.point(x0, value)
        y, height = min(top, base_y), abs(base_y - top)
        text_y, fill = (top - 4, "") if value >= base else (top + 12, "")
        if text_y < _TOP + 2:  # above the frame it would run into the legend: inside the bar's top
            text_y, fill = top + 12, ' fill="#fff"'
        self.parts.append(
            f'<rect x="{left:.1f}" y="{y:.1f}" width="{right - left:.1f}" height="{height:.1f}" '
            f'fill="{colour}"><title>{escape(label)}</title></rect>'
            f'<text x="{middle:.1f}" y="{text_y:.1f}" text-anchor="middle"{fill}>{escape(label)}</text>'
        )

    def whisker(self, x: float, low: float, high: float, colour: str = "#222") -> None:
        """A vertical interval ``[low, high]`` at ``x`` with caps (a confidence interval)."""
        px, y_low = self.point(x, low)
        _, y_high = self.point(x, high)
        self.parts.append(
            f'<path d="M{px:.1f},{y_low:.1f}V{y_high:.1f}M{px - 5:.1f},{y_low:.1f}H{px + 5:.1f}'
            f'M{px - 5:.1f},{y_high:.1f}H{px + 5:.1f}" stroke="{colour}" fill="none" stroke-width="1.5"/>'
        )

    def vertical(self, x: float, label: str, colour: str = ACCENT) -> None:
        """A dashed vertical line across the chart at ``x`` (a threshold), labelled at its top."""
        px, bottom = self.point(x, self.y_min)
        _, top = self.point(x, self.y_max)
        self.parts.append(
            f'<line x1="{px:.1f}" y1="{top:.1f}" x2="{px:.1f}" y2="{bottom:.1f}" stroke="{colour}" '
            f'stroke-dasharray="4 3"/><text x="{px + 4:.1f}" y="{top + 12:.1f}" fill="{colour}">'
            f"{escape(label)}</text>"
        )

    def legend(self, entries: Sequence[tuple[str, str]]) -> None:
        """``(name, colour)`` swatches in a row under the title."""
        x = float(_LEFT)
        for name, colour in entries:
            self.parts.append(
                f'<rect x="{x:.1f}" y="{_TOP - 11}" width="9" height="9" fill="{colour}"/>'
                f'<text x="{x + 12:.1f}" y="{_TOP - 3}">{escape(name)}</text>'
            )
            x += 24 + 6.5 * len(name)

    def note(self, text: str) -> None:
        """A line of text in the bottom right corner of the plot area."""
        x, y = self.point(self.x_max, self.y_min)
        self.parts.append(f'<text x="{x - 6:.1f}" y="{y - 8:.1f}" text-anchor="end">{escape(text)}</text>')

    def svg(self, label: str | None = None) -> str:
        """The SVG document; ``label`` (a sentence saying what it shows) becomes its accessible name."""
        body = "".join(self.parts)
        accessible = ""
        if label is not None:
            accessible = f' role="img" aria-label="{escape(label, {chr(34): "&quot;"})}"'
            body = f"<title>{escape(label)}</title>{body}"
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{_HEIGHT}" '
            f'viewBox="0 0 {self.width} {_HEIGHT}" font-family="sans-serif" font-size="11"{accessible}>'
            f"{body}</svg>\n"
        )


def _tick_step(span: float) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving at most 6 intervals over ``span``."""
    if span <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(span / 6))
    return next(power * m for m in (1, 2, 2.5, 5, 10) if span / (power * m) <= 6 + 1e-9)
