"""Fracture and look-alike geometry on a tube's local frame (``s`` along the axis, ``d`` across it).

A fracture splits a bone into fragments (:class:`~radstack.ai._radiograph.Fragment`): each keeps the
bone on its side of a fracture line, less half the gap, and may move (displacement, angulation,
overlap). The lucent gap, a cortical step, the bright band of overlapping fragments: all follow from
rendering the fragments, never from painting a line on top, so nothing but the bone's own edges marks
a fracture. Incomplete and hairline fractures, torus (buckle) fractures, and the normal findings that
look like fractures (growth plates, nutrient canals, growth-arrest lines) are modifiers of the
bone's attenuation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from radstack.ai._plan import FractureType
from radstack.ai._radiograph import F32, IDENTITY, Fragment, Mask, Rigid, Tube, smooth_step

F64 = NDArray[np.float64]

#: Width (pixels) over which a fragment's edge goes from bone to no bone.
EDGE = 0.9


@dataclass(frozen=True, eq=False)
class Wiggle:
    """A random-walk profile along ``d`` (pixels): a fracture's irregular edge, or how deep a line is
    along its course. Sampled every ``step`` pixels from ``start``; linear between samples."""

    start: float
    step: float
    values: F64

    def __call__(self, d: F32) -> F32:
        grid = self.start + self.step * np.arange(len(self.values))
        out: F32 = np.interp(d, grid, self.values).astype(np.float32)
        return out


def random_wiggle(rng: np.random.Generator, amplitude: float, scale: float, reach: float) -> Wiggle:
    """An irregular edge over ``|d| ≤ reach``: a detrended random walk with a few sharp steps (bone
    breaks along its lamellae), ``amplitude`` pixels from its mean line, features ~``scale`` apart."""
    step = max(1.0, scale / 3)
    n = int(2 * reach / step) + 3
    steps = rng.standard_normal(n) + (rng.random(n) < 0.12) * rng.normal(0, 3, n)
    walk = np.cumsum(steps)
    x = np.arange(n, dtype=np.float64)
    walk -= np.polyval(np.polyfit(x, walk, 1), x)
    spread = float(np.abs(walk).max()) or 1.0
    return Wiggle(-reach - step, step, walk * (amplitude / spread))


@dataclass(frozen=True)
class Line:
    """A fracture line ``s = s0 + slope·d + wiggle(d)``; a spiral adds ``k·asin(d/r)`` (its front turn)
    or ``k·(π - asin(d/r))`` (its back turn): a helix on the bone's surface seen from the side."""

    s0: float
    slope: float = 0.0
    wiggle: Wiggle | None = None
    spiral_k: float = 0.0
    spiral_r: float = 1.0
    back: bool = False

    def at(self, d: F32) -> F32:
        s: F32 = d * np.float32(self.slope) + np.float32(self.s0)
        if self.wiggle is not None:
            s += self.wiggle(d)
        if self.spiral_k:
            turn = np.arcsin(np.clip(d * np.float32(1.0 / self.spiral_r), -1.0, 1.0))
            s += np.float32(self.spiral_k) * ((np.float32(math.pi) - turn) if self.back else turn)
        return s

    def points(self, radius: float, n: int = 48) -> tuple[F64, F64]:
        """``(s, d)`` along the line across ``|d| ≤ radius``."""
        d = np.linspace(-radius, radius, n).astype(np.float32)
        return self.at(d).astype(np.float64), d.astype(np.float64)

    def span(self, radius: float) -> tuple[float, float]:
        s, _ = self.points(radius, 96)
        return float(s.min()), float(s.max())


def sine_wave(
    rng: np.random.Generator, amplitude: float, scale: float
) -> tuple[tuple[float, float, float], ...]:
    """A gentle undulation (a growth plate's): three sines, ``amplitude`` pixels, wavelengths ~``scale``."""
    weights = rng.dirichlet([2.0, 2.0, 2.0])
    return tuple(
        (float(amplitude * w), float(scale * rng.uniform(0.4, 2.5)), float(rng.uniform(0, 2 * math.pi)))
        for w in weights
    )


# --- fragments ---------------------------------------------------------------------------------------


def _before(line: Line, gap: float) -> Mask:
    half = np.float32(gap / 2)

    def mask(s: F32, d: F32) -> F32:
        return smooth_step(line.at(d) - s - half, EDGE)

    return mask


