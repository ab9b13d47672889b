"""A synthetic radiograph drawn from scratch: the limb's bones and soft tissue in a view, the fracture
(or none), the normal look-alikes, collimation, a lead marker, the exposure and its processing."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from radstack.ai._anatomy import (
    MU_CORTEX,
    MU_FAT,
    MU_MUSCLE,
    MU_TRABECULAR,
    Anatomy,
    BoneSpec,
    Layout,
    Projection,
    layout,
    project,
)
from radstack.ai._fractures import Band, Line, Lucency, box, break_bone, sine_wave
from radstack.ai._plan import LONG_BONE_SIZE, WRIST_SIZE, Finding, FractureType, Options, Patient, Rendered
from radstack.ai._radiograph import (
    F32,
    TEX_D,
    TEX_S,
    WHOLE,
    Blades,
    Fragment,
    Rigid,
    Tube,
    develop,
    lead_marker,
    render_tube,
    trabecular_bank,
)

__all__ = ["render"]


# --- look-alikes: what normal bones show ------------------------------------------------------------


def _normal_findings(rng: np.random.Generator, spec: BoneSpec, tube: Tube, child: bool, px_mm: float) -> None:
    if child:
        for t in spec.physes:
            s = t * tube.length
            wave = sine_wave(rng, rng.uniform(0.3, 1.0) * px_mm, max(3.0, tube.radius(s) * 0.6))
            toward = 1.0 if t < 0.5 else -1.0  # the metaphysis' side
            tube.modifiers.append(Band(s, rng.uniform(0.5, 0.9) * px_mm, -rng.uniform(0.6, 0.85), wave))
            tube.modifiers.append(Band(s + toward * 1.1 * px_mm, 0.45 * px_mm, rng.uniform(0.15, 0.4), wave))
    if spec.long and rng.random() < 0.4:  # a nutrient canal through one cortex of the shaft
        s = rng.uniform(0.35, 0.65) * tube.length
        outer, inner = tube.radius(s), tube.inner_radius(s)
        side = float(rng.choice([-1, 1]))
        slope = math.tan(math.radians(rng.uniform(65, 80))) * rng.choice([-1, 1])
        lo, hi = sorted((side * (inner - 0.5 * px_mm), side * (outer + px_mm)))
        tube.modifiers.append(Lucency(Line(s, slope), 0.35 * px_mm, rng.uniform(0.2, 0.45), lo, hi))
    if spec.metaphyses and rng.random() < (0.3 if child else 0.12):  # growth-arrest (Harris) lines
        zone = spec.metaphyses[int(rng.integers(len(spec.metaphyses)))]
        for _ in range(int(rng.integers(1, 3))):
            s = rng.uniform(*zone) * tube.length
            tube.modifiers.append(Band(s, 0.25 * px_mm, rng.uniform(0.15, 0.35), ()))


# --- the whole image --------------------------------------------------------------------------------


def _size_for(anatomy: Anatomy, options: Options) -> tuple[int, int]:
    if options.size is not None:
        return options.size
    rows, columns = WRIST_SIZE if anatomy is Anatomy.WRIST else LONG_BONE_SIZE
    return max(32, round(rows * options.scale)), max(32, round(columns * options.scale))


def _view(lay: Layout, patient: Patient, view_index: int, options: Options, rng: np.random.Generator) -> str:
    if options.images_per_patient > 1:
        return lay.views[view_index % len(lay.views)]
    weights = np.array([0.55, 0.3, 0.15][: len(lay.views)])
    return lay.views[int(rng.choice(len(lay.views), p=weights / weights.sum()))]


def _soft_field(
    lay: Layout, proj: Projection, shape: tuple[int, int], factor: int, rng: np.random.Generator
) -> F32:
    """Soft tissue and the beam's heel effect on a grid ``factor`` times coarser (both are smooth)."""
    low = np.zeros(shape, dtype=np.float32)
    part = np.empty_like(low)
    coarse = proj.shrunk(factor)
    for spec in lay.soft:  # limb segments overlap where they join: the thicker one counts
        part[...] = 0.0
        render_tube(
            part, project(spec, coarse, mu_shell=MU_FAT, mu_inner=MU_MUSCLE, smooth_mm=30.0), WHOLE, band=64
        )
        np.maximum(low, part, out=low)
    heel = rng.uniform(-0.12, 0.12)
    low += (np.linspace(-0.5, 0.5, shape[0], dtype=np.float32) * np.float32(heel))[:, None]
    return low


