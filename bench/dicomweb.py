"""Side-by-side DICOMweb benchmark: radstack against Orthanc 1.10 (+ DICOMweb plugin), same data, same client.

Generates (once, cached under ``bench/out/data``) a CT cohort of 512² int16 slices and 2500×2048 12-bit DX
radiographs, stores them in each server with STOW-RS (PS3.18 §10.5) from two client threads, then times
QIDO-RS (§10.6), series metadata and frames (WADO-RS, §10.4) and a rendered DX preview, and prints p50/p95
per server, the Orthanc/radstack ratio and whether the issue's target is met. Targets are ratios to Orthanc
measured in the same run, never absolute numbers from another machine (except the two millisecond budgets
the issue states).

Run: ``.venv/bin/python bench/dicomweb.py [--ct 200] [--dx 10] [--repeat 50] [--no-orthanc] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import PIL.Image
import pydicom
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from _common import Timing, child_server, format_table, free_port, radstack_token, raise_on_sigterm

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
#: Bump when the generated data changes, so an old cache is not reused.
GENERATOR_VERSION = 2

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)

STOW_THREADS = 2
STOW_BATCH_INSTANCES = 10
#: Large DX files are sent in smaller batches so that both STOW threads have work.
STOW_BATCH_BYTES = 32 * 1024**2
WARMUP = 3
#: Pause after ingest so that background work triggered by it (metadata documents) does not land in the
#: first timed reads; both servers get the same pause.
SETTLE_S = 2.0


# --------------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------------


class Kind(StrEnum):
    CT = "CT"
    DX = "DX"


@dataclass(frozen=True)
class Instance:
    """One generated Part-10 file and the UIDs the timed steps address it by."""

    kind: Kind
    path: str  # relative to the data directory
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str


@dataclass(frozen=True)
class Cohort:
    """The generated data: where it lies, what it holds, and how long generating it took."""

    root: Path
    instances: tuple[Instance, ...]
    seconds: float
    generated: bool

    def of_kind(self, kind: Kind) -> list[Instance]:
        return [instance for instance in self.instances if instance.kind is kind]

    def largest_ct_series(self) -> list[Instance]:
        by_series: dict[str, list[Instance]] = {}
        for instance in self.of_kind(Kind.CT):
            by_series.setdefault(instance.series_uid, []).append(instance)
        return max(by_series.values(), key=len)


def _soft_ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, edge: float = 0.04
) -> np.ndarray:
    """A mask that is 1 inside the ellipse and falls to 0 over ``edge`` (anatomy has no hard edges)."""
    r2 = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    mask: np.ndarray = np.clip((1.0 - r2) / edge, 0.0, 1.0)
    return mask


def _blend(image: np.ndarray, value: float | np.ndarray, mask: np.ndarray) -> np.ndarray:
    blended: np.ndarray = image + (value - image) * mask
    return blended


def ct_slice_hu(x: np.ndarray, y: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """An axial slice of a torso-like phantom in HU at relative position ``t`` (0 = head end) of a series.

    Fat, muscle, lungs (upper slices), liver (lower slices), vertebra and a table, with a low-frequency
    texture and CT-like noise, so that a lossless codec sees realistic entropy.
    """
    grow = 0.05 * np.sin(np.pi * t)
    image = np.full(x.shape, -1000.0, dtype=np.float32)
    image = _blend(image, 200.0, ((np.abs(y - 0.8) < 0.025) & (np.abs(x) < 0.9)).astype(np.float32))
    image = _blend(image, -95.0, _soft_ellipse(x, y, 0.0, 0.05, 0.80 + grow, 0.58 + grow, 0.03))
    texture = 25.0 * np.sin(5.0 * x + 3.0 * t) * np.cos(4.0 * y - 2.0 * t)
    image = _blend(image, 45.0 + texture, _soft_ellipse(x, y, 0.0, 0.05, 0.72 + grow, 0.50 + grow))
    if t < 0.65:
        lung_size = 0.25 * (1.0 - 0.6 * t)
        for side in (-1.0, 1.0):
            lung = _soft_ellipse(x, y, side * 0.33, -0.02, lung_size, lung_size * 1.5, 0.15)
            image = _blend(image, -840.0 + 60.0 * np.cos(40.0 * x) * np.sin(37.0 * y), lung)
    else:
        image = _blend(image, 60.0 + 0.5 * texture, _soft_ellipse(x, y, -0.30, 0.02, 0.32, 0.28, 0.08))
    image = _blend(image, 700.0, _soft_ellipse(x, y, 0.0, 0.38, 0.10, 0.10, 0.15))
    image = _blend(image, 250.0, _soft_ellipse(x, y, 0.0, 0.38, 0.07, 0.07, 0.2))
    return image + rng.normal(0.0, 12.0, x.shape).astype(np.float32)


def dx_image(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A chest-radiograph-like 12-bit image: exposure gradient, body, lungs, ribs, spine, quantum noise."""
    jitter = rng.uniform(-0.03, 0.03, size=4)
    image = 250.0 + 120.0 * y + 80.0 * x**2
    image = _blend(image, 1900.0 + 150.0 * y, _soft_ellipse(x, y, 0.0, 0.1, 0.85 + jitter[0], 1.05, 0.05))
    for side in (-1.0, 1.0):
        lung = _soft_ellipse(x, y, side * (0.38 + jitter[1]), -0.05, 0.30, 0.62 + jitter[2], 0.25)
        image = _blend(image, 950.0 + 250.0 * (y + 0.6) + 120.0 * np.abs(x), lung)
    for rib in range(10):
        centre = -0.62 + 0.13 * rib + jitter[3] + 0.35 * x**2
        band = np.clip(1.0 - np.abs(y - centre) / 0.025, 0.0, 1.0) * (np.abs(x) < 0.75)
        image = image + 420.0 * band
    image = _blend(image, 2700.0 + 100.0 * np.cos(30.0 * y), np.clip(1.0 - np.abs(x) / 0.07, 0.0, 1.0))
    image = image + rng.normal(0.0, 18.0, x.shape)
    return np.clip(image, 0, 4095)