def _after(line: Line, gap: float) -> Mask:
    half = np.float32(gap / 2)

    def mask(s: F32, d: F32) -> F32:
        return smooth_step(s - line.at(d) - half, EDGE)

    return mask


@dataclass(frozen=True)
class Triangle:
    """A wedge (butterfly) fragment's outline, corners ``(s, d)``."""

    corners: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]

    def inside(self, s: F32, d: F32, grow: float) -> F32:
        """Soft membership; ``grow`` pixels larger (negative: smaller) than the outline."""
        out: F32 | None = None
        (s1, d1), (s2, d2), (s3, d3) = self.corners
        area = (s2 - s1) * (d3 - d1) - (d2 - d1) * (s3 - s1)
        sign = 1.0 if area > 0 else -1.0
        for (sa, da), (sb, db) in (((s1, d1), (s2, d2)), ((s2, d2), (s3, d3)), ((s3, d3), (s1, d1))):
            length = math.hypot(sb - sa, db - da) or 1.0
            # signed distance to the edge, positive inside
            ns, nd = sign * -(db - da) / length, sign * (sb - sa) / length
            dist = (s - np.float32(sa)) * np.float32(ns) + (d - np.float32(da)) * np.float32(nd)
            dist += np.float32(grow)
            edge = smooth_step(dist, EDGE)
            out = edge if out is None else out * edge
        assert out is not None
        return out

    def span(self) -> tuple[float, float]:
        values = [c[0] for c in self.corners]
        return min(values), max(values)


@dataclass(frozen=True)
class Break:
    """A complete fracture: fragments to render and points that the truth box must cover."""

    fragments: tuple[Fragment, ...]
    outline: tuple[tuple[F64, F64, Rigid], ...]  # (s, d, motion) of the fracture lines


def simple_break(line: Line, gap: float, radius: float, motion: Rigid) -> Break:
    """Two fragments either side of ``line`` (transverse, oblique)."""
    lo, hi = line.span(radius * 1.2)
    margin = gap + 2 * EDGE + 1
    active = (lo - margin, hi + margin)
    near = _before(line, gap), _after(line, gap)
    fragments = (
        Fragment(IDENTITY, near[0], (-math.inf, hi + margin), active),
        Fragment(motion, near[1], (lo - margin, math.inf), active),
    )
    s, d = line.points(1.6 * radius, 96)  # the bone may widen along the line
    return Break(fragments, ((s - gap / 2, d, IDENTITY), (s + gap / 2, d, motion)))


def spiral_break(front: Line, back: Line, gap: float, radius: float, motion: Rigid) -> Break:
    """A spiral: each ray crosses the front and the back turn of the helix, so the fragment a ray
    passes through changes at both curves; between them it crosses half of each."""
    lo = min(front.span(radius)[0], back.span(radius)[0])
    hi = max(front.span(radius)[1], back.span(radius)[1])
    margin = gap + 2 * EDGE + 1
    active = (lo - margin, hi + margin)
    bf, af, bb, ab = _before(front, gap), _after(front, gap), _before(back, gap), _after(back, gap)

    def first(s: F32, d: F32) -> F32:
        out: F32 = bf(s, d) + bb(s, d)
        out *= np.float32(0.5)
        return out

    def second(s: F32, d: F32) -> F32:
        out: F32 = af(s, d) + ab(s, d)
        out *= np.float32(0.5)
        return out

    fragments = (
        Fragment(IDENTITY, first, (-math.inf, hi + margin), active),
        Fragment(motion, second, (lo - margin, math.inf), active),
    )
    outline = []
    for line in (front, back):
        s, d = line.points(1.6 * radius, 96)
        outline += [(s - gap / 2, d, IDENTITY), (s + gap / 2, d, motion)]
    return Break(fragments, tuple(outline))


