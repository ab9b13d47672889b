"""The stored header of an instance: every attribute except Pixel Data, as explicit VR little endian.

Together with the stored frames it rebuilds the Part-10 file; its DICOM JSON (with BulkDataURIs)
is what metadata requests return.
"""

from __future__ import annotations

import io
import json
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from radstack.dicom.codecs import PixelInfo
from radstack.dicom.json_model import dataset_to_json
from radstack.errors import CannotUnderstand

__all__ = ["encode_header", "header_of", "instance_bulk_base", "instance_json"]

PIXEL_DATA = 0x7FE00010


def instance_bulk_base(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Path prefix of an instance's bulk data (PS3.18 §10.4.1.1.5) used in BulkDataURIs."""
    return f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata"


def header_of(ds: Dataset) -> Dataset:
    """``ds`` without its pixel data, keeping its file meta (the transfer syntax becomes explicit LE)."""
    header = Dataset()
    for elem in ds:
        if elem.tag != PIXEL_DATA:
            header.add(elem)
    meta = FileMetaDataset()
    for elem in getattr(ds, "file_meta", FileMetaDataset()):
        if elem.tag.element != 0:
            meta.add(elem)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header.file_meta = meta
    return header


def encode_header(header: Dataset) -> bytes:
    """Part-10 bytes of a header data set.

    Raises
    ------
    CannotUnderstand
        When pydicom cannot write the data set (a malformed value).
    """
    buffer = io.BytesIO()
    try:
        header.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise CannotUnderstand(
            f"the data set cannot be re-encoded as explicit VR little endian: {exc}"
        ) from exc
    return buffer.getvalue()


def instance_json(header: Dataset, pixel: PixelInfo | None) -> tuple[dict[str, Any], bytes]:
    """The instance's DICOM JSON (PS3.18 §F.2) and its compact serialisation.

    Pixel Data is announced by a BulkDataURI; the frames themselves are served by the frames
    resource.
    """
    bulk_base = instance_bulk_base(
        str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)
    )
    attrs = dataset_to_json(header, bulk_base)
    if pixel is not None:
        attrs[f"{PIXEL_DATA:08X}"] = {
            "vr": "OW" if pixel.bits_allocated > 8 else "OB",
            "BulkDataURI": f"{bulk_base}/{PIXEL_DATA:08X}",
        }
    return attrs, json.dumps(attrs, separators=(",", ":")).encode()
