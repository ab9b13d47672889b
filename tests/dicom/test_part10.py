"""The shapes of input taken as Part-10 files (PS3.10 §7.1), and bad bytes told apart from bugs."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from radstack.dicom.part10 import NOT_DICOM, PREAMBLE, as_part10, malformed
from radstack.errors import CannotUnderstand
from tests.fuzz import with_unknown_vr
from tests.helpers import part10, synthetic_ct


def test_a_part10_file_is_taken_as_it_is() -> None:
    data = part10(synthetic_ct())
    assert as_part10(data) is data


def test_file_meta_without_preamble_gets_one() -> None:
    ds = synthetic_ct()
    written = io.BytesIO()
    pydicom.dcmwrite(written, ds)  # a data set built in memory: no preamble, no DICM
    data = as_part10(written.getvalue())
    assert data == PREAMBLE + written.getvalue()
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02\x00", b"\x02\x00\x10\x00UL\x04\x00" + bytes(8), b"\x02\x00\x10\x00UI\xff\x00short"],
    ids=["empty", "two-bytes", "wrong-vr-for-0002,0010", "length-past-the-end"],
)
def test_what_only_looks_like_file_meta_is_refused(data: bytes) -> None:
    with pytest.raises(CannotUnderstand, match="not a DICOM Part-10 file"):
        as_part10(data)
    assert "force" not in NOT_DICOM


def test_unknown_vr_is_bad_input_and_a_bug_is_not() -> None:
    ds = pydicom.dcmread(DicomBytesIO(with_unknown_vr(part10(synthetic_ct()), "PatientName")))
    with pytest.raises(NotImplementedError) as raised:
        str(ds.PatientName)
    refusal = malformed(raised.value)
    assert refusal is not None and refusal.message.startswith("element (0010,0010) has an unknown VR 'ZZ'")

    with pytest.raises(KeyError) as bug:
        dict[str, str]()["missing"]  # an error of our own code, not of the input
    assert malformed(bug.value) is None