def comminuted_break(
    line: Line, wedge: Triangle, gap: float, radius: float, motion: Rigid, wedge_motion: Rigid
) -> Break:
    """A main line and a butterfly wedge on one side: three fragments."""
    lo, hi = line.span(radius * 1.2)
    w_lo, w_hi = wedge.span()
    lo, hi = min(lo, w_lo), max(hi, w_hi)
    margin = gap + 2 * EDGE + 1
    active = (lo - margin, hi + margin)
    before, after = _before(line, gap), _after(line, gap)
    half = gap / 2

    def first(s: F32, d: F32) -> F32:
        out: F32 = before(s, d)
        out *= np.float32(1.0) - wedge.inside(s, d, half)
        return out

    def second(s: F32, d: F32) -> F32:
        out: F32 = after(s, d)
        out *= np.float32(1.0) - wedge.inside(s, d, half)
        return out

    def third(s: F32, d: F32) -> F32:
        return wedge.inside(s, d, -half)

    fragments = (
        Fragment(IDENTITY, first, (-math.inf, hi + margin), active),
        Fragment(motion, second, (lo - margin, math.inf), active),
        Fragment(wedge_motion, third, (w_lo - margin, w_hi + margin), (w_lo - margin, w_hi + margin)),
    )
    s, d = line.points(1.6 * radius, 96)
    corners = np.array((*wedge.corners, wedge.corners[0]), dtype=np.float64)
    ws = np.concatenate([np.linspace(a, b, 12) for a, b in zip(corners[:-1, 0], corners[1:, 0], strict=True)])
    wd = np.concatenate([np.linspace(a, b, 12) for a, b in zip(corners[:-1, 1], corners[1:, 1], strict=True)])
    return Break(fragments, ((s - half, d, IDENTITY), (s + half, d, motion), (ws, wd, wedge_motion)))


# --- modifiers of a tube -----------------------------------------------------------------------------


@dataclass
class Lucency:
    """A thin lucent line through bone (a non-displaced or hairline fracture, a nutrient canal) over
    ``d ∈ [d_lo, d_hi]``, ``width`` pixels wide, removing up to ``depth`` of the bone on its path
    (``fade`` varies that along the line: the plane of a real crack is not everywhere in the beam);
    thinner than a pixel, it removes proportionally less."""

    line: Line
    width: float
    depth: float
    d_lo: float
    d_hi: float
    fade: Wiggle | None = None
    s_lo: float = 0.0
    s_hi: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.line.span(max(abs(self.d_lo), abs(self.d_hi)) + 1)
        self.s_lo, self.s_hi = lo - self.width - 2, hi + self.width + 2

    def apply(self, value: F32, s: F32, d: F32, tube: Tube) -> F32:
        half = max(self.width, 1.0)
        depth = self.depth * min(1.0, self.width / half)
        across = np.abs(s - self.line.at(d))
        across *= np.float32(-1.0 / half)
        across += np.float32(1.0)
        np.maximum(across, 0.0, out=across)
        across *= smooth_step(d - np.float32(self.d_lo), 1.5) * smooth_step(np.float32(self.d_hi) - d, 1.5)
        if self.fade is not None:
            across *= self.fade(d)
        across *= np.float32(-depth)
        across += np.float32(1.0)
        value *= across
        return value


def random_fade(rng: np.random.Generator, reach: float, scale: float, floor: float) -> Wiggle:
    """How deep a crack is along its course: between ``floor`` and 1, changing over ~``scale`` pixels."""
    wiggle = random_wiggle(rng, 1.0, scale, reach)
    values = (wiggle.values - wiggle.values.min()) / (np.ptp(wiggle.values) or 1.0)
    return Wiggle(wiggle.start, wiggle.step, floor + (1 - floor) * values)


@dataclass
class Band:
    """A band across the bone at ``s = centre + wave(d)``: ``gain`` < 0 a lucent growth plate,
    > 0 a dense line (zone of provisional calcification, growth-arrest line, impaction)."""

    centre: float
    width: float
    gain: float
    wave: tuple[tuple[float, float, float], ...] = ()
    s_lo: float = 0.0
    s_hi: float = 0.0

    def __post_init__(self) -> None:
        reach = sum(abs(a) for a, _, _ in self.wave) + 3 * self.width + 2
        self.s_lo, self.s_hi = self.centre - reach, self.centre + reach

    def apply(self, value: F32, s: F32, d: F32, tube: Tube) -> F32:
        offset = s - np.float32(self.centre)
        for amplitude, wavelength, phase in self.wave:
            offset -= np.float32(amplitude) * np.sin(
                d * np.float32(2 * math.pi / wavelength) + np.float32(phase)
            )
        offset *= np.float32(1.0 / self.width)
        offset *= offset
        np.negative(offset, out=offset)
        np.exp(offset, out=offset)
        offset *= np.float32(self.gain)
        offset += np.float32(1.0)
        value *= offset
        return value


