"""The stored header of an instance: every attribute except Pixel Data, as explicit VR little endian.

Together with the stored frames it rebuilds the Part-10 file; its DICOM JSON (with BulkDataURIs)
is what metadata requests return.
"""

from __future__ import annotations

import io
import json
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info as read_file_meta_info_at
from pydicom.filereader import read_preamble
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from radstack.dicom.codecs import PixelInfo
from radstack.dicom.json_model import dataset_to_json
from radstack.dicom.spacing import without_invalid_spacing
from radstack.errors import CannotUnderstand

__all__ = ["encode_header", "header_of", "instance_bulk_base", "instance_json", "raw_dataset_bytes"]

PIXEL_DATA = 0x7FE00010
#: Data Set Trailing Padding (FFFC,FFFC) carries no meaning (PS3.10 §7.2) and is not kept.
TRAILING_PADDING = 0xFFFCFFFC


def instance_bulk_base(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Path prefix of an instance's bulk data (PS3.18 §10.4.1.1.5) used in BulkDataURIs."""
    return f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata"


def header_of(ds: Dataset) -> Dataset:
    """``ds`` without its pixel data, keeping its file meta (the transfer syntax becomes explicit LE)."""
    header = Dataset()
    if _explicit_little(ds):
        # Explicit VR little endian already: copy the element map as it is, so elements not yet
        # parsed stay raw (parsing every element is the slow part of ingest).
        header._dict = {
            tag: elem for tag, elem in ds._dict.items() if tag not in (PIXEL_DATA, TRAILING_PADDING)
        }
        header.set_original_encoding(False, True, ds.original_character_set)
    else:
        for elem in ds:
            if elem.tag not in (PIXEL_DATA, TRAILING_PADDING):
                header.add(elem)
    meta = FileMetaDataset()
    for elem in getattr(ds, "file_meta", FileMetaDataset()):
        if elem.tag.element != 0:
            meta.add(elem)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header.file_meta = meta
    return header


def _explicit_little(ds: Dataset) -> bool:
    """True when every element of ``ds`` was read as explicit VR little endian.

    The file meta can claim a syntax the data set does not use (pydicom then reads it as it is),
    so the elements themselves are asked.
    """
    return all(
        not isinstance(e, RawDataElement) or (not e.is_implicit_VR and e.is_little_endian)
        for e in ds._dict.values()
    ) and ds.original_encoding == (False, True)


def encode_header(header: Dataset, raw_dataset: bytes | None = None) -> tuple[bytes, bytes]:
    """Part-10 bytes of a header data set, and the bytes of its data set part alone.

    ``raw_dataset`` is the explicit VR little endian encoding of the data set when the caller has
    it already (an explicit VR little endian input with Pixel Data last): it is used as is instead
    of re-encoding every element, which is the costly part of ingest. The file meta is always
    written afresh (PS3.10 §7.1). The data set part alone is what identifies the content.

    Raises
    ------
    CannotUnderstand
        When pydicom cannot write the data set (a malformed value).
    """
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    buffer.write(b"\0" * 128 + b"DICM")
    try:
        write_file_meta_info(buffer, header.file_meta, enforce_standard=True)
        start = buffer.tell()
        if raw_dataset is None:
            write_dataset(buffer, header)
        else:
            buffer.write(raw_dataset)
    except (ValueError, TypeError, OverflowError, AttributeError, KeyError) as exc:
        raise CannotUnderstand(
            f"the data set cannot be re-encoded as explicit VR little endian: {exc}"
        ) from exc
    data = buffer.getvalue()
    return data, data[start:]


def raw_dataset_bytes(data: bytes, ds: Dataset) -> bytes | None:
    """The data set part of an explicit VR little endian Part-10 file, without Pixel Data.

    Returns ``None`` (re-encode instead) unless the input is explicit VR little endian and Pixel
    Data, if present, is its last element and still unparsed.
    """
    if str(ds.file_meta.get("TransferSyntaxUID", "")) != ExplicitVRLittleEndian or not _explicit_little(ds):
        return None
    group_length = ds.file_meta.get("FileMetaInformationGroupLength")
    if isinstance(group_length, int) and data[128:132] == b"DICM":
        # Preamble (128) + "DICM" (4) + the group length element itself (12) + the group (PS3.10 §7.1).
        start = 144 + group_length
    else:
        stream = io.BytesIO(data)
        try:
            read_preamble(stream, False)
            read_file_meta_info_at(stream)
        except Exception:
            return None
        start = stream.tell()
    tags = ds._dict
    pixel = tags.get(Tag(PIXEL_DATA))
    if pixel is None:
        return data[start:]
    if any(tag > PIXEL_DATA and tag != TRAILING_PADDING for tag in tags):
        return None
    if not isinstance(pixel, RawDataElement) or pixel.value_tell is None:
        return None
    # Explicit VR OB/OW element header: tag (4) + VR (2) + reserved (2) + length (4).
    return data[start : pixel.value_tell - 12]


def instance_json(header: Dataset, pixel: PixelInfo | None) -> tuple[dict[str, Any], bytes]:
    """The instance's DICOM JSON (PS3.18 §F.2) and its compact serialisation.

    Pixel Data is announced by a BulkDataURI; the frames themselves are served by the frames
    resource.
    """
    bulk_base = instance_bulk_base(
        str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)
    )
    # Served as absent when invalid; the stored header keeps the value (radstack.dicom.spacing).
    attrs = without_invalid_spacing(dataset_to_json(header, bulk_base))
    if pixel is not None:
        attrs[f"{PIXEL_DATA:08X}"] = {
            "vr": "OW" if pixel.bits_allocated > 8 else "OB",
            "BulkDataURI": f"{bulk_base}/{PIXEL_DATA:08X}",
        }
    return attrs, json.dumps(attrs, separators=(",", ":")).encode()