def _base_dataset(
    sop_class: UID, sop_uid: UID, patient: tuple[str, str], study: tuple[str, int], series_uid: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    study_uid, study_number = study
    ds.StudyInstanceUID = study_uid
    ds.StudyID = str(study_number)
    ds.StudyDate = f"2024{1 + study_number % 12:02d}{1 + study_number % 28:02d}"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{study_number:05d}"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.Manufacturer = "radstack bench"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def _save(ds: Dataset, pixels: np.ndarray, path: Path) -> None:
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def generate_cohort(root: Path, ct: int, dx: int, ct_studies: int) -> list[Instance]:
    """Write ``ct`` CT slices over ``ct_studies`` studies (two studies per patient) and ``dx`` radiographs.

    Half of the slices form one long series (the one the series-level steps address, as a viewer would);
    the rest are spread over the other studies so that QIDO has many studies to list.
    """
    rng = np.random.default_rng(20240601)
    instances: list[Instance] = []
    ct_studies = max(1, min(ct_studies, ct))
    others = (
        [len(part) for part in np.array_split(np.arange(ct // 2), ct_studies - 1)] if ct_studies > 1 else []
    )
    sizes = [size for size in (ct - sum(others), *others) if size]
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    x, y = (xx - 255.5) / 256.0, (yy - 255.5) / 256.0
    for study_number, size in enumerate(sizes):
        patient_number = study_number // 2
        patient = (f"BENCH^CT{patient_number:03d}", f"BENCH-CT-{patient_number:03d}")
        study = (generate_uid(), study_number)
        series_uid = generate_uid()
        for index in range(size):
            sop_uid = generate_uid()
            ds = _base_dataset(CT_IMAGE_STORAGE, sop_uid, patient, study, series_uid)
            ds.Modality = "CT"
            ds.StudyDescription = "CT CHEST ABDOMEN"
            ds.SeriesDescription = "AXIAL 1.25mm"
            ds.InstanceNumber = index + 1
            ds.FrameOfReferenceUID = series_uid
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * index]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceThickness = 1.25
            ds.PixelSpacing = [0.9765625, 0.9765625]
            ds.KVP = 120
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 400
            hu = ct_slice_hu(x, y, index / max(1, size - 1), rng)
            stored = np.clip(np.rint(hu + 1024.0), -32768, 32767).astype("<i2")
            relative = f"ct/{study_number:03d}/{index:04d}.dcm"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            _save(ds, stored, root / relative)
            instances.append(Instance(Kind.CT, relative, patient[1], study[0], series_uid, sop_uid))
    yy, xx = np.mgrid[0:2500, 0:2048].astype(np.float32)
    x, y = (xx - 1023.5) / 1024.0, (yy - 1249.5) / 1250.0
    for number in range(dx):
        patient = (f"BENCH^DX{number:03d}", f"BENCH-DX-{number:03d}")
        study = (generate_uid(), 1000 + number)
        series_uid, sop_uid = generate_uid(), generate_uid()
        ds = _base_dataset(DX_FOR_PRESENTATION, sop_uid, patient, study, series_uid)
        ds.Modality = "DX"
        ds.StudyDescription = "XR CHEST PA"
        ds.SeriesDescription = "PA"
        ds.InstanceNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PatientOrientation = ["L", "F"]
        relative = f"dx/{number:03d}.dcm"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        _save(ds, dx_image(x, y, rng).astype("<u2"), root / relative)
        instances.append(Instance(Kind.DX, relative, patient[1], study[0], series_uid, sop_uid))
    return instances


def load_or_generate(ct: int, dx: int, ct_studies: int) -> Cohort:
    """The cohort for these sizes from the cache, generating it (into a fresh directory) the first time."""
    root = OUT_DIR / "data" / f"v{GENERATOR_VERSION}-ct{ct}x{ct_studies}-dx{dx}"
    manifest = root / "manifest.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        instances = [Instance(**{**row, "kind": Kind(row["kind"])}) for row in saved["instances"]]
        return Cohort(root, tuple(instances), saved["seconds"], generated=False)
    started = time.perf_counter()
    staging = root.with_name(f"{root.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        instances = generate_cohort(staging, ct, dx, ct_studies)
        seconds = time.perf_counter() - started
        rows = [instance.__dict__ for instance in instances]
        (staging / "manifest.json").write_text(json.dumps({"seconds": seconds, "instances": rows}))
        staging.rename(root)  # the manifest appears only with a complete cohort
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Cohort(root, tuple(instances), seconds, generated=True)


# --------------------------------------------------------------------------------------------------------
# Servers: the only place where radstack and Orthanc differ
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A running DICOMweb server as the client sees it."""

    name: str
    root: str  # DICOMweb root URL, no trailing slash
    version: str
    #: Sent with every request (radstack's bearer token).
    headers: dict[str, str] = field(default_factory=dict)


def _work_dir(name: str, keep: bool, stack: contextlib.ExitStack) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=OUT_DIR))
    if keep:
        stack.callback(print, f"  kept {name} data in {path}")
    else:
        stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path


def _radstack_version() -> str:
    version = importlib.metadata.version("radstack")
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        version += f" (git {commit}, working tree)"
    return version


def start_radstack(stack: contextlib.ExitStack, keep: bool) -> Server:
    work = _work_dir("radstack", keep, stack)
    port = free_port()
    binary = Path(sys.executable).with_name("radstack")
    argv = [str(binary if binary.exists() else "radstack"), "serve", "--data-dir", str(work / "data")]
    argv += ["--http-port", str(port), "--dicom-port", str(free_port())]
    base = f"http://127.0.0.1:{port}"
    headers = radstack_token(Path(argv[0]), work / "data")
    stack.enter_context(
        child_server(
            "radstack",
            argv,
            ready_url=f"{base}/readyz",
            log_path=work / "server.log",
            cwd=work,
            headers=headers,
        )
    )
    return Server("radstack", f"{base}/dicomweb", _radstack_version(), headers)


def orthanc_plugin() -> Path | None:
    """The DICOMweb plugin library, or None when Orthanc or the plugin is not installed."""
    if not ORTHANC_BINARY.exists():
        return None
    return next((path for path in ORTHANC_PLUGIN_CANDIDATES if path.exists()), None)


def start_orthanc(stack: contextlib.ExitStack, keep: bool) -> Server:
    """Orthanc with its DICOMweb plugin, configured as shipped except for paths, ports and access."""
    plugin = orthanc_plugin()
    assert plugin is not None
    work = _work_dir("orthanc", keep, stack)
    port = free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    base = f"http://127.0.0.1:{port}"
    argv = [str(ORTHANC_BINARY), str(work / "orthanc.json")]
    stack.enter_context(
        child_server("orthanc", argv, ready_url=f"{base}/system", log_path=work / "server.log", cwd=work)
    )
    system = requests.get(f"{base}/system", timeout=10).json()
    plugin_info = requests.get(f"{base}/plugins/dicom-web", timeout=10)
    plugin_version = plugin_info.json().get("Version", "?") if plugin_info.ok else "?"
    return Server(
        "orthanc", f"{base}/dicom-web", f"{system.get('Version', '?')} (DICOMweb plugin {plugin_version})"
    )


# --------------------------------------------------------------------------------------------------------
# Client: identical for both servers
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    body: bytes
    content_type: str
    instances: int


def make_batches(cohort: Cohort) -> list[Batch]:
    """STOW-RS request bodies (multipart/related; type="application/dicom"), built once before timing.

    Largest first, so the two threads finish together.
    """
    files = sorted(
        ((cohort.root / instance.path).read_bytes() for instance in cohort.instances), key=len, reverse=True
    )
    groups: list[list[bytes]] = []
    for data in files:
        last = groups[-1] if groups else None
        if (
            last is None
            or len(last) >= STOW_BATCH_INSTANCES
            or sum(map(len, last)) + len(data) > STOW_BATCH_BYTES
        ):
            groups.append([data])
        else:
            last.append(data)
    batches = []
    for group in groups:
        boundary = uuid.uuid4().hex
        parts = [
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
            for data in group
        ]
        body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        batches.append(Batch(body, content_type, len(group)))
    return batches


@dataclass(frozen=True)
class Ingest:
    instances: int
    megabytes: float
    seconds: float
    failures: tuple[str, ...]

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds


def stow(server: Server, batches: Sequence[Batch]) -> Ingest:
    """POST every batch to ``{root}/studies`` from ``STOW_THREADS`` threads; wall time of the whole load."""
    pending: queue.SimpleQueue[Batch] = queue.SimpleQueue()
    for batch in batches:
        pending.put(batch)
    failures: list[str] = []

    def worker() -> None:
        with requests.Session() as session:
            session.headers.update(server.headers)
            while True:
                try:
                    batch = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    response = session.post(
                        f"{server.root}/studies",
                        data=batch.body,
                        headers={"Content-Type": batch.content_type, "Accept": "application/dicom+json"},
                        timeout=600,
                    )
                except requests.RequestException as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                failed = _failed_sops(response)
                if response.status_code != 200 or failed:
                    failures.append(f"HTTP {response.status_code}, {failed} failed SOP(s)")

    threads = [threading.Thread(target=worker, name=f"stow-{n}") for n in range(STOW_THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    megabytes = sum(len(batch.body) for batch in batches) / 1e6
    return Ingest(sum(batch.instances for batch in batches), megabytes, seconds, tuple(failures))


def _failed_sops(response: requests.Response) -> int:
    """Entries of the STOW response's FailedSOPSequence (0008,1198), PS3.18 §10.5.3."""
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            return len(body.get("00081198", {}).get("Value", []))
    return 0


@dataclass(frozen=True)
class Request:
    path: str  # below the DICOMweb root
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Goal:
    """The issue's target for a step: a minimum Orthanc/radstack ratio and/or a p50 budget for radstack."""

    min_ratio: float | None = None
    max_p50_ms: float | None = None

    def describe(self) -> str:
        parts = []
        if self.min_ratio is not None:
            parts.append(f"≥{self.min_ratio:g}×")
        if self.max_p50_ms is not None:
            parts.append(f"p50≤{self.max_p50_ms:g}ms")
        return ", ".join(parts) or "info"

    def met(self, ratio: float | None, p50_ms: float | None, *, failed: bool = False) -> str:
        """``yes``, ``NO``, ``?`` (a ratio without Orthanc), or empty for a step without a target."""
        if failed:
            return "NO" if self.min_ratio is not None or self.max_p50_ms is not None else ""
        checks: list[bool | None] = []
        if self.min_ratio is not None:
            checks.append(None if ratio is None else ratio >= self.min_ratio)
        if self.max_p50_ms is not None:
            checks.append(None if p50_ms is None else p50_ms <= self.max_p50_ms)
        if not checks:
            return ""
        if False in checks:
            return "NO"
        return "?" if None in checks else "yes"


@dataclass(frozen=True)
class Step:
    name: str
    requests: tuple[Request, ...]  # used round-robin, as a viewer walks through slices
    repeat: int
    goal: Goal


@dataclass(frozen=True)
class Outcome:
    timing: Timing | None
    error: str | None
    status: int | None = None
    content_type: str = ""
    size: int = 0
    shape: str = ""  # "30 items" for a JSON array, "419×512" for an image

    def describe(self) -> str:
        if self.error:
            return self.error
        shape = f", {self.shape}" if self.shape else ""
        return f"HTTP {self.status}, {self.size:,} B{shape}, {self.content_type}"


def _shape(content_type: str, body: bytes) -> str:
    """What a reader checks first: how many results a JSON array holds, how large an image is."""
    with contextlib.suppress(ValueError, OSError):
        if "json" in content_type:
            parsed = json.loads(body)
            return f"{len(parsed)} items" if isinstance(parsed, list) else ""
        if content_type.startswith("image/"):
            width, height = PIL.Image.open(io.BytesIO(body)).size
            return f"{width}×{height} px"
    return ""


# JSON is asked for gzipped, as a browser would. Pixel data is asked for without content coding: Orthanc
# (HttpCompressionEnabled, on by default) gzips a frame when asked, which took ~0.9 s for a 10 MB DX frame
# against ~50 ms plain here, and timing that would flatter radstack rather than measure it.
JSON_GZIP = {"Accept-Encoding": "gzip"}
BINARY_PLAIN = {"Accept-Encoding": "identity"}
QIDO = {"Accept": "application/dicom+json", **JSON_GZIP}
METADATA = {"Accept": "application/dicom+json", **JSON_GZIP}
FRAME_STORED = {
    "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    **BINARY_PLAIN,
}
FRAME_UNCOMPRESSED = {"Accept": 'multipart/related; type="application/octet-stream"', **BINARY_PLAIN}
JPEG = {"Accept": "image/jpeg", **BINARY_PLAIN}


def _instance_path(instance: Instance) -> str:
    return f"/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}"


def plan_steps(cohort: Cohort, repeat: int) -> list[Step]:
    """The timed requests, addressed by the cohort's UIDs; the same list is run against every server."""
    series = cohort.largest_ct_series()
    first = series[0]
    series_path = f"/studies/{first.study_uid}/series/{first.series_uid}"
    slices = series[len(series) // 4 : len(series) * 3 // 4] or series
    radiographs = cohort.of_kind(Kind.DX)
    dx_repeat = max(5, round(repeat * 0.4))

    def frames(instances: Sequence[Instance], headers: Mapping[str, str]) -> tuple[Request, ...]:
        return tuple(Request(f"{_instance_path(instance)}/frames/1", headers) for instance in instances)

    steps = [
        # No match: the cost of one request through each HTTP stack and this client, no target.
        Step("QIDO no match (floor)", (Request("/studies?PatientID=NO-SUCH-ID", QIDO),), repeat, Goal()),
        Step("QIDO all studies", (Request("/studies", QIDO),), repeat, Goal(min_ratio=3)),
        Step(
            "QIDO studies by PatientID",
            (Request(f"/studies?PatientID={first.patient_id}", QIDO),),
            repeat,
            Goal(3),
        ),
        Step("QIDO instances of a series", (Request(f"{series_path}/instances", QIDO),), repeat, Goal(3)),
        Step(
            f"series metadata ({len(series)} inst)",
            (Request(f"{series_path}/metadata", METADATA),),
            repeat,
            Goal(5),
        ),
        Step("CT frame, stored syntax", frames(slices, FRAME_STORED), repeat, Goal(10, 5.0)),
        Step("CT frame, uncompressed", frames(slices, FRAME_UNCOMPRESSED), repeat, Goal(10, 5.0)),
    ]
    if radiographs:
        previews = tuple(
            Request(f"{_instance_path(dx)}/rendered?viewport=512,512", JPEG) for dx in radiographs
        )
        steps += [
            Step("DX frame, stored syntax", frames(radiographs, FRAME_STORED), dx_repeat, Goal(10)),
            Step("DX frame, uncompressed", frames(radiographs, FRAME_UNCOMPRESSED), dx_repeat, Goal()),
            Step("DX rendered 512 preview", previews, dx_repeat, Goal(max_p50_ms=5.0)),
        ]
    return steps


def run_step(session: requests.Session, server: Server, step: Step) -> Outcome:
    """Time ``WARMUP + step.repeat`` requests; the first non-2xx answer ends the step as FAILED."""
    samples: list[float] = []
    response: requests.Response | None = None
    for n in range(WARMUP + step.repeat):
        request = step.requests[n % len(step.requests)]
        started = time.perf_counter()
        try:
            response = session.get(
                server.root + request.path, headers=dict(request.headers), timeout=120, stream=True
            )
            # The whole (decoded) body is part of the latency. One raw read instead of .content's 10 KiB
            # chunks: measured 58 vs 80 ms for a 10 MB frame, client time that is not the server's.
            body = response.raw.read(decode_content=True)
        except requests.RequestException as exc:
            return Outcome(None, f"FAILED ({type(exc).__name__})")
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if not 200 <= response.status_code < 300:
            return Outcome(None, f"FAILED (HTTP {response.status_code})", response.status_code)
        if n >= WARMUP:
            samples.append(elapsed_ms)
    assert response is not None
    content_type = response.headers.get("content-type", "")
    return Outcome(
        Timing(tuple(samples)),
        None,
        response.status_code,
        content_type,
        len(body),
        _shape(content_type, body),
    )


@dataclass
class Run:
    """Everything measured against one server."""

    server: Server
    ingest: Ingest
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def measure(
    start: Callable[[contextlib.ExitStack, bool], Server],
    batches: Sequence[Batch],
    steps: Sequence[Step],
    keep: bool,
) -> Run:
    """Start one server, ingest, time every step, stop it. Servers run one at a time on the same cores."""
    with contextlib.ExitStack() as stack:
        server = start(stack, keep)
        print(f"  {server.name} {server.version} at {server.root}")
        ingest = stow(server, batches)
        print(
            f"  ingest: {ingest.instances} instances, {ingest.megabytes:.0f} MB in {ingest.seconds:.2f} s"
            f" ({ingest.per_second:.1f} inst/s){'; FAILURES: ' + '; '.join(ingest.failures) if ingest.failures else ''}"
        )
        time.sleep(SETTLE_S)
        run = Run(server, ingest)
        with requests.Session() as session:
            session.headers.update(server.headers)
            for step in steps:
                outcome = run_step(session, server, step)
                run.outcomes[step.name] = outcome
                summary = f"p50 {outcome.timing.p50:.1f} ms" if outcome.timing else outcome.error
                print(f"    {step.name}: {summary}")
        return run


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cells(outcome: Outcome | None) -> list[str]:
    if outcome is None:
        return ["-", "-"]
    if outcome.timing is None:
        return [outcome.error or "FAILED", ""]
    return [_ms(outcome.timing.p50), _ms(outcome.timing.p95)]


def report(steps: Sequence[Step], radstack: Run, orthanc: Run | None) -> str:
    """The results table: one row for ingest, then one per timed step."""
    headers = ["step", "radstack p50", "p95", "orthanc p50", "p95", "ratio", "target", "met?"]

    def row(
        name: str, mine: list[str], theirs: list[str], ratio: float | None, goal: Goal, met: str
    ) -> list[str]:
        return [name, *mine, *theirs, f"{ratio:.2f}×" if ratio else "-", goal.describe(), met]

    ingest_goal = Goal(min_ratio=1.5)
    ingest_ratio = radstack.ingest.per_second / orthanc.ingest.per_second if orthanc else None
    rows = [
        row(
            "STOW ingest, inst/s (2 threads)",
            [f"{radstack.ingest.per_second:.1f}", ""],
            [f"{orthanc.ingest.per_second:.1f}", ""] if orthanc else ["-", "-"],
            ingest_ratio,
            ingest_goal,
            ingest_goal.met(ingest_ratio, None, failed=bool(radstack.ingest.failures)),
        )
    ]
    for step in steps:
        mine = radstack.outcomes[step.name]
        theirs = orthanc.outcomes[step.name] if orthanc else None
        p50 = mine.timing.p50 if mine.timing else None
        ratio = theirs.timing.p50 / p50 if p50 and theirs and theirs.timing else None
        met = step.goal.met(ratio, p50, failed=mine.timing is None)
        rows.append(row(step.name, _cells(mine), _cells(theirs), ratio, step.goal, met))
    return format_table(headers, rows)


def responses(steps: Sequence[Step], runs: Sequence[Run]) -> str:
    """What each server answered to the last request of each step, to check the comparison is like for like."""
    lines = []
    for step in steps:
        lines.append(f"  {step.name} ({step.repeat}×, {len(step.requests)} target(s))")
        for run in runs:
            lines.append(f"    {run.server.name:9} {run.outcomes[step.name].describe()}")
    return "\n".join(lines)


def environment() -> str:
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"  CPUs: {os.cpu_count()} ({usable} usable), {cpu_model}\n"
        f"  {platform.platform()}, Python {platform.python_version()}\n"
        f"  client: requests {importlib.metadata.version('requests')}, pydicom {pydicom.__version__}, numpy {np.__version__}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ct", type=int, default=200, help="CT slices of 512² (default 200)")
    parser.add_argument(
        "--ct-studies", type=int, default=20, help="studies the CT slices are spread over (20)"
    )
    parser.add_argument("--dx", type=int, default=10, help="DX radiographs of 2500×2048 (default 10)")
    parser.add_argument(
        "--repeat", type=int, default=50, help="timed requests per step (default 50; DX steps use 40%%)"
    )
    parser.add_argument("--no-orthanc", action="store_true", help="measure radstack only")
    parser.add_argument(
        "--keep", action="store_true", help="keep the servers' data directories under bench/out"
    )
    args = parser.parse_args(argv)
    if args.ct < 1 or args.dx < 0 or args.repeat < 1:
        parser.error("--ct and --repeat must be ≥ 1 and --dx ≥ 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    print("environment")
    print(environment())

    cohort = load_or_generate(args.ct, args.dx, args.ct_studies)
    size_mb = sum((cohort.root / i.path).stat().st_size for i in cohort.instances) / 1e6
    verb = (
        "generated now" if cohort.generated else "reused from the cache (delete it to regenerate); generated"
    )
    print(
        f"\ndata: {len(cohort.of_kind(Kind.CT))} CT + {len(cohort.of_kind(Kind.DX))} DX, {size_mb:.0f} MB in"
    )
    print(f"  {cohort.root}\n  {verb} in {cohort.seconds:.1f} s")
    batches = make_batches(cohort)
    steps = plan_steps(cohort, args.repeat)

    starts: list[Callable[[contextlib.ExitStack, bool], Server]] = [start_radstack]
    if args.no_orthanc:
        print("\northanc: skipped (--no-orthanc)")
    elif orthanc_plugin() is None:
        print(
            "\northanc: not installed (Debian packages orthanc + orthanc-dicomweb); measuring radstack only"
        )
    else:
        starts.append(start_orthanc)

    runs: list[Run] = []
    for start in starts:
        name = start.__name__.removeprefix("start_")
        print(f"\n{name}")
        try:
            runs.append(measure(start, batches, steps, args.keep))
        except RuntimeError as exc:  # a server that does not start; the other one is still measured
            print(f"  {name} FAILED to start: {exc}")
    if not runs or runs[0].server.name != "radstack":
        return 1

    radstack, orthanc = runs[0], runs[1] if len(runs) > 1 else None
    print("\nresponses (last request of each step)")
    print(responses(steps, runs))
    print(
        f"\nresults (ms; ratio = orthanc p50 / radstack p50, ingest: radstack / orthanc; {WARMUP} warm-up excluded)"
    )
    print(report(steps, radstack, orthanc))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