@dataclass
class Buckle:
    """A torus fracture: the cortex bulges outward over a short length on one or both sides
    (``sides``: +1, -1 or 0 for both), with a faint dense band of compressed trabeculae."""

    centre: float
    length: float
    height: float
    sides: int
    density: float
    s_lo: float = 0.0
    s_hi: float = 0.0

    def __post_init__(self) -> None:
        self.s_lo, self.s_hi = self.centre - 2.5 * self.length, self.centre + 2.5 * self.length

    def apply(self, value: F32, s: F32, d: F32, tube: Tube) -> F32:
        i = np.clip(s, 0, tube.length).astype(np.int32)
        outer2 = tube.outer2[i]
        # an asymmetric bump: steep on the side of the impact, gentle beyond
        x = (s - np.float32(self.centre)) * np.float32(1.0 / self.length)
        bump = np.exp(-(x * x) * np.where(x < 0, np.float32(1.6), np.float32(0.7)))
        grow = np.sqrt(outer2) + np.float32(self.height) * bump
        extra = np.sqrt(np.maximum(grow * grow - d * d, 0)) - np.sqrt(np.maximum(outer2 - d * d, 0))
        if self.sides:
            extra *= smooth_step(np.float32(self.sides) * d, 2.0)
        extra *= np.float32(tube.mu_shell) * tube.weight[i]
        band = np.exp(-(x * x) * np.float32(6.0)) * np.float32(self.density)
        value *= np.float32(1.0) + band
        value += extra
        return value


def box_points(tube: Tube, outline: tuple[tuple[F64, F64, Rigid], ...], *, on_bone: bool = True) -> F64:
    """Image points of a fracture's lines (with ``on_bone``, only where they cross bone)."""
    points = []
    for s, d, motion in outline:
        radius = np.sqrt(tube.outer2[np.clip(s, 0, tube.length).astype(np.intp)]).astype(np.float64)
        keep = (np.abs(d) <= radius + 0.5) if on_bone else np.ones(len(s), dtype=bool)
        if keep.any():
            points.append(motion.forward(tube.to_image(s[keep], d[keep])))
    return np.concatenate(points) if points else np.empty((0, 2))


# --- a fracture of a given type -----------------------------------------------------------------------


def _line(
    rng: np.random.Generator, kind: FractureType, s0: float, radius: float, px_mm: float, rough: bool = False
) -> Line:
    if kind is FractureType.OBLIQUE:
        slope = math.tan(math.radians(rng.uniform(30, 60))) * rng.choice([-1, 1])
    elif kind is FractureType.HAIRLINE:
        slope = math.tan(math.radians(rng.uniform(-55, 55)))
    else:
        slope = math.tan(math.radians(rng.uniform(-14, 14)))
    amplitude = rng.uniform(0.6, 2.2) if rough else rng.uniform(0.3, 1.2)  # broken ends are spiky
    wiggle = random_wiggle(rng, amplitude * px_mm, rng.uniform(0.8, 3.0) * px_mm, 1.4 * radius)
    return Line(float(s0), float(slope), wiggle)


def _crack(
    rng: np.random.Generator,
    line: Line,
    radius: float,
    px_mm: float,
    width_mm: tuple[float, float],
    depth: tuple[float, float],
    reach: float,
    side: float,
) -> tuple[Lucency, F64, F64]:
    """A crack across ``reach`` of the bone's width from the cortex on ``side`` (all of it when
    ``reach`` ≥ 2·radius): the lucency and the points of it on bone."""
    d_lo, d_hi = (
        (-radius - 2, radius + 2)
        if reach >= 2 * radius
        else sorted((side * (radius + 2), side * (radius - reach)))
    )
    fade = random_fade(rng, 1.4 * radius, rng.uniform(2, 6) * px_mm, rng.uniform(0.2, 0.7))
    lucency = Lucency(line, rng.uniform(*width_mm) * px_mm, rng.uniform(*depth), d_lo, d_hi, fade)
    s, d = line.points(1.6 * radius, 96)
    keep = (d >= d_lo) & (d <= d_hi)
    return lucency, s[keep], d[keep]


