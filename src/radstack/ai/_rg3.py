"""Fractures composited onto a real radiograph: RG3 of ``pydicom-data`` (a lower leg, CR, 1760²,
10-bit, MONOCHROME1, lossy JPEG 2000 30:1 in its history).

The tibia's and fibula's outer cortical edges were traced from its pixels. Under each bone the soft
tissue is estimated by a straight line between the two sides; what lies above it is the bone's own
share of the image, which the fracture's fragments then carry (moved, cut by the gap) exactly as a
synthetic bone's: real texture, real noise, real cortex.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

from radstack.ai._fractures import box, break_bone
from radstack.ai._plan import RG3_NAME, RG3_SIZE, Finding, Options, Patient, Rendered, SyntheticDataError
from radstack.ai._radiograph import F32, IDENTITY, WHOLE, Rigid, Tube, quantum_noise, render_tube, resize

__all__ = ["RG3_SOP_INSTANCE_UID", "composite"]

#: Outer cortical edges (row, left column, right column) of RG3's tibia and fibula, traced from its
#: pixels (1760², rows 0 to 1000: the shafts, above the tibia's non-ossifying fibroma and the ankle).
_RG3_EDGES = {
    "tibia": "0 798 925; 50 799 923; 100 800 921; 150 799 918; 200 799 916; 250 798 915; 300 797 913; 350 796 912; "
    "400 795 910; 450 794 909; 500 794 907; 550 794 905; 600 793 904; 650 793 902; 700 793 901; 750 792 900; "
    "800 792 899; 850 791 899; 900 791 898; 950 789 899; 1000 787 902",
    "fibula": "0 1022 1061; 50 1018 1058; 100 1014 1056; 150 1011 1053; 200 1007 1050; 250 999 1046; 300 995 1042; "
    "350 991 1039; 400 986 1035; 450 983 1032; 500 979 1028; 550 975 1025; 600 972 1021; 650 969 1018; "
    "700 966 1014; 750 964 1011; 800 962 1007; 850 959 1003; 900 957 999; 950 954 995; 1000 952 992; 1050 949 988",
}
_RG3_CORTEX = {"tibia": 0.3, "fibula": 0.35}  # cortex share of the radius
RG3_SPACING = 350.0 / RG3_SIZE  # a 35 × 35 cm cassette
#: RG3 itself, which composites name as their source (Source Image Sequence).
RG3_SOP_INSTANCE_UID = "1.3.6.1.4.1.5962.1.1.11.1.3.20040826185059.5457"


def _edges(bone: str) -> NDArray[np.float64]:
    return np.array([[float(v) for v in row.split()] for row in _RG3_EDGES[bone].split(";")])


class _RG3Bone(Tube):
    """A bone of RG3: its pixels above the soft tissue behind it (``part``), sampled where a fragment
    came from; the tube's radii and bow come from the traced edges."""

    part: F32

    def evaluate(self, s: F32, d: F32, s_range: tuple[float, float] | None = None) -> tuple[F32, F32]:
        i = s.astype(np.int32)
        np.clip(i, 0, self.length, out=i)
        db = d - self.bow[i]
        rows, columns = self.part.shape
        x = (np.float32(self.x0) - d).astype(np.int32)
        y = (np.float32(self.y0) + s).astype(np.int32)
        np.clip(x, 0, columns - 1, out=x)
        np.clip(y, 0, rows - 1, out=y)
        value: F32 = self.part[y, x]
        inside = (s >= 0) & (s < self.length + 1)  # rows 0 … length of the traced strip
        value = value * inside
        if self.modifiers:
            s_min, s_max = s_range or (float(s.min()), float(s.max()))
            for modifier in self.modifiers:
                if modifier.s_hi >= s_min and modifier.s_lo <= s_max:
                    value = modifier.apply(value, s, db, self)
        return value, db


@functools.lru_cache(maxsize=1)
def _rg3_native() -> tuple[F32, dict[str, F32]]:
    """RG3 as brightness (MONOCHROME1 inverted, 0..1023) and, per bone, the bone's share of it.

    Raises
    ------
    SyntheticDataError
        pydicom-data is not installed or has no RG3_UNCI.dcm.
    """
    try:
        from pydicom import dcmread
        from pydicom.data import get_testdata_file

        path = get_testdata_file(RG3_NAME)
    except (ImportError, ValueError, OSError) as exc:  # pragma: no cover - depends on the environment
        raise SyntheticDataError(
            f"compositing onto RG3 needs pydicom-data ({type(exc).__name__}); install it or use an RG3 rate of 0"
        ) from exc
    if path is None:
        raise SyntheticDataError("pydicom-data has no RG3_UNCI.dcm; install it or use an RG3 rate of 0")
    ds = dcmread(path)
    raw = ds.pixel_array.astype(np.float32)
    top = float((1 << int(ds.BitsStored)) - 1)
    # MONOCHROME1: the lowest value is the brightest; turn it round so bone is bright
    bright = top - raw if ds.PhotometricInterpretation == "MONOCHROME1" else raw
    parts = {}
    for bone in _RG3_EDGES:
        table = _edges(bone)
        rows = np.arange(int(table[-1, 0]) + 1)
        left = np.interp(rows, table[:, 0], table[:, 1])
        right = np.interp(rows, table[:, 0], table[:, 2])
        part = np.zeros_like(bright)
        margin = 4
        xl = np.round(left - margin).astype(int)
        xr = np.round(right + margin).astype(int)
        # the soft tissue under the bone: a straight line between the two sides, smoothed along rows
        v_left = np.array([bright[r, xl[r] - 5 : xl[r]].mean() for r in rows])
        v_right = np.array([bright[r, xr[r] + 1 : xr[r] + 6].mean() for r in rows])
        kernel = np.ones(9) / 9
        v_left = np.convolve(np.pad(v_left, 4, mode="edge"), kernel, "valid")
        v_right = np.convolve(np.pad(v_right, 4, mode="edge"), kernel, "valid")
        for r in rows:
            xs = np.arange(xl[r], xr[r] + 1)
            base = v_left[r] + (v_right[r] - v_left[r]) * (xs - xl[r]) / max(1, xr[r] - xl[r])
            part[r, xs] = bright[r, xs] - base
        parts[bone] = part
    return bright, parts


