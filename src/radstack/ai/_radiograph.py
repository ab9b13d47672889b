"""Rendering primitives of the synthetic radiographs: projected bones and soft tissue, fracture fragments,
the detector, and a DX system's image processing. numpy and Pillow only.

The image is a map of attenuation (line integrals of μ, in natural-log units) built from bodies of
revolution whose axes lie in the detector plane: the X-ray path through a tube of projected radius
``h`` at distance ``d`` from its axis is the chord ``2·sqrt(h² - d²)`` (scaled for elliptical cross
sections), so a hollow cortex shows the bright edges of a real long bone. Every body is rendered in
bands of rows that cover only its outline, so a 2500 × 2048 image costs a few dozen full-image
numpy operations (no per-pixel Python).

Coordinates: pixel (row i, column j) covers x ∈ [j, j+1), y ∈ [i, i+1) (box coordinates are edges);
a tube's local frame is ``s`` along its axis from its proximal end and ``d`` across it (pixels).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

F32 = NDArray[np.float32]
I32 = NDArray[np.int32]

#: The trabecular texture bank (rows along a bone's axis, columns across); powers of two (index masks).
TEX_S, TEX_D = 1024, 512


@functools.lru_cache(maxsize=8)
def trabecular_bank(spacing_um: int) -> F32:
    """Trabecular texture for pixels of ``spacing_um`` micrometres: plates and rods about 0.7 to 1.5 mm
    apart, elongated along the bone's axis. Made from a fixed seed, so every run sees the same bank."""
    spacing = spacing_um / 1000.0
    rng = np.random.default_rng(0x7AB5 + spacing_um)
    white = rng.standard_normal((TEX_S, TEX_D), dtype=np.float32)
    fs = np.fft.fftfreq(TEX_S, d=spacing)[:, None]
    fd = np.fft.rfftfreq(TEX_D, d=spacing)[None, :]
    radial = np.sqrt((2.5 * fs) ** 2 + fd**2)  # along-axis frequency weighs more: streaks along the axis
    fine = np.exp(-(((radial - 0.9) / 0.45) ** 2))
    medium = np.exp(-(((radial - 0.35) / 0.15) ** 2))
    coarse = np.exp(-((np.sqrt(fs**2 + fd**2) / 0.12) ** 2))
    spectrum = np.fft.rfft2(white)
    out = np.ones((TEX_S, TEX_D), dtype=np.float32)
    for band, amplitude in ((fine, 0.16), (medium, 0.1), (coarse, 0.08)):
        tex = np.fft.irfft2(spectrum * band, s=(TEX_S, TEX_D))
        out += (amplitude / (tex.std() + 1e-9)) * tex.astype(np.float32)
    np.clip(out, 0.2, 2.0, out=out)
    return out


class Modifier(Protocol):
    """A change to a tube's attenuation over ``s ∈ [s_lo, s_hi]`` (physis, nutrient canal, buckle, …)."""

    s_lo: float
    s_hi: float

    def apply(self, value: F32, s: F32, d: F32, tube: Tube) -> F32: ...


