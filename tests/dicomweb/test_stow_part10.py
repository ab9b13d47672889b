"""STOW-RS of objects that are not quite Part-10 files: what dicomweb-client sends for a data set built
in memory (file meta, no preamble, no ``DICM``) and a bare data set whose transfer syntax the part's
Content-Type states (PS3.18 §8.7.3.5.2). Both are stored as Part-10 files (PS3.10 §7.1); what is not
DICOM is still refused with a reason a user can act on.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from radstack.dicom.part10 import NOT_DICOM
from tests import authed
from tests.conftest import RunningServer
from tests.helpers import failure_reasons, instance_url, multipart, response_parts, stow, synthetic_ct

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def retrieved(server: RunningServer, ds: Dataset) -> bytes:
    """The instance of ``ds`` as WADO-RS returns it, in its stored syntax."""
    response = authed.get(
        instance_url(server, ds),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert response.status_code == 200, response.text
    [(_type, data)] = response_parts(response)
    return data


def assert_part10_of(data: bytes, ds: Dataset) -> None:
    """``data`` is a Part-10 file (preamble, ``DICM``, file meta) holding the data set of ``ds``."""
    assert data[128:132] == b"DICM", "the retrieved object has the preamble and DICM prefix"
    read = pydicom.dcmread(io.BytesIO(data))  # no force: a proper Part-10 file
    assert read.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert read.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "PatientName", "Modality"):
        assert read.get(keyword) == ds.get(keyword), keyword
    if "PixelData" in ds:
        assert np.array_equal(read.pixel_array, ds.pixel_array)


def text_report() -> Dataset:
    """A Basic Text SR built in memory, as an AI tool makes its result (no pixels, no preamble)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Report^Patient", "SR-1", "SR"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Imaging report"
    ds.ConceptNameCodeSequence = [concept]
    return ds


def test_dicomweb_client_sends_data_sets_built_in_memory(server: RunningServer) -> None:
    image, report = synthetic_ct(patient_name="In^Memory"), text_report()
    for ds in (image, report):
        sent = DicomBytesIO()
        pydicom.dcmwrite(sent, ds)
        assert sent.getvalue()[:2] == b"\x02\x00", "pydicom writes the file meta without a preamble"
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances([image, report])
    for ds in (image, report):
        assert_part10_of(retrieved(server, ds), ds)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_bare_data_set_with_the_transfer_syntax_stated(server: RunningServer, syntax: str) -> None:
    ds = synthetic_ct(patient_name="Bare^Data^Set")
    bare = DicomBytesIO()
    bare.is_little_endian, bare.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    write_dataset(bare, ds)
    response = stow(server, multipart([(f"application/dicom; transfer-syntax={syntax}", bare.getvalue())]))
    assert response.status_code == 200, response.headers.get("Warning")
    assert_part10_of(retrieved(server, ds), ds)


PNG = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(400)


@pytest.mark.parametrize(
    ("content_type", "data", "words"),
    [
        ("application/dicom", None, NOT_DICOM),  # a bare data set with no syntax stated
        ("application/dicom", PNG, NOT_DICOM),
        ("application/dicom", b"Dear radiologist,\r\nplease find attached..." * 20, NOT_DICOM),
        ("application/dicom", bytes(range(256)) * 4, NOT_DICOM),
        ("application/dicom", b"\x02\x00\x10\x00ZZ\x04\x00" + bytes(300), NOT_DICOM),  # 02 00, then no VR
        (
            f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}",
            PNG,
            "does not start with a data element",
        ),
        (
            "application/dicom; transfer-syntax=1.2.x",
            b"\x08\x00\x16\x00UI" + bytes(300),
            "'1.2.x' is not a valid UID",
        ),
    ],
    ids=[
        "bare-without-syntax",
        "png",
        "text",
        "random",
        "group-2-garbage",
        "png-with-syntax",
        "bad-syntax-uid",
    ],
)
def test_what_is_not_dicom_is_refused(
    server: RunningServer, content_type: str, data: bytes | None, words: str
) -> None:
    if data is None:
        bare = DicomBytesIO()
        bare.is_little_endian, bare.is_implicit_VR = True, False
        write_dataset(bare, synthetic_ct())
        data = bare.getvalue()
    response = stow(server, multipart([(content_type, data)]))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xC000]
    warning = response.headers["Warning"]  # ASCII only: the header shows "§" as a space
    assert words.replace("§", " ") in warning
    assert "force=True" not in warning
