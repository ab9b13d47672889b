"""Who each synthetic patient is and what is broken: the draws made before any pixel.

Every choice comes from ``numpy.random.default_rng([seed, patient, …])``, so a patient is the same
whatever else is generated, and the label never steers what it must not (age, anatomy, exposure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from radstack.ai._anatomy import Anatomy, BoneSpec, Layout, layout
from radstack.errors import BadRequest


class FractureType(StrEnum):
    TRANSVERSE = "transverse"
    OBLIQUE = "oblique"
    SPIRAL = "spiral"
    COMMINUTED = "comminuted"
    BUCKLE = "buckle"
    HAIRLINE = "hairline"


_TYPES = tuple(FractureType)
#: Default image sizes (rows, columns): a 43 × 35 cm detector at 0.172 mm, a 24 × 19 cm one at 0.16 mm,
#: and RG3 as it is (CR, 1760², 0.2 mm).
LONG_BONE_SIZE = (2500, 2048)
WRIST_SIZE = (1500, 1200)
RG3_SIZE = 1760
RG3_NAME = "RG3_UNCI.dcm"

_ANATOMY_WEIGHTS = {
    Anatomy.LOWER_LEG: 0.3,
    Anatomy.FOREARM: 0.2,
    Anatomy.WRIST: 0.3,
    Anatomy.THIGH: 0.1,
    Anatomy.UPPER_ARM: 0.1,
}
_CHILD_SHARE = 0.3  # of every class: age never tells the label


class SyntheticDataError(BadRequest):
    """The synthetic data cannot be made as asked (bad option, missing RG3, non-empty target)."""


@dataclass(frozen=True)
class Options:
    """How a synthetic data set is made (the same options and seed give the same images).

    Attributes
    ----------
    fracture_rate
        Share of patients with a fracture (0 to 1).
    scale
        Image size relative to the realistic defaults (2500 × 2048 long bones, 1500 × 1200 wrists,
        1760² RG3); 0.1 makes tests fast.
    size
        ``(rows, columns)`` for every image instead (the field of view is fitted into it).
    images_per_patient
        Views per patient (AP/PA, lateral, oblique), each its own series of one study.
    rg3_rate
        Share of patients composited onto pydicom-data's real RG3 radiograph (0: none, and then
        pydicom-data is not needed).
    """

    fracture_rate: float = 0.5
    scale: float = 1.0
    size: tuple[int, int] | None = None
    images_per_patient: int = 1
    rg3_rate: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.fracture_rate <= 1.0:
            raise SyntheticDataError(f"fracture rate {self.fracture_rate} is not between 0 and 1")
        if not 0.0 <= self.rg3_rate <= 1.0:
            raise SyntheticDataError(f"RG3 rate {self.rg3_rate} is not between 0 and 1")
        if not 0.02 <= self.scale <= 2.0:
            raise SyntheticDataError(f"scale {self.scale} is not between 0.02 and 2")
        if self.size is not None and min(self.size) < 32:
            raise SyntheticDataError(f"size {self.size[0]}x{self.size[1]} is below 32 pixels")
        if not 1 <= self.images_per_patient <= 3:
            raise SyntheticDataError(f"{self.images_per_patient} images per patient: 1 to 3 views are made")


# --- planning: who the patient is, what is broken --------------------------------------------------


@dataclass(frozen=True)
class Patient:
    index: int
    composite: bool
    anatomy: Anatomy
    side: str
    child: bool
    age: int
    sex: str
    size: float
    fracture: FractureType | None
    displaced: bool
    bone: str
    site: float  # fraction of the bone's length
    motion: tuple[float, float, float]  # across (× diameter), along (× diameter), angle (radians)
    pair_fractured: bool
    pair_offset: float  # mm along the limb between the two fracture levels


def fracture_type(seed: int, patient: int) -> FractureType:
    """Types cycle through a seeded permutation per six patients, so even a short run holds each."""
    order = np.random.default_rng([seed, patient // len(_TYPES), 0xF7]).permutation(len(_TYPES))
    return _TYPES[int(order[patient % len(_TYPES)])]


def _candidates(lay: Layout, kind: FractureType) -> list[tuple[BoneSpec, tuple[float, float]]]:
    out = []
    for spec in lay.bones:
        if kind is FractureType.BUCKLE:
            out += [(spec, zone) for zone in spec.metaphyses]
        elif spec.shaft is not None and (
            spec.long or kind not in (FractureType.SPIRAL, FractureType.COMMINUTED)
        ):
            lo, hi = spec.shaft
            if kind in (FractureType.SPIRAL, FractureType.COMMINUTED):
                lo, hi = max(lo, 0.22), min(hi, 0.8)
            out.append((spec, (lo, hi)))
    return out


def plan(seed: int, patient: int, options: Options) -> Patient:
    """Draw patient ``patient`` of data set ``seed``.

    Every patient gets a fracture type, a site, and a displacement, and all are drawn whether or not
    the patient's bone breaks: the label is one draw that nothing else depends on, so where the limb
    lies, how it is collimated, the patient's age and size are the same for both classes.
    """
    rng = np.random.default_rng([seed, patient, 0x9A71])
    composite = options.rg3_rate > 0 and rng.random() < options.rg3_rate
    names = list(_ANATOMY_WEIGHTS)
    weights = np.array(list(_ANATOMY_WEIGHTS.values()))
    anatomy = (
        Anatomy.LOWER_LEG if composite else names[int(rng.choice(len(names), p=weights / weights.sum()))]
    )
    fractured = rng.random() < options.fracture_rate
    kind = fracture_type(seed, patient)
    # buckles are children's fractures; the other types leave a share that makes children 30 % overall
    share = (_CHILD_SHARE - 1 / len(_TYPES)) / (1 - 1 / len(_TYPES))
    child = not composite and (kind is FractureType.BUCKLE or rng.random() < share)
    age = int(rng.integers(4, 15)) if child else int(rng.integers(18, 90))
    size = (0.5 + 0.035 * (age - 4)) * rng.uniform(0.95, 1.05) if child else rng.uniform(0.9, 1.1)
    side = "R" if composite else str(rng.choice(["L", "R"]))
    displaced = (
        kind in (FractureType.TRANSVERSE, FractureType.OBLIQUE, FractureType.SPIRAL, FractureType.COMMINUTED)
        and rng.random() < 0.45
    )
    if composite:
        bone = str(rng.choice(["tibia", "fibula"], p=[0.6, 0.4]))
        zone = RG3_BUCKLE_ZONES[bone] if kind is FractureType.BUCKLE else RG3_ZONES[bone]
        site = float(rng.uniform(*zone))
    else:
        candidates = _candidates(layout(anatomy), kind)
        w = np.array([spec.weight for spec, _ in candidates])
        spec, zone = candidates[int(rng.choice(len(candidates), p=w / w.sum()))]
        bone, site = spec.name, float(rng.uniform(*zone))
    motion = (
        float(rng.uniform(0.15, 0.9) * rng.choice([-1, 1])),
        float(rng.uniform(-0.6, 0.25)),
        float(np.radians(rng.uniform(-14, 14))),
    )
    return Patient(
        index=patient,
        composite=composite,
        anatomy=anatomy,
        side=side,
        child=child,
        age=age,
        sex=str(rng.choice(["F", "M"])),
        size=float(size),
        fracture=kind if fractured else None,
        displaced=displaced and fractured,
        bone=bone,
        site=site,
        motion=motion if displaced else (0.0, 0.0, 0.0),
        pair_fractured=displaced and rng.random() < 0.8,
        pair_offset=float(rng.uniform(-45, 45)),
    )


#: Where RG3's traced shafts may break (fractions of the traced length), and where a buckle goes.
RG3_ZONES = {"tibia": (0.06, 0.92), "fibula": (0.06, 0.94)}
RG3_BUCKLE_ZONES = {"tibia": (0.8, 0.92), "fibula": (0.82, 0.94)}


@dataclass
class Finding:
    bone: str
    kind: FractureType
    displaced: bool
    points: NDArray[np.float64]  # image points the box must cover


@dataclass
class Rendered:
    """An image as drawn: stored pixel values, its findings with their boxes, and what the header needs."""

    pixels: NDArray[np.uint16]
    findings: list[Finding]
    boxes: list[list[int]]
    view: str
    spacing: float
    header: dict[str, Any] = field(default_factory=dict)