@dataclass
class Tube:
    """A body of revolution (bone, soft tissue) projected onto the detector, in pixel units.

    ``outer2``/``inner2`` are squared projected radii of the outer surface and of the medullary canal
    for each pixel step of ``s`` (zero at both ends, so ``s`` outside the tube adds nothing);
    ``weight`` turns a chord in pixels into attenuation units (2 × pixel size × ellipse factor);
    ``marrow`` is the attenuation per mm inside the canal, ``mu_shell`` that of the shell (cortex).
    """

    name: str
    x0: float
    y0: float
    ux: float
    uy: float
    outer2: F32
    inner2: F32
    weight: F32
    marrow: F32
    bow: F32
    mu_shell: float
    texture: F32 | None = None
    tex_offset: tuple[int, int] = (0, 0)
    modifiers: list[Modifier] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.outer2) - 1

    def radius(self, s: float) -> float:
        """Projected outer radius (pixels) at ``s``."""
        return float(math.sqrt(self.outer2[int(np.clip(s, 0, self.length))]))

    def inner_radius(self, s: float) -> float:
        return float(math.sqrt(self.inner2[int(np.clip(s, 0, self.length))]))

    def bow_at(self, s: float) -> float:
        return float(self.bow[int(np.clip(s, 0, self.length))])

    def to_image(self, s: NDArray[np.float64], d: NDArray[np.float64]) -> NDArray[np.float64]:
        """Image points ``(N, 2)`` of local points (``d`` measured from the bowed axis)."""
        idx = np.clip(s, 0, self.length).astype(np.intp)
        dd = d + self.bow[idx]
        x = self.x0 + s * self.ux - dd * self.uy
        y = self.y0 + s * self.uy + dd * self.ux
        return np.stack([x, y], axis=1)

    def local_coefficients(self) -> tuple[float, float, float, float, float, float]:
        """``s = a·x + b·y + c`` and ``d = e·x + f·y + g`` for image points."""
        return (
            self.ux,
            self.uy,
            -(self.x0 * self.ux + self.y0 * self.uy),
            -self.uy,
            self.ux,
            self.x0 * self.uy - self.y0 * self.ux,
        )

    def outline(self, s_lo: float, s_hi: float, step: float = 4.0) -> NDArray[np.float64]:
        """Points (image coordinates) that enclose the tube between ``s_lo`` and ``s_hi``."""
        lo, hi = max(0.0, s_lo), min(float(self.length), s_hi)
        if hi <= lo:
            return np.empty((0, 2))
        s = np.append(np.arange(lo, hi, step), hi)
        r = np.sqrt(self.outer2[np.clip(s, 0, self.length).astype(np.intp)]).astype(np.float64) + 2.0
        r = np.maximum(r, 2.0)
        return np.concatenate([self.to_image(s, r), self.to_image(s, -r)])

    def evaluate(self, s: F32, d: F32, s_range: tuple[float, float] | None = None) -> tuple[F32, F32]:
        """Attenuation of the tube at local points (``s`` spanning ``s_range``); also ``d`` measured
        from the bowed axis."""
        i = s.astype(np.int32)
        np.clip(i, 0, self.length, out=i)
        db = d - self.bow[i]
        d2 = db * db
        outer = self.outer2[i] - d2
        np.maximum(outer, 0, out=outer)
        np.sqrt(outer, out=outer)
        inner = self.inner2[i] - d2
        np.maximum(inner, 0, out=inner)
        np.sqrt(inner, out=inner)
        outer -= inner
        outer *= self.mu_shell
        marrow = self.marrow[i]
        if self.texture is not None:
            rows = i + self.tex_offset[0]
            rows &= TEX_S - 1
            cols = db.astype(np.int32)
            cols += self.tex_offset[1]
            cols &= TEX_D - 1
            marrow *= self.texture[rows, cols]
        inner *= marrow
        outer += inner
        outer *= self.weight[i]
        if self.modifiers:
            s_min, s_max = s_range or (float(s.min()), float(s.max()))
            for modifier in self.modifiers:
                if modifier.s_hi >= s_min and modifier.s_lo <= s_max:
                    outer = modifier.apply(outer, s, db, self)
        return outer, db


@dataclass(frozen=True)
class Rigid:
    """A rigid motion of the image plane: rotation by ``angle`` about ``centre``, then ``shift``."""

    centre: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)

    def forward(self, points: NDArray[np.float64]) -> NDArray[np.float64]:
        c, sn = math.cos(self.angle), math.sin(self.angle)
        px, py = points[:, 0] - self.centre[0], points[:, 1] - self.centre[1]
        x = c * px - sn * py + self.centre[0] + self.shift[0]
        y = sn * px + c * py + self.centre[1] + self.shift[1]
        return np.stack([x, y], axis=1)

    def inverse_coefficients(self) -> tuple[float, float, float, float, float, float]:
        """``q = M·p + k`` (where a point ``p`` of the moved fragment came from), as ``(m11, m12, k1,
        m21, m22, k2)``."""
        c, sn = math.cos(self.angle), math.sin(self.angle)
        cx, cy = self.centre
        tx, ty = cx + self.shift[0], cy + self.shift[1]
        # q = R(-a)·(p - c - t) + c
        return (c, sn, cx - (c * tx + sn * ty), -sn, c, cy - (-sn * tx + c * ty))


IDENTITY = Rigid()

Mask = Callable[[F32, F32], F32]


