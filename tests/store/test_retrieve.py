"""Reading stored instances back without a protocol: the Part-10 rebuild and the transcoding choice
that WADO-RS, C-GET/C-MOVE and forwarding share (:mod:`radstack.store.retrieve`)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from radstack.config import Settings
from radstack.ingest.pipeline import ingest_file
from radstack.platform import Platform
from radstack.store import retrieve
from radstack.store.records import Batch, BatchReason, InstanceRecord
from tests.helpers import part10, pixels_of, synthetic_ct

EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
HTJ2K_RPCL, HTJ2K_LOSSLESS, HTJ2K_LOSSY = (
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.203",
)
J2K_LOSSLESS, J2K = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    opened = Platform.open(Settings(data_dir=tmp_path_factory.mktemp("retrieve"), ingest_processes=0))
    yield opened
    opened.close()


def _store(platform: Platform, source: bytes | Path) -> InstanceRecord:
    result = ingest_file(platform.store, source, Batch(BatchReason.STOW))
    assert result.ok, result.error
    assert result.study_uid and result.sop_uid
    return platform.store.get_instance(result.study_uid, None, result.sop_uid)


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize("syntax", [None, EXPLICIT_LE, IMPLICIT_LE, HTJ2K_LOSSLESS, J2K_LOSSLESS])
def test_native_input_rebuilds_losslessly_in_each_syntax(platform: Platform, syntax: str | None) -> None:
    original = synthetic_ct(frames=3, rows=24, columns=20, seed=7)
    record = _store(platform, part10(original))
    assert retrieve.stored_syntax(record) == HTJ2K_RPCL, "native input is stored as HTJ2K lossless"
    if syntax is not None:
        assert retrieve.can_produce(record, syntax)
    back = _read(retrieve.part10(platform.store, record, syntax))
    assert back.file_meta.TransferSyntaxUID == (syntax or HTJ2K_RPCL)
    assert np.array_equal(back.pixel_array.reshape(3, 24, 20), pixels_of(original)), "pixels round-trip"
    assert back.PatientName == original.PatientName and back.SOPInstanceUID == original.SOPInstanceUID


def test_frames_are_served_as_stored_only_where_the_bytes_are_the_same(platform: Platform) -> None:
    record = _store(platform, part10(synthetic_ct(frames=2, rows=16, columns=16, seed=8)))
    assert retrieve.served_as_stored(record, HTJ2K_RPCL)
    assert retrieve.served_as_stored(record, HTJ2K_LOSSLESS), "an RPCL codestream is valid HTJ2K"
    assert not retrieve.served_as_stored(record, EXPLICIT_LE)
    stored = retrieve.stored_frame(platform.store, record, 2)
    assert retrieve.frame_in(platform.store, record, 2, HTJ2K_LOSSLESS) == stored
    assert stored != retrieve.stored_frame(platform.store, record, 1), (
        "frame numbers are 1-based and distinct"
    )
    native = retrieve.frame_in(platform.store, record, 2, EXPLICIT_LE)
    assert np.array_equal(
        np.frombuffer(native, "<u2").reshape(16, 16), retrieve.decoded_frame(platform.store, record, 2)
    )


def test_lossy_input_is_never_re_encoded(platform: Platform) -> None:
    path = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm") or "")
    original = pydicom.dcmread(path)
    record = _store(platform, path)
    assert retrieve.stored_syntax(record) == JPEG_BASELINE
    assert retrieve.can_produce(record, JPEG_BASELINE)
    assert retrieve.can_produce(record, EXPLICIT_LE) and retrieve.can_produce(record, IMPLICIT_LE)
    for other in (HTJ2K_RPCL, HTJ2K_LOSSLESS, HTJ2K_LOSSY, J2K_LOSSLESS, J2K):
        assert not retrieve.can_produce(record, other), f"JPEG baseline frames are not made into {other}"
    back = _read(retrieve.part10(platform.store, record, None))
    assert back.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert list(generate_frames(back.PixelData, number_of_frames=1)) == list(
        generate_frames(original.PixelData, number_of_frames=1)
    ), "the JPEG bytes come back as they were sent"


def test_an_object_without_pixels_is_only_little_endian(platform: Platform) -> None:
    path = Path(get_testdata_file("test-SR.dcm") or "")
    report = pydicom.dcmread(path)
    record = _store(platform, path)
    assert retrieve.stored_syntax(record) == EXPLICIT_LE
    assert [
        s for s in (EXPLICIT_LE, IMPLICIT_LE, HTJ2K_RPCL, J2K_LOSSLESS) if retrieve.can_produce(record, s)
    ] == [
        EXPLICIT_LE,
        IMPLICIT_LE,
    ]
    back = _read(retrieve.part10(platform.store, record, IMPLICIT_LE))
    assert back.file_meta.TransferSyntaxUID == IMPLICIT_LE
    assert back.ContentSequence == report.ContentSequence and "PixelData" not in back


def test_header_dataset_is_the_header_without_pixels(platform: Platform) -> None:
    original = synthetic_ct(rows=8, columns=8, seed=9, patient_name="Header^Only")
    record = _store(platform, part10(original))
    header = retrieve.header_dataset(platform.store, record)
    assert "PixelData" not in header
    assert header.PatientName == "Header^Only" and header.Rows == 8