def render(seed: int, patient: Patient, view_index: int, options: Options) -> Rendered:
    rng = np.random.default_rng([seed, patient.index, 0x51E7, view_index])
    lay = layout(patient.anatomy)
    rows, columns = _size_for(patient.anatomy, options)
    spacing = max(lay.field_mm[0] / rows, lay.field_mm[1] / columns)
    px_mm = 1.0 / spacing
    view = _view(lay, patient, view_index, options, rng)
    angle = {"AP": 0.0, "PA": 0.0, "OBL": 45.0, "LAT": 90.0}[view] + rng.normal(0, 4)
    mirror = (-1.0 if patient.side == "R" else 1.0) if view != "LAT" else float(rng.choice([-1, 1]))
    rotation = math.radians(rng.uniform(-12, 12) if lay.distal_up else rng.uniform(-6, 6))
    half_field = lay.field_mm[0] / 2 / patient.size
    lo_v, hi_v = lay.centre_v
    specs = {spec.name: spec for spec in lay.bones}
    # the planned site (broken or not: the label must not move the limb) lies 50 mm inside the field
    spec = specs[patient.bone]
    v_site = spec.start[1] + patient.site * (spec.end[1] - spec.start[1])
    lo_v, hi_v = max(lo_v, v_site - half_field + 50), min(hi_v, v_site + half_field - 50)
    if lo_v > hi_v:
        lo_v = hi_v = v_site
    centre_v = rng.uniform(lo_v, hi_v) * patient.size
    centre_px = (columns * (0.5 + rng.uniform(-0.07, 0.07)), rows * (0.5 + rng.uniform(-0.03, 0.03)))
    proj = Projection(
        math.radians(angle), mirror, lay.distal_up, rotation, centre_px, centre_v, spacing, patient.size
    )
    bank = trabecular_bank(max(50, round(spacing * 1000)))
    tubes: dict[str, Tube] = {}
    for spec in lay.bones:
        tube = project(spec, proj, mu_shell=MU_CORTEX, mu_inner=MU_TRABECULAR)
        tube.texture = bank
        tube.tex_offset = (int(rng.integers(TEX_S)), int(rng.integers(TEX_D)))
        _normal_findings(rng, spec, tube, patient.child, px_mm)
        tubes[spec.name] = tube
    fragments: dict[str, tuple[Fragment, ...]] = {}
    findings: list[Finding] = []
    if patient.fracture is not None:  # its own random stream: the rest of the image is the same without it
        breaking = np.random.default_rng([seed, patient.index, 0xF8AC, view_index])
        findings = _fracture(breaking, patient, specs, tubes, fragments, px_mm)
    # soft tissue on a coarse grid (it is smooth); bones and the lead marker at full resolution
    factor = max(1, round(0.7 / spacing))
    coarse = (-(-rows // factor), -(-columns // factor))
    soft = _soft_field(lay, proj, coarse, factor, rng)
    bones = np.zeros((coarse[0] * factor, coarse[1] * factor), dtype=np.float32)
    image = bones[:rows, :columns]
    for name, tube in tubes.items():
        render_tube(image, tube, fragments.get(name, WHOLE), band=max(48, rows // 10))
    # collimation: a field around the limb, some sides open; never over the fracture
    skin = [project(spec, proj, mu_shell=0.0, mu_inner=0.0, smooth_mm=30.0) for spec in lay.soft]
    site = tubes[patient.bone]
    s_site = patient.site * site.length
    reach = 50 * px_mm * patient.size  # a fracture there (and its partner's) stays in the field
    around = site.outline(s_site - reach, s_site + reach)
    rect, open_sides = _field(rng, skin, around, rows, columns, px_mm)
    blades = Blades(rect, math.radians(rng.uniform(-1.5, 1.5)), open_sides, max(1.0, 0.6 * px_mm))
    marker = lead_marker(rng, image, soft, factor, blades, patient.side, px_mm)
    pixels, header = develop(rng, soft, bones, factor, (rows, columns), blades, marker, spacing)
    boxes = [box(f.points, max(1.5, 1.0 * px_mm), rows, columns) for f in findings]
    header.update(body_part=lay.body_part, distal_up=lay.distal_up, mirror=mirror)
    return Rendered(pixels, findings, boxes, view, spacing, header)


def _fracture(
    rng: np.random.Generator,
    patient: Patient,
    specs: dict[str, BoneSpec],
    tubes: dict[str, Tube],
    fragments: dict[str, tuple[Fragment, ...]],
    px_mm: float,
) -> list[Finding]:
    assert patient.fracture is not None
    spec, tube = specs[patient.bone], tubes[patient.bone]
    s0 = patient.site * tube.length
    centre = tube.to_image(np.array([s0]), np.array([0.0]))[0]
    diameter = 2 * tube.radius(s0)
    across, along, angle = patient.motion
    normal, axis = np.array([-tube.uy, tube.ux]), np.array([tube.ux, tube.uy])
    shift = normal * across * diameter + axis * along * diameter
    if spec.pair is not None and not patient.pair_fractured:
        shift, angle = shift * 0.25, angle * 0.25  # the intact partner holds the fragments together
    if patient.fracture is FractureType.SPIRAL:
        shift, angle = shift * 0.4, angle * 0.3  # the long oblique surfaces interlock
    motion = Rigid((float(centre[0]), float(centre[1])), float(angle), (float(shift[0]), float(shift[1])))
    found = []
    pieces, modifiers, points = break_bone(rng, tube, patient.fracture, s0, motion, px_mm, patient.displaced)
    tube.modifiers.extend(modifiers)
    if pieces is not None:
        fragments[spec.name] = pieces
    found.append(Finding(spec.name, patient.fracture, patient.displaced, points))
    movers = list(spec.followers)
    if spec.pair is not None and patient.pair_fractured and spec.pair in tubes:
        # the partner breaks near the same level and its distal fragment moves the same way
        partner, other = tubes[spec.pair], specs[spec.pair]
        target = centre + axis * patient.pair_offset * px_mm
        s_pair = float(
            np.clip(
                (target[0] - partner.x0) * partner.ux + (target[1] - partner.y0) * partner.uy,
                0.15 * partner.length,
                0.9 * partner.length,
            )
        )
        kind = FractureType(rng.choice(["transverse", "oblique", "oblique", "comminuted"]))
        if patient.fracture is FractureType.SPIRAL:
            kind = FractureType.SPIRAL
        pieces, modifiers, points = break_bone(rng, partner, kind, s_pair, motion, px_mm, True)
        partner.modifiers.extend(modifiers)
        if pieces is not None:
            fragments[other.name] = pieces
        found.append(Finding(other.name, kind, True, points))
        movers += list(spec.joint_followers) + list(other.followers)
    elif spec.pair is None:
        movers += list(spec.joint_followers)
    if patient.displaced:
        for name in movers:
            if name in tubes:
                fragments[name] = (Fragment(motion),)
    return found


def _field(
    rng: np.random.Generator,
    skin: list[Tube],
    keep: NDArray[np.float64],
    rows: int,
    columns: int,
    px_mm: float,
) -> tuple[tuple[float, float, float, float], tuple[bool, bool, bool, bool]]:
    """The collimated field ``(left, right, top, bottom)`` (pixel edges) around the limb's skin, and
    which sides are open; the points ``keep`` stay 15 mm inside it."""
    points = np.concatenate([t.outline(0, t.length, step=16) for t in skin])
    inside = (points[:, 1] > 0) & (points[:, 1] < rows)
    points = points[inside] if inside.any() else np.array([[columns / 2, rows / 2]])
    margin = rng.uniform(-4, 35, size=4) * px_mm
    left, right = points[:, 0].min() - margin[0], points[:, 0].max() + margin[1]
    top, bottom = rng.uniform(0, 0.1) * rows, rows * (1 - rng.uniform(0, 0.1))
    if len(keep):
        reach = 15 * px_mm
        left = min(left, keep[:, 0].min() - reach)
        right = max(right, keep[:, 0].max() + reach)
        top = min(top, keep[:, 1].min() - reach)
        bottom = max(bottom, keep[:, 1].max() + reach)
    rect = (max(0.0, left), min(float(columns), right), max(0.0, top), min(float(rows), bottom))
    open_sides = tuple(bool(rng.random() < 0.2) for _ in range(4))
    return rect, open_sides  # type: ignore[return-value]