@dataclass(frozen=True)
class Fragment:
    """A piece of a tube: the part where ``mask(s, d)`` is not zero, moved by ``motion``.

    ``support`` bounds ``s`` where the piece can exist; ``active`` is where ``mask`` must be computed
    (elsewhere inside ``support`` the piece is whole).
    """

    motion: Rigid = IDENTITY
    mask: Mask | None = None
    support: tuple[float, float] = (-math.inf, math.inf)
    active: tuple[float, float] = (math.inf, -math.inf)


WHOLE = (Fragment(),)


def render_tube(out: F32, tube: Tube, fragments: Sequence[Fragment] = WHOLE, band: int = 256) -> None:
    """Add the tube's attenuation (as ``fragments``) to ``out``, one band of rows at a time."""
    height, width = out.shape
    a, b, c, e, f, g = tube.local_coefficients()
    for fragment in fragments:
        lo, hi = fragment.support
        points = tube.outline(lo, hi)
        if not len(points):
            continue
        points = fragment.motion.forward(points)
        m11, m12, k1, m21, m22, k2 = fragment.motion.inverse_coefficients()
        # local coordinates of a moved pixel p: s = (a, b)·(M p + k) + c
        sa, sb, sc = (np.float32(v) for v in (a * m11 + b * m21, a * m12 + b * m22, a * k1 + b * k2 + c))
        da, db_, dc = (np.float32(v) for v in (e * m11 + f * m21, e * m12 + f * m22, e * k1 + f * k2 + g))
        top = max(0, math.floor(points[:, 1].min()))
        bottom = min(height, math.ceil(points[:, 1].max()) + 1)
        for ya in range(top, bottom, band):
            yb = min(ya + band, bottom)
            near = (points[:, 1] >= ya - 6) & (points[:, 1] <= yb + 6)
            if not near.any():
                continue
            xa = max(0, math.floor(points[near, 0].min()) - 1)
            xb = min(width, math.ceil(points[near, 0].max()) + 2)
            if xb <= xa:
                continue
            xs = np.arange(xa, xb, dtype=np.float32) + np.float32(0.5)
            ys = np.arange(ya, yb, dtype=np.float32) + np.float32(0.5)
            corners = [float(sa * x + sb * y + sc) for x in (xs[0], xs[-1]) for y in (ys[0], ys[-1])]
            s_min, s_max = min(corners), max(corners)  # s is affine: its extremes are at the corners
            if s_max < lo or s_min > hi:
                continue
            s = (sa * xs)[None, :] + (sb * ys + sc)[:, None]
            d = (da * xs)[None, :] + (db_ * ys + dc)[:, None]
            value, db = tube.evaluate(s, d, (s_min, s_max))
            if fragment.mask is not None and s_max >= fragment.active[0] and s_min <= fragment.active[1]:
                value *= fragment.mask(s, db)
            elif s_min < lo or s_max > hi:
                value *= ((s >= lo) & (s < hi)).astype(np.float32)
            out[ya:yb, xa:xb] += value


def smooth_step(x: F32, width: float) -> F32:
    """0 below ``-width/2``, 1 above ``+width/2``, linear between (edges a pixel wide, no aliasing)."""
    out: F32 = x * np.float32(1.0 / max(width, 1e-3)) + np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


# --- the detector and the processing of a DX system -------------------------------------------------


def resize(field: F32, rows: int, columns: int) -> F32:
    """Bilinear resampling (Pillow, pixel centres aligned) of a float32 image."""
    image = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    out: F32 = np.array(image.resize((columns, rows), Image.Resampling.BILINEAR), dtype=np.float32)
    return out


def box_blur(field: F32, radius: int) -> F32:
    """A separable box blur (edge-clamped) by cumulative sums, for small images."""
    if radius <= 0:
        return field
    out = field
    for axis in (0, 1):
        padded = np.pad(out, [(radius + 1, radius) if k == axis else (0, 0) for k in (0, 1)], mode="edge")
        summed = np.cumsum(padded, axis=axis, dtype=np.float64)
        size = out.shape[axis]
        hi = np.take(summed, np.arange(2 * radius + 1, 2 * radius + 1 + size), axis=axis)
        lo = np.take(summed, np.arange(0, size), axis=axis)
        out = ((hi - lo) / (2 * radius + 1)).astype(np.float32)
    return out


