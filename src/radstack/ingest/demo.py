"""Demo data for a first run: a CT series made here and the real radiographs of ``pydicom-data``.

``radstack serve --demo`` (what ``make run`` starts) loads them when the index holds no study yet, so
a new user sees images at once; a data dir that holds studies is never touched. Everything goes
through the same ingest pipeline as any other source.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from radstack.ingest.pipeline import Analyser, ingest_file
from radstack.store.studies import BatchReason, StudyStore

__all__ = ["DEMO_RADIOGRAPHS", "ct_phantom_series", "load_demo"]

log = logging.getLogger(__name__)

#: Real radiographs shipped by the ``pydicom-data`` package: chest CR (15-bit) and a lower leg CR.
DEMO_RADIOGRAPHS = ("RG1_UNCI.dcm", "RG3_UNCI.dcm")
_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, for generated demo UIDs


def _phantom(size: int, z: float) -> NDArray[np.int16]:
    """One axial slice (HU) of a body-shaped phantom: soft tissue, lungs, a spine, a lesion at mid-depth."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    hu = np.full((size, size), -1000, dtype=np.float64)
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 <= 1
    hu[body] = 40
    for cx in (-0.38, 0.38):
        lung = ((x - cx) / 0.28) ** 2 + ((y + 0.05) / (0.38 * (1 - 0.5 * abs(z)))) ** 2 <= 1
        hu[lung & body] = -850
    hu[(x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2 <= 1] = 700
    lesion = (x - 0.3) ** 2 + (y + 0.1) ** 2 + (z * 0.6) ** 2 <= 0.07**2
    hu[lesion] = 60
    noise = np.random.default_rng(int((z + 1) * 1000)).normal(0, 8, (size, size))
    slice_hu: NDArray[np.int16] = np.clip(hu + noise * body, -1024, 3071).astype(np.int16)
    return slice_hu


def ct_phantom_series(slices: int = 40, size: int = 256) -> list[Dataset]:
    """A CT series of ``slices`` axial slices of ``size``² (signed 16-bit HU, 5 mm apart)."""
    study, series, frame = generate_uid(_ROOT), generate_uid(_ROOT), generate_uid(_ROOT)
    out = []
    for n in range(slices):
        z = -1 + 2 * n / max(1, slices - 1)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(_ROOT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientSex = "Demo^Phantom", "DEMO-CT-1", "O"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate = "20260101", "090000", "20260101"
        ds.StudyDescription, ds.SeriesDescription = "Demo CT chest (generated phantom)", "Axial 5 mm"
        ds.Modality, ds.BodyPartExamined, ds.AccessionNumber = "CT", "CHEST", "DEMO0001"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, n + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-size / 2, -size / 2, n * 5.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 5.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = _phantom(size, z).tobytes()
        out.append(ds)
    return out


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def load_demo(store: StudyStore, *, encode: bool = True, analyser: Analyser | None = None) -> int:
    """Store the demo studies when the index holds none; returns how many instances were stored."""
    if store.study_count() > 0:
        return 0
    files = [_part10(ds) for ds in ct_phantom_series()]
    try:
        from pydicom.data import get_testdata_file

        for name in DEMO_RADIOGRAPHS:
            path = get_testdata_file(name)
            if path is not None:
                with open(path, "rb") as handle:
                    files.append(handle.read())
    except (ImportError, ValueError, OSError) as exc:  # pydicom-data absent: the CT alone
        log.warning("demo radiographs unavailable (%s); loading the generated CT only", type(exc).__name__)
    stored = 0
    with store.batch(BatchReason.DEMO) as batch:
        for data in files:
            result = ingest_file(store, data, batch, encode=encode, analyser=analyser)
            if result.error is not None:
                log.warning("demo instance refused: %s", result.error.message)
            else:
                stored += 1
    log.info("loaded the demo data: %d instances in %d studies", stored, len(batch.touched))
    return stored