@functools.lru_cache(maxsize=4)
def _rg3(size: int) -> tuple[F32, dict[str, F32]]:
    bright, parts = _rg3_native()
    if size == RG3_SIZE:
        return bright, parts
    return resize(bright, size, size), {bone: resize(part, size, size) for bone, part in parts.items()}


def _rg3_tube(bone: str, size: int, part: F32) -> _RG3Bone:
    factor = size / RG3_SIZE
    table = _edges(bone) * factor
    length = math.ceil(table[-1, 0])
    s = np.arange(length + 1, dtype=np.float64)
    left = np.interp(s, table[:, 0], table[:, 1])
    right = np.interp(s, table[:, 0], table[:, 2])
    centre, radius = (left + right) / 2, (right - left) / 2
    x0 = float(centre[0])
    inner = radius * (1 - _RG3_CORTEX[bone])
    # scale of the cortex model (for a buckle's bulge) from the bone's own brightness
    peak = float(np.median(part.max(axis=1)[: length + 1]))
    chord = float(np.median(np.sqrt(np.maximum(radius**2 - inner**2, 1e-6))))
    tube = _RG3Bone(
        name=bone,
        x0=x0,
        y0=0.0,
        ux=0.0,
        uy=1.0,
        outer2=(radius * radius).astype(np.float32),
        inner2=(inner * inner).astype(np.float32),
        weight=np.full(length + 1, peak / max(chord, 1e-6), dtype=np.float32),
        marrow=np.zeros(length + 1, dtype=np.float32),
        bow=(-(centre - x0)).astype(np.float32),
        mu_shell=1.0,
    )
    tube.part = part
    return tube


def composite(seed: int, patient: Patient, view_index: int, options: Options) -> Rendered:
    rng = np.random.default_rng([seed, patient.index, 0x263, view_index])
    size = max(32, round(RG3_SIZE * options.scale)) if options.size is None else min(options.size)
    bright, parts = _rg3(size)
    image = bright.copy()
    spacing = RG3_SPACING * RG3_SIZE / size
    px_mm = 1.0 / spacing
    findings: list[Finding] = []
    if patient.fracture is not None:
        tubes = {bone: _rg3_tube(bone, size, part) for bone, part in parts.items()}
        tube = tubes[patient.bone]
        s0 = patient.site * tube.length
        motion = IDENTITY
        if patient.displaced:
            # angulation about the end of the traced shaft: the fragment stays joined to what lies below
            pivot = tube.to_image(np.array([float(tube.length)]), np.array([0.0]))[0]
            reach = max(1.0, tube.length - s0)
            angle = patient.motion[0] * 0.45 * 2 * tube.radius(s0) / reach
            motion = Rigid((float(pivot[0]), float(pivot[1])), float(angle), (0.0, 0.0))
        breaking = np.random.default_rng([seed, patient.index, 0xF8AC, view_index])  # its own stream
        pieces, modifiers, points = break_bone(
            breaking, tube, patient.fracture, s0, motion, px_mm, patient.displaced
        )
        tube.modifiers.extend(modifiers)
        findings.append(Finding(tube.name, patient.fracture, patient.displaced, points))
        image -= parts[tube.name]  # the bone is put back by its fragments
        render_tube(image, tube, pieces if pieces is not None else WHOLE, band=max(48, size // 10))
    # like another processing of the same plate: fresh noise, a tone curve, a bit depth
    image += quantum_noise(rng, image.shape) * np.float32(rng.uniform(0.5, 3.0))
    np.rint(image, out=image)
    np.clip(image, 0, 1023, out=image)
    bits = int(rng.choice([12, 14, 15, 16], p=[0.3, 0.3, 0.1, 0.3]))
    top = (1 << bits) - 1
    x = np.linspace(0, 1, 1024)
    curve = x ** rng.uniform(0.85, 1.2)
    lut = np.round(curve * top * rng.uniform(0.9, 1.0)).astype(np.uint16)
    pixels: NDArray[np.uint16] = lut[image.astype(np.uint16)]
    if options.size is not None and options.size != (size, size):
        canvas = np.full(options.size, lut[-1], dtype=np.uint16)  # the collimated (white) border
        y0, x0 = (options.size[0] - size) // 2, (options.size[1] - size) // 2
        canvas[y0 : y0 + size, x0 : x0 + size] = pixels
        pixels = canvas
        for finding in findings:
            finding.points = finding.points + np.array([x0, y0])
    rows, columns = pixels.shape
    boxes = [box(f.points, max(1.5, 1.0 * px_mm), rows, columns) for f in findings]
    sample = pixels[:: max(1, rows // 256), :: max(1, columns // 256)]
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    header = {
        "bits": bits,
        "window": (round((p1 + p99) / 2), max(2, round((p99 - p1) * 1.1))),
        "body_part": "LEG",
        "distal_up": False,
        "mirror": 1.0,
    }
    return Rendered(pixels, findings, boxes, "AP", spacing, header)