#: Standard deviation of :func:`raw_noise` (the sum of two uniform int8).
RAW_NOISE_STD = 104.5


def raw_noise(rng: np.random.Generator, shape: tuple[int, int]) -> F32:
    """Zero-mean noise of std :data:`RAW_NOISE_STD`: the sum of two uniform bytes (triangular,
    indistinguishable from Gaussian at this level and four times cheaper to draw than
    ``standard_normal``)."""
    raw = np.frombuffer(rng.bytes(2 * shape[0] * shape[1]), dtype=np.int8).reshape(2, *shape)
    out: F32 = raw[0].astype(np.float32)
    out += raw[1]
    return out


def quantum_noise(rng: np.random.Generator, shape: tuple[int, int]) -> F32:
    """Zero-mean, unit-variance noise (see :func:`raw_noise`)."""
    out = raw_noise(rng, shape)
    out *= np.float32(1.0 / RAW_NOISE_STD)
    return out


def upsample(field: F32, factor: int) -> F32:
    """Bilinear upsampling by an integer ``factor`` (pixel centres aligned, edges held): columns first
    on the few coarse rows, then whole contiguous output rows, two passes over the output."""
    if factor == 1:
        return field.copy()
    rows, columns = field.shape
    padded = np.pad(field, 1, mode="edge")
    offsets = (np.arange(factor) + 0.5) / factor - 0.5  # where output pixels fall between input ones
    wide = np.empty((rows + 2, columns, factor), dtype=np.float32)
    step = padded[:, 1:] - padded[:, :-1]
    for b, t in enumerate(offsets):
        first = 0 if t < 0 else 1
        np.multiply(step[:, first : first + columns], np.float32(t + 1 if t < 0 else t), out=wide[:, :, b])
        wide[:, :, b] += padded[:, first : first + columns]
    flat = wide.reshape(rows + 2, columns * factor)
    down = flat[1:] - flat[:-1]
    out = np.empty((rows, factor, columns * factor), dtype=np.float32)
    for a, t in enumerate(offsets):
        first = 0 if t < 0 else 1
        np.multiply(down[first : first + rows], np.float32(t + 1 if t < 0 else t), out=out[:, a])
        out[:, a] += flat[first : first + rows]
    return out.reshape(rows * factor, columns * factor)


def tone_lut(rng: np.random.Generator, size: int) -> F32:
    """A DX tone curve (sigmoid of random slope and toe) from [0, 1] to [0, 1], ``size`` entries."""
    x = np.linspace(0.0, 1.0, size, dtype=np.float64)
    slope = rng.uniform(3.0, 6.0)
    centre = rng.uniform(0.4, 0.6)
    y = 1.0 / (1.0 + np.exp(-slope * (x - centre)))
    y0, y1 = 1.0 / (1.0 + math.exp(slope * centre)), 1.0 / (1.0 + math.exp(-slope * (1 - centre)))
    mix = rng.uniform(0.2, 0.6)
    lifted = x ** rng.uniform(0.7, 1.0)  # mid-tones lifted: soft tissue stays visible
    out: F32 = ((1 - mix) * lifted + mix * (y - y0) / (y1 - y0)).astype(np.float32)
    return out


# --- lead markers ------------------------------------------------------------------------------------

_GLYPHS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


