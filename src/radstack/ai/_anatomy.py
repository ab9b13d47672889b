"""Bone and soft-tissue layouts of the synthetic radiographs, in millimetres, and their projection.

Each limb is described in its own frame: ``u`` lateral (thumb or fibula side), ``v`` along the limb
from proximal to distal, ``w`` anterior. A bone is a body of revolution between two 3-D points with a
radius profile; its cross section is an ellipse ``radius`` wide along ``u`` and ``radius × aspect``
deep along ``w``. A view rotates the limb about its axis (AP 0°, oblique 45°, lateral 90°), so the
same layout gives an AP view with radius and ulna apart and a lateral one with them superimposed.
Sizes are those of an average adult (measured from anatomy atlases, rounded); a patient's size
scales them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from radstack.ai._radiograph import Tube

#: Attenuation per mm in excess of what they displace (about 60 kVp): soft tissue over air, bone
#: over soft tissue.
MU_FAT = 0.017
MU_MUSCLE = 0.023
MU_CORTEX = 0.05
MU_TRABECULAR = 0.021  # fully trabecular bone; a profile's marrow density scales it

#: One profile point: (fraction of the length, radius mm, cortex mm, trabecular density 0..1, depth/width)
Point = tuple[float, float, float, float, float]


class Anatomy(StrEnum):
    """What a synthetic radiograph shows."""

    LOWER_LEG = "lower_leg"
    FOREARM = "forearm"
    WRIST = "wrist"
    THIGH = "thigh"
    UPPER_ARM = "upper_arm"


def profile(text: str) -> tuple[Point, ...]:
    """Profile points written ``"t radius cortex density aspect; …"`` (one point per group).

    Raises
    ------
    ValueError
        A group does not hold exactly five numbers, or a value is not a number.
    """
    points = tuple(tuple(float(v) for v in group.split()) for group in text.split(";"))
    if any(len(point) != 5 for point in points):
        raise ValueError(f"profile {text!r}: each point has five numbers")
    return points  # type: ignore[return-value]


Vec = tuple[float, float, float]


@dataclass(frozen=True)
class BoneSpec:
    """One bone (or soft-tissue segment: then ``cortex`` is the fat layer) of a layout."""

    name: str
    start: Vec
    end: Vec
    profile: tuple[Point, ...]
    cap: tuple[float, float] = (4.0, 4.0)
    bow: tuple[float, float] = (0.0, 0.0)
    physes: tuple[float, ...] = ()
    #: Where fractures may be placed (fractions of the length); None: never fractured.
    shaft: tuple[float, float] | None = None
    metaphyses: tuple[tuple[float, float], ...] = ()
    long: bool = False
    #: The bone it pairs with (radius/ulna, tibia/fibula) and what moves with its distal fragment.
    pair: str | None = None
    followers: tuple[str, ...] = ()
    joint_followers: tuple[str, ...] = ()
    weight: float = 1.0


@dataclass(frozen=True)
class Layout:
    anatomy: Anatomy
    bones: tuple[BoneSpec, ...]
    soft: tuple[BoneSpec, ...]
    #: Field of the detector (rows, columns) in mm, and the range of ``v`` placed at its centre.
    field_mm: tuple[float, float]
    centre_v: tuple[float, float]
    #: Distal end up on the display (hands, wrists) instead of proximal up.
    distal_up: bool = False
    body_part: str = ""
    views: tuple[str, ...] = ("AP", "LAT")


def _blob(
    name: str,
    start: Vec,
    end: Vec,
    radius: float,
    aspect: float = 1.0,
    cap: float | None = None,
    shaft: tuple[float, float] | None = None,
    weight: float = 1.0,
) -> BoneSpec:
    """A short rounded bone (carpal, talus, patella): thin cortex, trabecular inside."""
    end_cap = cap if cap is not None else min(radius, 0.45 * math.dist(start, end))
    shape = profile(
        f"0 {radius * 0.92} 0.9 0.6 {aspect}; 0.5 {radius} 0.9 0.6 {aspect}; "
        f"1 {radius * 0.92} 0.9 0.6 {aspect}"
    )
    return BoneSpec(name, start, end, shape, cap=(end_cap, end_cap), shaft=shaft, weight=weight)


def _small_long(
    name: str,
    start: Vec,
    end: Vec,
    base: float,
    middle: float,
    head: float,
    fractured: bool = False,
    weight: float = 1.0,
) -> BoneSpec:
    """A metacarpal or phalanx: flared base and head, a tubular shaft."""
    shape = profile(
        f"0 {base} 1 .5 .9; .16 {middle * 1.2} 1.3 .3 .9; .35 {middle} 1.6 .08 .9; "
        f".7 {middle} 1.5 .08 .9; .9 {head * 0.9} 1.1 .4 .9; 1 {head} 1 .5 .9"
    )
    return BoneSpec(
        name,
        start,
        end,
        shape,
        cap=(3.0, 3.5),
        physes=(0.04,),
        shaft=(0.2, 0.85) if fractured else None,
        long=fractured,
        weight=weight,
    )


def _shift(v: float) -> Callable[[float, float, float], Vec]:
    return lambda u, vv, w: (u, v + vv, w)


def _hand(v: float) -> tuple[BoneSpec, ...]:
    """Carpals, metacarpals and proximal phalanges, ``v`` mm below the radiocarpal joint line."""
    p = _shift(v)
    return (
        _blob("scaphoid", p(21, 3, 3), p(9, 25, 5), 6.2, cap=5.5, shaft=(0.3, 0.7), weight=0.6),
        _blob("lunate", p(3, 2, 0), p(2, 17, 0), 8.0, 1.1, cap=6.0),
        _blob("triquetrum", p(-9, 7, -3), p(-12, 19, -3), 6.5),
        _blob("pisiform", p(-11, 10, 10), p(-12, 18, 10), 4.5),
        _blob("trapezium", p(25, 24, 7), p(20, 37, 9), 6.5),
        _blob("trapezoid", p(13, 26, 3), p(12, 36, 3), 5.5),
        _blob("capitate", p(1, 19, 0), p(0, 43, 0), 7.5, cap=6.0),
        _blob("hamate", p(-11, 21, -1), p(-12, 40, -1), 7.0),
        _small_long("mc1", p(25, 39, 12), p(37, 81, 22), 7.5, 4.8, 6.5),
        _small_long("mc2", p(13, 43, 3), p(16, 110, 5), 7.0, 4.3, 6.5, fractured=True, weight=0.3),
        _small_long("mc3", p(1, 45, 2), p(0, 108, 4), 7.0, 4.3, 6.5, fractured=True, weight=0.3),
        _small_long("mc4", p(-10, 43, 1), p(-14, 100, 3), 6.0, 3.8, 6.0, fractured=True, weight=0.3),
        _small_long("mc5", p(-19, 42, 0), p(-26, 95, 1), 6.0, 3.9, 6.0, fractured=True, weight=0.4),
        _small_long("pp1", p(38, 87, 24), p(47, 118, 30), 6.0, 4.0, 4.5),
        _small_long("pp2", p(16.5, 115, 5), p(18, 157, 6), 5.5, 3.8, 4.5),
        _small_long("pp3", p(0, 113, 4), p(0, 160, 5), 5.5, 3.8, 4.5),
        _small_long("pp4", p(-14.5, 105, 3), p(-17, 148, 4), 5.3, 3.6, 4.3),
        _small_long("pp5", p(-27, 100, 1), p(-31, 135, 2), 4.8, 3.3, 4.0),
        _small_long("mp2", p(18.2, 160, 6), p(19.5, 187, 6), 4.6, 3.2, 3.8),
        _small_long("mp3", p(0, 163, 5), p(0, 193, 5), 4.8, 3.3, 3.9),
        _small_long("mp4", p(-17.3, 151, 4), p(-18.5, 179, 4), 4.6, 3.2, 3.8),
        _small_long("mp5", p(-31.5, 138, 2), p(-33, 158, 2), 4.0, 2.8, 3.3),
        _small_long("dp1", p(47.5, 121, 30), p(51, 142, 32), 4.8, 3.0, 3.6),
        _small_long("dp2", p(19.7, 190, 6), p(20.5, 207, 6), 3.8, 2.6, 3.4),
        _small_long("dp3", p(0, 196, 5), p(0, 215, 5), 4.0, 2.7, 3.5),
        _small_long("dp4", p(-18.7, 182, 4), p(-19.5, 200, 4), 3.8, 2.6, 3.4),
        _small_long("dp5", p(-33.3, 161, 2), p(-34.5, 176, 2), 3.4, 2.4, 3.0),
    )


_HAND_BONES = tuple(spec.name for spec in _hand(0))


def _hand_soft(v: float) -> tuple[BoneSpec, ...]:
    p = _shift(v)
    ends = ((17, 110, 21, 215), (0, 108, 0, 222), (-15, 101, -19.5, 207), (-27, 96, -34.5, 183))
    fingers = tuple(
        BoneSpec(f"finger{n}", p(u0, v0, 3), p(u1, v1, 4), profile("0 10.5 3 1 .8; 1 8.5 3 1 .9"), cap=(6, 8))
        for n, (u0, v0, u1, v1) in enumerate(ends)
    )
    thumb = BoneSpec(
        "thumb", p(24, 35, 12), p(52, 148, 32), profile("0 14 4 1 .9; .5 11 3 1 .9; 1 9 3 1 .9"), cap=(10, 9)
    )
    return (*fingers, thumb)


def _leg(v: float = 0.0) -> tuple[BoneSpec, ...]:
    """Tibia, fibula, patella, talus and calcaneus; ``v`` shifts them down the limb."""
    p = _shift(v)
    tibia = profile(
        "0 35 1.2 .7 .85; .04 35 1.2 .7 .85; .08 30 1.3 .6 .88; .12 23 1.8 .45 .92; .18 17 2.8 .25 .95; "
        ".26 14 4 .08 1; .32 13 4.5 .06 1; .7 11.5 4.5 .05 1; .8 12.5 3.5 .15 1; .87 15.5 2.2 .35 .95; "
        ".93 20 1.4 .6 .9; 1 23 1.1 .7 .9"
    )
    fibula = profile(
        "0 12 1.2 .6 1; .07 8 1.5 .4 1; .15 7 2.4 .1 1; .82 6.5 2.4 .1 1; .92 10.5 1.4 .55 .9; "
        "1 8.5 1.2 .6 .9"
    )
    return (
        BoneSpec(
            "patella",
            p(3, -50, 40),
            p(3, -6, 40),
            profile("0 18 1.4 .5 .5; .45 22 1.4 .5 .5; 1 17 1.4 .5 .5"),
            cap=(12, 12),
        ),
        BoneSpec(
            "tibia",
            p(0, 0, 0),
            p(1, 365, 0),
            tibia,
            cap=(8, 6),
            bow=(1.5, 3),
            physes=(0.045, 0.965),
            shaft=(0.12, 0.9),
            metaphyses=((0.09, 0.2), (0.8, 0.93)),
            long=True,
            pair="fibula",
            followers=("medial_malleolus",),
            joint_followers=("talus", "calcaneus"),
            weight=1.4,
        ),
        BoneSpec(
            "fibula",
            p(31, 14, -14),
            p(23, 379, -6),
            fibula,
            cap=(6, 6),
            bow=(-2, 2),
            physes=(0.03, 0.95),
            shaft=(0.1, 0.93),
            metaphyses=((0.84, 0.92),),
            long=True,
            pair="tibia",
            weight=0.9,
        ),
        BoneSpec(
            "medial_malleolus",
            p(-13, 348, 0),
            p(-16, 377, 2),
            profile("0 9 1.2 .6 1; .6 7.5 1.2 .6 1; 1 5.5 1.2 .6 1"),
            cap=(3, 5),
        ),
        _blob("talus", p(2, 370, 3), p(2, 408, 3), 22.0, 1.25, cap=13.0),
        _blob("calcaneus", p(4, 398, -22), p(5, 446, -34), 16.0, 1.6, cap=12.0),
    )


#: The distal femur's metaphysis flares like a trumpet into the condyles.
_FEMUR_DISTAL = ".55 14.5 4.5 .05 1; .7 16 3.5 .1 1; .8 19.5 2.2 .3 .95; .87 25 1.5 .5 .88; .93 33 1.2 .65 .8; 1 38 1 .75 .8"


def _forearm(v: float = 0.0) -> tuple[BoneSpec, ...]:
    p = _shift(v)
    radius = profile(
        "0 10.5 1.2 .6 1; .05 9.5 1.2 .55 1; .09 6.5 2 .3 1; .16 8 2.2 .2 1; .3 6.5 2.8 .06 1; "
        ".7 7.5 2.6 .06 .9; .86 11 1.5 .35 .75; .96 16 1 .5 .7; 1 15.5 1 .5 .7"
    )
    ulna = profile(
        "0 12 1.5 .6 1.1; .06 13 1.5 .55 1.2; .14 11 1.6 .45 1.2; .22 8 2.5 .15 1; .5 6.5 2.8 .06 1; "
        ".9 5.5 2.2 .1 1; .96 8 1.2 .6 1; 1 6 1.1 .6 1"
    )
    return (
        BoneSpec(
            "radius",
            p(20, 3, 0),
            p(24, 248, 3),
            radius,
            cap=(5, 4),
            bow=(7, 0),
            physes=(0.02, 0.975),
            shaft=(0.12, 0.94),
            metaphyses=((0.84, 0.95),),
            long=True,
            pair="ulna",
            joint_followers=_HAND_BONES,
            weight=1.3,
        ),
        BoneSpec(
            "ulna",
            p(-8, -28, -16),
            p(-16, 244, -4),
            ulna,
            cap=(8, 4),
            bow=(-2, 3),
            physes=(0.97,),
            shaft=(0.2, 0.93),
            metaphyses=((0.9, 0.955),),
            long=True,
            pair="radius",
            weight=1.0,
        ),
    )


def _humerus(v: float = 0.0, *, head: bool = False) -> BoneSpec:
    if head:
        shape = profile(
            "0 23 1.2 .65 1; .06 25 1.2 .6 1; .12 20 1.6 .45 1; .18 14 2.5 .2 1; .3 11 4 .06 1; "
            ".7 11 4 .06 1; .8 13 3 .15 .9; .88 18 1.6 .4 .75; .95 28 1.1 .65 .5; 1 28 1 .7 .5"
        )
        return BoneSpec(
            "humerus",
            (0, v, 0),
            (3, v + 300, 0),
            shape,
            cap=(18, 12),
            physes=(0.07, 0.965),
            shaft=(0.14, 0.88),
            metaphyses=((0.12, 0.2), (0.83, 0.9)),
            long=True,
            weight=1.3,
        )
    shape = profile(
        "0 11 4 .05 1; .6 11.5 3.5 .08 1; .75 14 2.4 .25 .85; .85 19 1.5 .5 .7; .93 28 1.1 .65 .5; "
        "1 28 1 .7 .5"
    )
    return BoneSpec(
        "humerus",
        (0, v + 40, 0),
        (3, v + 300, 0),
        shape,
        cap=(4, 12),
        physes=(0.96,),
        metaphyses=((0.82, 0.9),),
        weight=0.4,
    )


def layout(anatomy: Anatomy) -> Layout:
    """The bones and soft tissue of ``anatomy`` (adult size)."""
    soft: tuple[BoneSpec, ...]
    if anatomy is Anatomy.LOWER_LEG:
        leg = profile(
            "0 76 12 1 1; .2 62 10 1 1; .33 52 8 1 1; .37 50 8 1 1.05; .46 55 8 1 1.05; .54 57 8 1 1.05; "
            ".66 44 7 1 1; .76 33 5 1 1; .8 32 5 1 1.1; .86 40 6 1 1.4; .91 44 6 1 1.7; .96 46 6 1 1.9; "
            "1 40 6 1 2"
        )
        femur = BoneSpec(
            "femur",
            (0, -300, 0),
            (0, -3, 0),
            profile("0 14 4.5 .05 1; " + _FEMUR_DISTAL),
            cap=(4, 16),
            physes=(0.93,),
            metaphyses=((0.8, 0.9),),
            weight=0.5,
        )
        soft = (BoneSpec("leg", (3, -340, -6), (3, 560, 6), leg, cap=(2, 30)),)  # the foot seen end-on
        return Layout(anatomy, (femur, *_leg()), soft, (430, 352), (130, 250), body_part="LEG")
    if anatomy is Anatomy.FOREARM:
        arm = profile(
            "0 46 9 1 1; .29 42 8 1 1; .41 38 7 1 1; .51 40 7 1 .9; .63 34 6 1 .8; .75 27 5 1 .7; "
            ".815 25 5 1 .65; .857 30 5 1 .55; .92 42 6 1 .4; 1 41 6 1 .36"
        )
        soft = (BoneSpec("arm", (0, -300, 0), (2, 372, 0), arm, cap=(2, 8)), *_hand_soft(250))
        bones = (_humerus(-300), *_forearm(), *_hand(250))
        # Body Part Examined EXTREMITY: dciodvfy's dictionary lacks FOREARM (the region code says it)
        return Layout(anatomy, bones, soft, (430, 352), (90, 160), body_part="EXTREMITY")
    if anatomy is Anatomy.WRIST:
        forearm = _forearm(-250)
        radius = replace(
            forearm[0],
            shaft=(0.62, 0.97),
            metaphyses=((0.85, 0.96),),
            followers=("radial_styloid",),
            weight=2.0,
        )
        ulna = replace(forearm[1], shaft=(0.7, 0.95), metaphyses=((0.9, 0.955),), weight=0.8)
        styloid = BoneSpec(
            "radial_styloid",
            (18, -14, 2),
            (25, 1, 2),
            profile("0 7 1 .4 1; .6 5.5 1 .4 1; 1 3.5 1 .4 1"),
            cap=(3, 3),
        )
        ulnar_styloid = BoneSpec(
            "ulnar_styloid",
            (-19, -9, -6),
            (-20, 2, -6),
            profile("0 3.6 1 .5 1; 1 2.2 1 .5 1"),
            cap=(2, 2),
            shaft=(0.3, 0.75),
            weight=0.5,
        )
        arm = profile(
            "0 31 5 1 .75; .5 27 5 1 .68; .67 28 5 1 .6; .75 37 6 1 .46; .83 43 6 1 .38; .96 43 6 1 .35; "
            "1 41 6 1 .35"
        )
        soft = (BoneSpec("arm", (2, -250, 0), (2, 122, 0), arm, cap=(2, 8)), *_hand_soft(0))
        bones = (radius, ulna, styloid, ulnar_styloid, *_hand(0))
        return Layout(
            anatomy,
            bones,
            soft,
            (240, 192),
            (15, 45),
            distal_up=True,
            body_part="WRIST",
            views=("PA", "LAT", "OBL"),
        )
    if anatomy is Anatomy.THIGH:
        femur = BoneSpec(
            "femur",
            (36, 58, 0),
            (6, 450, 0),
            profile("0 24 1.5 .6 1; .08 18 3 .3 1; .2 14 5 .06 1; " + _FEMUR_DISTAL.replace(".55", ".6", 1)),
            cap=(8, 16),
            bow=(0, 6),
            physes=(0.95,),
            shaft=(0.15, 0.9),
            metaphyses=((0.82, 0.92),),
            long=True,
            joint_followers=("patella", "tibia", "fibula", "medial_malleolus", "talus", "calcaneus"),
            weight=2.0,
        )
        neck = BoneSpec(
            "femoral_neck",
            (32, 58, 0),
            (-6, 26, 9),
            profile("0 16 2 .5 1; .6 13 2 .5 1; 1 15 1.5 .6 1"),
            cap=(3, 3),
            shaft=(0.3, 0.8),
            weight=0.6,
        )
        head = _blob("femoral_head", (-10, 0, 9), (-13, 44, 9), 23.0, cap=21.0)
        trochanter = _blob("trochanter", (50, 30, -5), (46, 70, -5), 14.0, 1.2, cap=10.0)
        thigh = profile(
            "0 95 20 1 1; .21 85 16 1 1; .42 68 12 1 1; .5 54 9 1 1; .56 52 8 1 1.05; .64 57 8 1 1.05; "
            ".78 46 7 1 1; 1 34 5 1 1"
        )
        soft = (BoneSpec("thigh", (10, -40, -5), (3, 960, 5), thigh, cap=(2, 2)),)
        bones = (femur, neck, head, trochanter, *_leg(462))
        return Layout(anatomy, bones, soft, (430, 352), (190, 300), body_part="THIGH")
    arm = profile(
        "0 58 10 1 1; .14 52 9 1 1; .34 44 8 1 1; .5 40 7 1 .95; .55 38 7 1 .9; .62 40 7 1 .9; "
        ".8 33 6 1 .8; 1 26 5 1 .65"
    )
    soft = (BoneSpec("arm", (0, -30, 0), (2, 640, 0), arm, cap=(2, 2)),)
    bones = (_humerus(0, head=True), *_forearm(303))
    return Layout(Anatomy.UPPER_ARM, bones, soft, (430, 352), (150, 210), body_part="ARM")


@dataclass(frozen=True)
class Projection:
    """How limb millimetres land on the detector: view angle, mirror, rotation and placement."""

    view_angle: float  # radians about the limb axis (0: AP/PA, π/2: lateral)
    mirror: float  # +1 or -1 (u to image +x or -x)
    distal_up: bool
    rotation: float  # radians, in the image plane
    centre_px: tuple[float, float]  # where the limb point (0, centre_v) lands (x, y), pixel edges
    centre_v: float
    spacing: float  # mm per pixel
    scale: float = 1.0  # patient size: limb mm are multiplied by this

    def to_image(self, u: float, v: float, w: float) -> tuple[float, float]:
        up = u * math.cos(self.view_angle) + w * math.sin(self.view_angle)
        x = self.mirror * up * self.scale / self.spacing
        y = (-1.0 if self.distal_up else 1.0) * (v * self.scale - self.centre_v) / self.spacing
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        return (self.centre_px[0] + c * x - s * y, self.centre_px[1] + s * x + c * y)

    def shrunk(self, factor: int) -> Projection:
        """The same projection on a grid ``factor`` times coarser."""
        return Projection(
            self.view_angle,
            self.mirror,
            self.distal_up,
            self.rotation,
            (self.centre_px[0] / factor, self.centre_px[1] / factor),
            self.centre_v,
            self.spacing * factor,
            self.scale,
        )


def _smooth(values: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    """A moving average ``width`` samples wide (edges held): profiles without kinks."""
    if width < 2:
        return values
    kernel = np.ones(width) / width
    padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def project(
    spec: BoneSpec, proj: Projection, *, mu_shell: float, mu_inner: float, smooth_mm: float = 4.0
) -> Tube:
    """The tube of ``spec`` as seen through ``proj`` (pixels)."""
    p0 = proj.to_image(*spec.start)
    p1 = proj.to_image(*spec.end)
    length = max(2.0, math.dist(p0, p1))
    ux, uy = (p1[0] - p0[0]) / length, (p1[1] - p0[1]) / length
    n = math.ceil(length)
    s = np.arange(n + 1, dtype=np.float64)
    t = s / length
    prof = np.array(spec.profile, dtype=np.float64)
    mm = proj.scale
    radius = np.interp(t, prof[:, 0], prof[:, 1]) * mm
    cortex = np.interp(t, prof[:, 0], prof[:, 2]) * mm
    density = np.interp(t, prof[:, 0], prof[:, 3])
    aspect = np.interp(t, prof[:, 0], prof[:, 4])
    width = int(smooth_mm / proj.spacing)
    radius, cortex, density, aspect = (_smooth(x, width) for x in (radius, cortex, density, aspect))
    # rounded ends: an elliptical cap over ``cap`` mm
    along = s * proj.spacing  # mm along the projected axis from the start
    total = length * proj.spacing
    for end_mm, dist in ((spec.cap[0] * mm, along), (spec.cap[1] * mm, total - along)):
        if end_mm > 0:
            x = np.clip(1.0 - dist / end_mm, 0.0, 1.0)
            radius = radius * np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
    radius[0] = radius[-1] = 0.0
    inner = np.clip(radius - cortex, 0.0, None)
    # the ellipse seen at the view angle: projected half width h, path factor a·b/h²
    cos2, sin2 = math.cos(proj.view_angle) ** 2, math.sin(proj.view_angle) ** 2
    a, b = radius, radius * aspect
    h = np.sqrt(a * a * cos2 + b * b * sin2)
    factor = np.where(h > 0, a * b / np.maximum(h * h, 1e-9), 1.0)
    h_in = inner * np.sqrt(cos2 + aspect * aspect * sin2)
    # bow: the axis midpoint displaced in 3-D, measured across the projected axis
    mid = [(a0 + a1) / 2 for a0, a1 in zip(spec.start, spec.end, strict=True)]
    bent = proj.to_image(mid[0] + spec.bow[0], mid[1], mid[2] + spec.bow[1])
    straight = proj.to_image(*mid)
    bow_px = (bent[0] - straight[0]) * -uy + (bent[1] - straight[1]) * ux
    bow = bow_px * np.sin(np.pi * np.clip(t, 0, 1))
    h_px, h_in_px = h / proj.spacing, h_in / proj.spacing
    return Tube(
        name=spec.name,
        x0=p0[0],
        y0=p0[1],
        ux=ux,
        uy=uy,
        outer2=(h_px * h_px).astype(np.float32),
        inner2=(h_in_px * h_in_px).astype(np.float32),
        weight=(2.0 * proj.spacing * factor).astype(np.float32),
        marrow=(mu_inner * density).astype(np.float32),
        bow=bow.astype(np.float32),
        mu_shell=mu_shell,
    )