def break_bone(
    rng: np.random.Generator,
    tube: Tube,
    kind: FractureType,
    s0: float,
    motion: Rigid,
    px_mm: float,
    displaced: bool,
) -> tuple[tuple[Fragment, ...] | None, list[Any], NDArray[np.float64]]:
    """A fracture of ``kind`` at ``s0``: fragments (None: the bone stays in one piece), modifiers of the
    tube, and the image points its box must cover.

    Non-displaced transverse and oblique fractures and hairlines are cracks: a lucent line whose
    depth varies along it. Displaced ones, spirals and comminuted ones are fragments with a gap.
    """
    radius = max(tube.radius(s0), 1.0)
    if kind is FractureType.HAIRLINE:
        line = _line(rng, kind, s0, radius, px_mm * 0.5)
        reach = 2 * radius * (1.0 if rng.random() < 0.35 else rng.uniform(0.3, 0.75))
        crack, s, d = _crack(
            rng, line, radius, px_mm, (0.1, 0.25), (0.45, 0.85), reach, float(rng.choice([-1, 1]))
        )
        return None, [crack], box_points(tube, ((s, d, IDENTITY),))
    if kind in (FractureType.TRANSVERSE, FractureType.OBLIQUE) and not displaced:
        line = _line(rng, kind, s0, radius, px_mm)
        crack, s, d = _crack(rng, line, radius, px_mm, (0.25, 0.8), (0.6, 0.95), 2 * radius, 1.0)
        return None, [crack], box_points(tube, ((s, d, IDENTITY),))
    if kind is FractureType.BUCKLE:
        length = rng.uniform(2.0, 4.0) * px_mm
        height = rng.uniform(0.6, 1.6) * px_mm
        sides = int(rng.choice([-1, 0, 1]))
        buckle = Buckle(centre=s0, length=length, height=height, sides=sides, density=rng.uniform(0.05, 0.2))
        s_box = np.repeat(np.array([s0 - 2.0 * length, s0 + 2.3 * length]), 2)  # the bulge's tails
        d_box = np.array([-1, 1, -1, 1], dtype=np.float64) * (radius + height)  # the bone's whole width
        return None, [buckle], box_points(tube, ((s_box, d_box, IDENTITY),), on_bone=False)
    gap = rng.uniform(0.2, 0.8) * px_mm if displaced else rng.uniform(0.15, 0.45) * px_mm
    if kind is FractureType.SPIRAL:
        total = rng.uniform(2.5, 4.0) * 2 * radius
        k = total / (2 * math.pi) * float(rng.choice([-1, 1]))
        wiggle = random_wiggle(rng, rng.uniform(0.2, 0.7) * px_mm, rng.uniform(1, 3) * px_mm, 1.4 * radius)
        start = s0 - abs(k) * math.pi / 2 + (abs(k) * 2 * math.pi if k < 0 else 0.0)
        front = Line(start, 0.0, wiggle, spiral_k=k, spiral_r=radius)
        back = Line(start, 0.0, wiggle, spiral_k=k, spiral_r=radius, back=True)
        result = spiral_break(front, back, gap, radius, motion)
        return result.fragments, [], box_points(tube, result.outline)
    line = _line(rng, kind, s0, radius, px_mm, rough=displaced)
    if kind is FractureType.COMMINUTED:
        side = float(rng.choice([-1, 1]))
        apex_d = -side * radius * rng.uniform(-0.1, 0.45)
        apex_s = float(line.at(np.array([apex_d], dtype=np.float32))[0])
        half = radius * rng.uniform(0.8, 1.6)
        base_s = float(line.at(np.array([side * radius], dtype=np.float32))[0])
        wedge = Triangle(
            (
                (apex_s, apex_d),
                (base_s - half, side * radius * 1.3),
                (base_s + half * rng.uniform(0.7, 1.3), side * radius * 1.3),
            )
        )
        centre = tube.to_image(np.array([base_s]), np.array([side * radius * 0.6]))[0]
        normal = np.array([-tube.uy, tube.ux]) * side
        push = normal * radius * (rng.uniform(0.05, 0.2) if displaced else rng.uniform(0.02, 0.06))
        if displaced:  # the butterfly goes part of the way with the distal fragment
            push = push + np.array(motion.shift) * rng.uniform(0.3, 0.7)
        turn = np.radians(rng.uniform(-10, 10) if displaced else rng.uniform(-2, 2))
        wedge_motion = Rigid(
            (float(centre[0]), float(centre[1])), float(turn), (float(push[0]), float(push[1]))
        )
        result = comminuted_break(line, wedge, gap, radius, motion, wedge_motion)
    else:
        result = simple_break(line, gap, radius, motion)
    return result.fragments, [], box_points(tube, result.outline)


def box(points: NDArray[np.float64], margin: float, rows: int, columns: int) -> list[int]:
    x0 = max(0, math.floor(points[:, 0].min() - margin))
    y0 = max(0, math.floor(points[:, 1].min() - margin))
    x1 = min(columns, math.ceil(points[:, 0].max() + margin))
    y1 = min(rows, math.ceil(points[:, 1].max() + margin))
    return [int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))]