def glyph(letter: str, height: int, mirror: bool = False) -> F32:
    """The letter as a soft-edged mask ``height`` pixels tall (a lead marker's shape)."""
    bits = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]], dtype=np.float32)
    if mirror:
        bits = bits[:, ::-1]
    cell = max(1, height // 7)
    big = np.kron(bits, np.ones((cell, cell), dtype=np.float32))
    big = np.pad(big, cell, mode="constant")
    small_radius = max(1, cell // 4)
    return box_blur(big, small_radius) if cell >= 3 else big


@dataclass(frozen=True)
class Blades:
    """The collimator: a field ``(left, right, top, bottom)`` (pixel edges) turned by ``angle``; open
    sides have no blade; edges blur over ``penumbra`` pixels."""

    rect: tuple[float, float, float, float]
    angle: float
    open_sides: tuple[bool, bool, bool, bool]
    penumbra: float

    def bands(self, shape: tuple[int, int], zoom: float = 1.0) -> Any:
        """Per closed side: (runs along rows, covers the low side, first and last column of the
        transition, the covered share there [along, across]); ``zoom`` < 1 for a coarser grid."""
        rows, columns = shape
        tan = math.tan(self.angle)
        penumbra = max(0.5, self.penumbra * zoom)
        for k, (position, is_open) in enumerate(zip(self.rect, self.open_sides, strict=True)):
            if is_open:
                continue
            vertical = k in (0, 1)
            n_along, n_across = (rows, columns) if vertical else (columns, rows)
            along = np.arange(n_along, dtype=np.float32) + np.float32(0.5)
            edge = (along - np.float32(n_along / 2)) * np.float32(tan if vertical else -tan) + np.float32(
                position * zoom
            )
            lo = min(n_across, max(0, math.floor(edge.min() - penumbra)))
            hi = min(n_across, max(lo, math.ceil(edge.max() + penumbra) + 1))
            across = np.arange(lo, hi, dtype=np.float32) + np.float32(0.5)
            before = k in (0, 2)
            value = (edge[:, None] - across[None, :]) if before else (across[None, :] - edge[:, None])
            yield vertical, before, lo, hi, smooth_step(value, penumbra)

    def cover(self, shape: tuple[int, int], zoom: float = 1.0) -> F32:
        """Share of each pixel behind a blade (small grids: it is a whole image)."""
        cover = np.zeros(shape, dtype=np.float32)
        for vertical, before, lo, hi, band in self.bands(shape, zoom):
            view = cover if vertical else cover.T
            if before:
                view[:, :lo] = 1.0
            else:
                view[:, hi:] = 1.0
            np.maximum(view[:, lo:hi], band, out=view[:, lo:hi])
        return cover

    def shutter(self, image: F32, value: float) -> None:
        """Show the covered border as DX systems do: flat ``value`` (touches only the border strips)."""
        level = np.float32(value)
        for vertical, before, lo, hi, band in self.bands((image.shape[0], image.shape[1])):
            view = image if vertical else image.T
            if before:
                view[:, :lo] = level
            else:
                view[:, hi:] = level
            strip = view[:, lo:hi]
            strip -= level
            strip *= np.float32(1.0) - band
            strip += level


def lead_marker(
    rng: np.random.Generator, bones: F32, soft: F32, factor: int, blades: Blades, side: str, px_mm: float
) -> tuple[int, int, int, int]:
    """A lead letter (the side) in a corner of the field, on air if it can; its box ``(y0, y1, x0, x1)``."""
    rows, columns = bones.shape
    height = max(7, int(rng.uniform(9, 14) * px_mm))
    mask = glyph(side, height, mirror=bool(rng.random() < 0.15))
    holder = np.pad(np.ones_like(mask), max(1, int(1.5 * px_mm)))
    h, w = holder.shape
    inset = rng.uniform(6, 20) * px_mm
    left, right, top, bottom = blades.rect
    corners = [
        (top + inset, left + inset),
        (top + inset, right - inset - w),
        (bottom - inset - h, left + inset),
        (bottom - inset - h, right - inset - w),
    ]
    cover = blades.cover(soft.shape, 1.0 / factor)
    y, x = 0, 0
    for k in rng.permutation(4):
        y = int(np.clip(corners[k][0], 0, max(0, rows - h)))
        x = int(np.clip(corners[k][1], 0, max(0, columns - w)))
        ys, xs = slice(y // factor, -(-(y + h) // factor)), slice(x // factor, -(-(x + w) // factor))
        if float(soft[ys, xs].max()) < 0.2 and float(cover[ys, xs].max()) < 0.5:
            break
    region = bones[y : y + h, x : x + w]
    hh, ww = region.shape
    pad = (h - mask.shape[0]) // 2
    region += holder[:hh, :ww] * np.float32(rng.uniform(0.05, 0.15))
    letter = np.zeros_like(holder)
    letter[pad : pad + mask.shape[0], pad : pad + mask.shape[1]] = mask
    region += letter[:hh, :ww] * np.float32(rng.uniform(2.0, 3.0))
    return y, y + hh, x, x + ww


def develop(
    rng: np.random.Generator,
    soft: F32,
    bones: F32,
    factor: int,
    shape: tuple[int, int],
    blades: Blades,
    marker: tuple[int, int, int, int],
    spacing: float,
) -> tuple[NDArray[np.uint16], dict[str, Any]]:
    """Expose and process: quantum noise, then what a DX system does with the log signal (multi-scale
    contrast: unsharp masking and dynamic-range compression; auto-ranging on the anatomy in the
    field; a tone curve; the collimated border shown flat).

    Everything smooth is computed on the coarse grid of ``soft`` and brought to full resolution in one
    bilinear step; ``bones`` (full resolution, a multiple of ``factor``) carries the detail.
    """
    rows, columns = shape
    low_rows, low_columns = soft.shape
    # block means: whole rows first (contiguous adds), then the short runs along each row
    bones_low = bones.reshape(low_rows, factor, low_columns * factor).sum(axis=1)
    bones_low = bones_low.reshape(low_rows, low_columns, factor).sum(axis=2)
    bones_low *= np.float32(1.0 / (factor * factor))
    total = soft + bones_low
    photons = math.exp(rng.uniform(math.log(1500), math.log(15000))) * (spacing / 0.172) ** 2
    kvp = round(float(rng.uniform(52, 70)))
    mas = round(photons / 3000 * (60 / kvp) ** 2 * (0.172 / spacing) ** 2, 1)
    # the noise of the log signal has std 1/sqrt(N·exp(-A)) = exp(A/2)/sqrt(N)
    noise_std = np.exp(np.minimum(total, 7.0) * 0.5) * np.float32(1 / math.sqrt(photons))
    kernel = rng.uniform(6, 20) / (spacing * factor)  # mm of the large-scale blur, in coarse pixels
    step = max(1, round(kernel / 4))
    small = total[::step, ::step] if step > 1 else total
    blurred = box_blur(box_blur(small, max(1, int(kernel / step / 2))), max(1, int(kernel / step / 2)))
    smooth = resize(blurred, low_rows, low_columns) if step > 1 else blurred
    in_field = blades.cover(soft.shape, 1.0 / factor) < 0.5
    y0, y1, x0, x1 = marker
    in_field[y0 // factor : -(-y1 // factor), x0 // factor : -(-x1 // factor)] = False
    mean = float(total[in_field].mean()) if in_field.any() else 0.0
    boost, compress = rng.uniform(0.3, 1.2), rng.uniform(0.35, 0.75)
    detail = np.float32(1 + boost)
    base = soft * detail - smooth * np.float32(boost + compress) + np.float32(compress * mean)
    # auto-ranging on the anatomy in the field (direct exposure goes black, as on any DX system)
    estimate = base + bones_low * detail
    body = in_field & (total > 0.15)
    sample = estimate[body if body.any() else in_field] if in_field.any() else estimate.ravel()
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 98.5]))
    lut_size = 16384
    floor_, span = rng.uniform(0.02, 0.08), rng.uniform(0.72, 0.82)
    scale = np.float32((lut_size - 1) * span / max(hi - lo, 1e-6))
    base -= np.float32(lo - floor_ * (lut_size - 1) / scale)
    base *= scale
    out = upsample(base, factor)
    noise = raw_noise(rng, (out.shape[0], out.shape[1]))
    noise.reshape(low_rows, factor, low_columns, factor)[...] *= (
        noise_std * (detail * scale / RAW_NOISE_STD)
    )[:, None, :, None]
    bones *= detail * scale
    out += bones
    out += noise
    del noise
    image = out[:rows, :columns]
    blades.shutter(image, (lut_size - 1) * rng.uniform(0.85, 1.0))
    index = image.astype(np.int32)  # out of range: clamped by the look-up below
    bits = int(rng.choice([12, 14, 15, 16], p=[0.3, 0.3, 0.1, 0.3]))
    top = (1 << bits) - 1
    lut = np.round(tone_lut(rng, lut_size) * top).astype(np.uint16)
    pixels: NDArray[np.uint16] = np.take(lut, index, mode="clip")
    window = pixels[::factor, ::factor][: in_field.shape[0], : in_field.shape[1]]
    window = window[in_field[: window.shape[0], : window.shape[1]]] if in_field.any() else window.ravel()
    p1, p99 = (float(v) for v in np.percentile(window, [1, 99]))
    header = {
        "bits": bits,
        "window": (round((p1 + p99) / 2), max(2, round((p99 - p1) * 1.1))),
        "kvp": kvp,
        "mas": mas,
    }
    return pixels, header
