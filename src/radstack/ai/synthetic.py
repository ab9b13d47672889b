"""Synthetic fracture radiographs with ground truth, for training and testing fracture detectors.

No installable package ships real fracture images, so :func:`generate` draws them: DX radiographs of
the lower leg, forearm, wrist, thigh and upper arm, with cortex, medullary canal, trabecular texture,
soft tissue, overlapping bones (radius/ulna, tibia/fibula), exposure and noise, collimation and lead
L/R markers; fractures are transverse, oblique, spiral, comminuted, buckle (torus) or hairline,
displaced or not. A share of the images are the real lower-leg radiograph RG3 of ``pydicom-data``
with a fracture composited onto its tibia or fibula (or without one).

Everything a detector could use instead of the fracture line is the same for images with and without
a fracture: exposure and noise, processing, markers, collimation, age, anatomy and view are drawn
independently of the label, and normal images carry the look-alikes (growth plates, nutrient canals,
growth-arrest lines, overlapping bone edges).

In memory::

    image = generate(seed=7, index=0)          # SyntheticImage: pixels (uint16), truth (dict)

On disk (``radstack demo-data fractures``)::

    write_dataset(Path("out"), count=100, seed=7)   # out/dicom/<patient>/<uid>.dcm, out/truth.json

The same seed and options give byte-identical files: every random draw comes from
``numpy.random.default_rng([seed, patient, …])`` and UIDs and dates are derived from the seed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from radstack import __version__
from radstack.ai._anatomy import Anatomy
from radstack.ai._plan import FractureType, Options, Patient, Rendered, SyntheticDataError, plan
from radstack.ai._rg3 import RG3_SOP_INSTANCE_UID, composite
from radstack.ai._scene import render

__all__ = [
    "DX_FOR_PRESENTATION",
    "Anatomy",
    "FractureType",
    "Options",
    "SyntheticDataError",
    "SyntheticImage",
    "generate",
    "generate_twins",
    "to_dataset",
    "write_dataset",
]

#: Digital X-Ray Image Storage - For Presentation (PS3.4 §B.5).
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
#: What the truth file and each image's header say generated them.
GENERATOR = "radstack.ai.synthetic"
TRUTH_VERSION = 1


@dataclass(frozen=True)
class SyntheticImage:
    """One radiograph: stored pixel values (rows × columns, uint16, MONOCHROME2) and its truth.

    ``truth`` is what ``truth.json`` records for the image (JSON-ready); ``header`` holds what
    :func:`to_dataset` needs beyond it.
    """

    pixels: NDArray[np.uint16]
    truth: dict[str, Any]
    header: dict[str, Any] = field(repr=False)


def _uid(seed: int, *parts: object) -> str:
    """A UID derived from the seed (PS3.5 §B.2: ``2.25.`` and a 128-bit number, here from SHA-256), so
    the same data set has the same UIDs and different seeds never share one."""
    digest = hashlib.sha256("/".join([GENERATOR, str(seed), *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _patient_id(seed: int, patient: int) -> str:
    return f"SYN{seed % 10**6:06d}-{patient:06d}"


def _truth(seed: int, index: int, patient: Patient, image: Rendered) -> dict[str, Any]:
    """What ``truth.json`` records for one image."""
    rows, columns = image.pixels.shape
    return {
        "sop_instance_uid": _uid(seed, "image", index),
        "study_instance_uid": _uid(seed, "study", patient.index),
        "series_instance_uid": _uid(seed, "series", index),
        "patient_id": _patient_id(seed, patient.index),
        "index": index,
        "fracture": bool(image.findings),
        "type": str(patient.fracture) if image.findings else None,
        "displaced": patient.displaced if image.findings else None,
        "boxes": image.boxes,
        "findings": [
            {"bone": f.bone, "type": str(f.kind), "displaced": f.displaced, "box": box}
            for f, box in zip(image.findings, image.boxes, strict=True)
        ],
        "anatomy": str(patient.anatomy),
        "view": image.view,
        "laterality": patient.side,
        "composited": patient.composite,
        "source": "RG3" if patient.composite else "synthetic",
        "rows": rows,
        "columns": columns,
        "pixel_spacing_mm": round(image.spacing, 5),
        "age": patient.age,
    }


def generate(seed: int, index: int, options: Options | None = None) -> SyntheticImage:
    """Image ``index`` of the data set ``seed`` (the same arguments give the same pixels).

    Parameters
    ----------
    seed
        The data set's seed; images of other seeds are independent of it.
    index
        Which image (0-based); images ``k·n … k·n + n - 1`` are the views of patient ``k`` when
        ``options.images_per_patient`` is ``n``.
    options
        :class:`Options` (fracture rate, size, views per patient, share composited onto RG3).

    Returns
    -------
    SyntheticImage
        ``pixels`` (uint16, MONOCHROME2) and ``truth`` (fracture, type, boxes ``[x0, y0, x1, y1]`` in
        pixel edges, anatomy, view, UIDs).

    Raises
    ------
    SyntheticDataError
        If the options are invalid, or an RG3 composite is drawn and pydicom-data is missing.
    """
    options = options or Options()
    if index < 0:
        raise SyntheticDataError(f"image index {index} is negative")
    patient_index, view_index = divmod(index, options.images_per_patient)
    patient = plan(seed, patient_index, options)
    drawn = (composite if patient.composite else render)(seed, patient, view_index, options)
    header = {**drawn.header, "seed": seed, "spacing": drawn.spacing}
    return SyntheticImage(drawn.pixels, _truth(seed, index, patient, drawn), header)


def generate_twins(
    seed: int, index: int, options: Options | None = None
) -> tuple[SyntheticImage, SyntheticImage]:
    """Image ``index`` of data set ``seed`` drawn with a fracture, and its twin: the same patient, view,
    exposure and processing with the bone intact.

    The pair differs only where the fracture is (and, when it is displaced, where the distal limb moved),
    so a detector trained on twins learns the fracture itself and nothing that comes with it: the intact
    twin is a normal image as likely as any other (everything but the fracture is drawn independently of
    it). The twin's truth has ``fracture`` false and no boxes.

    Raises
    ------
    SyntheticDataError
        As :func:`generate`.
    """
    options = replace(options or Options(), fracture_rate=1.0)
    if index < 0:
        raise SyntheticDataError(f"image index {index} is negative")
    patient_index, view_index = divmod(index, options.images_per_patient)
    patient = plan(seed, patient_index, options)
    draw = composite if patient.composite else render
    images = []
    for who in (patient, replace(patient, fracture=None)):
        drawn = draw(seed, who, view_index, options)
        header = {**drawn.header, "seed": seed, "spacing": drawn.spacing}
        images.append(SyntheticImage(drawn.pixels, _truth(seed, index, who, drawn), header))
    return images[0], images[1]


_BODY_PARTS = {
    "LEG": ("30021000", "Lower leg"),
    "EXTREMITY": ("14975008", "Forearm"),
    "WRIST": ("74670003", "Wrist joint"),
    "THIGH": ("68367000", "Thigh"),
    "ARM": ("40983000", "Upper arm"),
}
#: View Code Sequence (CID 4010).
_VIEWS = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("272479007", "postero-anterior"),
    "LAT": ("399067008", "lateral"),
    "OBL": ("399059000", "postero-anterior oblique"),
}
_BASE_DATE = datetime.date(2026, 1, 5)


def _orientation(header: dict[str, Any], side: str, view: str) -> list[str]:
    """Patient Orientation (PS3.3 §C.7.6.1.1.1): where the rows and the columns point."""
    if view == "LAT":
        row = "A" if header["mirror"] > 0 else "P"
    else:  # u (lateral) to image +x when mirror is +1: the left limb's lateral side is the patient's left
        lateral_is_left = side == "L"
        row = "L" if (header["mirror"] > 0) == lateral_is_left else "R"
    return [row, "H" if header["distal_up"] else "F"]


def to_dataset(image: SyntheticImage, seed: int | None = None) -> Dataset:
    """The image as a DX For Presentation data set (PS3.3 §A.26), marked synthetic for PACS users:
    Patient's Name ``SYNTHETIC^…``, Image Comments, a clinical-trial protocol, Patient Identity
    Removed, Burned In Annotation NO. Composites are DERIVED from RG3 and keep its lossy history."""
    truth, header = image.truth, image.header
    index = int(truth["index"])
    patient_id = truth["patient_id"]
    day = _BASE_DATE + datetime.timedelta(days=int(patient_id[-6:]) % 365)
    date = day.strftime("%Y%m%d")
    time = f"{8 + index % 10:02d}{(index * 7) % 60:02d}00"
    composited = bool(truth["composited"])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(DX_FOR_PRESENTATION)
    ds.file_meta.MediaStorageSOPInstanceUID = truth["sop_instance_uid"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED" if composited else "ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = truth["sop_instance_uid"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = f"SYN{index:09d}"[:16]
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "radstack"
    ds.InstitutionName = "SYNTHETIC DATA - NOT A PATIENT"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNTHETIC"
    body = header["body_part"]
    laterality = truth["laterality"]
    view = truth["view"]
    ds.StudyDescription = f"SYNTHETIC XR {body} {laterality}"
    ds.SeriesDescription = f"SYNTHETIC {view}"
    ds.ManufacturerModelName = "radstack synthetic fracture radiographs"
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = f"{day.year - int(truth['age']):04d}0101"
    ds.PatientSex = "O"
    ds.PatientAge = f"{int(truth['age']):03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic image: no patient was imaged"
    ds.ClinicalTrialSponsorName = "radstack synthetic data"
    ds.ClinicalTrialProtocolID = "SYNTHETIC-FRACTURES"
    ds.ClinicalTrialProtocolName = "Synthetic fracture radiographs (not patients)"
    ds.ClinicalTrialSiteID = ""
    ds.ClinicalTrialSiteName = ""
    ds.ClinicalTrialSubjectID = patient_id
    ds.BodyPartExamined = body
    ds.SoftwareVersions = f"radstack {__version__}"
    if header.get("kvp") is not None:
        ds.KVP = header["kvp"]
        ds.ExposureInuAs = round(float(header["mas"]) * 1000)
    view = truth["view"]
    ds.ViewPosition = {"AP": "AP", "PA": "PA", "LAT": f"{laterality}L", "OBL": ""}[view]
    code_value, code_meaning = _VIEWS[view]
    view_code = Dataset()
    view_code.CodeValue, view_code.CodingSchemeDesignator, view_code.CodeMeaning = (
        code_value,
        "SCT",
        code_meaning,
    )
    ds.ViewCodeSequence = Sequence([view_code])
    ds.PositionerType = "COLUMN"
    ds.DetectorType = "SCINTILLATOR" if not composited else "STORAGE"
    spacing = round(float(header["spacing"]), 6)
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.StudyInstanceUID = truth["study_instance_uid"]
    ds.SeriesInstanceUID = truth["series_instance_uid"]
    ds.StudyID = patient_id[-6:]
    ds.SeriesNumber = index % 1000 + 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = _orientation(header, laterality, view)
    ds.ImageLaterality = laterality
    code, meaning = _BODY_PARTS[body]
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = code, "SCT", meaning
    ds.AnatomicRegionSequence = Sequence([region])
    ds.AcquisitionContextSequence = Sequence()
    ds.BurnedInAnnotation = "NO"
    comment = (
        f"SYNTHETIC IMAGE, NOT A PATIENT: made by {GENERATOR} (seed {seed if seed is not None else '?'}, image "
        f"{index}) to test and train fracture detection; the ground truth is in truth.json."
    )
    if composited:
        comment += " Derived from the real radiograph RG3 of pydicom-data, with a synthetic fracture or none."
        ds.DerivationDescription = (
            "Synthetic fracture composited onto pydicom-data RG3 (lossy JPEG 2000 30:1)"
        )
        source = Dataset()
        source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
        source.ReferencedSOPInstanceUID = RG3_SOP_INSTANCE_UID
        ds.SourceImageSequence = Sequence([source])
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = 30
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    else:
        ds.LossyImageCompression = "00"
    ds.ImageComments = comment
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.pixels.shape
    bits = int(header["bits"])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1  # higher values: less X-ray intensity (bone is bright)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = header["window"]
    ds.PixelData = np.ascontiguousarray(image.pixels, dtype="<u2").tobytes()
    return ds


def write_dataset(
    out: Path,
    count: int,
    seed: int,
    options: Options | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``count`` images as DX DICOM files under ``out/dicom/<PatientID>/`` and their ground
    truth as ``out/truth.json``; returns the truth document.

    ``out`` must not hold a data set already (``truth.json``). Import the images with
    ``radstack import out/dicom``.

    Raises
    ------
    SyntheticDataError
        ``count`` is below one, ``out`` already holds a ``truth.json``, or an RG3 composite is
        drawn and pydicom-data is missing.
    OSError
        ``out`` cannot be written.
    """
    options = options or Options()
    if count < 1:
        raise SyntheticDataError(f"count {count} is not a positive number of images")
    truth_path = out / "truth.json"
    if truth_path.exists():
        raise SyntheticDataError(f"{out} already holds a data set (truth.json); choose an empty directory")
    images: dict[str, Any] = {}
    for index in range(count):
        image = generate(seed, index, options)
        ds = to_dataset(image, seed)
        relative = Path("dicom", image.truth["patient_id"], f"{image.truth['sop_instance_uid']}.dcm")
        (out / relative.parent).mkdir(parents=True, exist_ok=True)
        ds.save_as(out / relative, enforce_file_format=True)
        images[image.truth["sop_instance_uid"]] = {**image.truth, "file": relative.as_posix()}
        if on_progress is not None:
            on_progress(index + 1, count)
    document = {
        "generator": GENERATOR,
        "version": TRUTH_VERSION,
        "seed": seed,
        "count": count,
        "options": {
            "fracture_rate": options.fracture_rate,
            "scale": options.scale,
            "size": list(options.size) if options.size else None,
            "images_per_patient": options.images_per_patient,
            "rg3_rate": options.rg3_rate,
        },
        "box_format": "[x0, y0, x1, y1]: pixel edges, x along columns, y along rows, x1 and y1 exclusive",
        "images": images,
    }
    truth_path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return document
