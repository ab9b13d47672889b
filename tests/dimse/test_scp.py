"""The DIMSE service: lifecycle, C-ECHO, C-STORE of every kind of input, bad input, the calling AE
allow-list and logs without patient data (PS3.4 Annexes A and B)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.tag import TagType
from pydicom.uid import UID, generate_uid
from pynetdicom import AE

from radstack.config import Settings
from radstack.dimse.scp import error_comment
from tests import authed
from tests.conftest import RunningServer, free_port, start_server
from tests.dimse.helpers import (
    STUDY_FIND,
    VERIFICATION,
    association,
    pixels,
    query,
    read_back,
    run_tool,
    store,
)
from tests.helpers import cube, synthetic_ct

#: pydicom test files in the transfer syntaxes a modality sends (each given fresh UIDs), and the
#: storescu option that proposes that syntax.
FILES = {
    "CT_small.dcm": ("1.2.840.10008.1.2.1", "-x="),  # explicit VR little endian
    "MR_small_bigendian.dcm": ("1.2.840.10008.1.2.2", "-xb"),  # explicit VR big endian
    "image_dfl.dcm": ("1.2.840.10008.1.2.1.99", "-xd"),  # deflated explicit VR little endian
    "JPEG-LL.dcm": ("1.2.840.10008.1.2.4.70", "-xs"),  # JPEG lossless, first-order prediction
    "MR_small_RLE.dcm": ("1.2.840.10008.1.2.5", "-xr"),  # RLE lossless
    "MR_small_jp2klossless.dcm": ("1.2.840.10008.1.2.4.90", "-xv"),  # JPEG 2000 lossless
    "SC_rgb_jpeg_dcmtk.dcm": ("1.2.840.10008.1.2.4.50", "-xy"),  # JPEG baseline: lossy
}
LOSSY = {"SC_rgb_jpeg_dcmtk.dcm"}


def renamed(name: str, directory: Path) -> tuple[Dataset, Path]:
    """A pydicom test file with new study, series and instance UIDs, saved in its own syntax."""
    ds = pydicom.dcmread(str(get_testdata_file(name)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = directory / name
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path), path


def versions(server: RunningServer, study: str) -> list[dict[str, object]]:
    response = authed.get(f"{server.url}/api/v1/studies/{study}/versions")
    assert response.status_code == 200, response.text
    result: list[dict[str, object]] = response.json()
    return result


# ----------------------------------------------------------------------------- lifecycle, C-ECHO
def test_echoscu(server: RunningServer) -> None:
    result = run_tool("echoscu", "-aet", "ECHOSCU", "-aec", "RADSTACK", "127.0.0.1", str(server.dicom_port))
    assert result.returncode == 0, result.stderr
    with association(server, [VERIFICATION]) as assoc:
        assert assoc.send_c_echo().Status == 0x0000


def test_port_zero_runs_no_listener(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", http_port=free_port(), dicom_port=0, ingest_processes=0)
    running = start_server(settings)
    server = next(running)
    try:
        assert authed.get(f"{server.url}/healthz").status_code == 200
        assert not server.platform.settings.dicom_port
    finally:
        running.close()


def test_listener_stops_with_the_app(settings: Settings) -> None:
    running = start_server(settings)
    server = next(running)
    with association(server, [VERIFICATION]) as assoc:
        assert assoc.send_c_echo().Status == 0x0000
    running.close()
    result = run_tool("echoscu", "-to", "2", "127.0.0.1", str(settings.dicom_port))
    assert result.returncode != 0  # nothing listens any more


# ----------------------------------------------------------------------------- C-STORE
def test_storescu_every_transfer_syntax(server: RunningServer, tmp_path: Path) -> None:
    """dcmtk's storescu sends real files in their own syntaxes; every one is stored as sent and
    reads back with identical pixels (lossy input: identical bytes)."""
    for name, (syntax, option) in FILES.items():
        ds, path = renamed(name, tmp_path)
        result = run_tool(
            "storescu",
            option,
            "-aet",
            "MODALITY",
            "-aec",
            "RADSTACK",
            "127.0.0.1",
            str(server.dicom_port),
            str(path),
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        record = server.platform.store.get_instance(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        assert record.transfer_syntax_uid == syntax, f"{name} arrived as {record.transfer_syntax_uid}"
        if name in LOSSY:
            back = read_back(server, ds, "*")
            assert list(generate_frames(back.PixelData, number_of_frames=1)) == list(
                generate_frames(ds.PixelData, number_of_frames=1)
            )
        else:
            assert np.array_equal(pixels(read_back(server, ds)), pixels(ds)), name
        [version] = versions(server, ds.StudyInstanceUID)
        assert (version["reason"], version["detail"]) == ("c-store", "MODALITY")


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"]
)
def test_htj2k_store(server: RunningServer, syntax: str) -> None:
    ds = synthetic_ct(rows=40, columns=56, frames=2, seed=3)
    original = cube(40, 56, 2, seed=3)
    ds.PixelData = encapsulate([bytes(imagecodecs.htj2k_encode(frame)) for frame in original])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    [status] = store(server, ds)
    assert status.Status == 0x0000
    record = server.platform.store.get_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert record.transfer_syntax_uid == syntax
    assert np.array_equal(pixels(read_back(server, ds)), original)


def test_one_association_is_one_study_version(server: RunningServer) -> None:
    study, series = generate_uid(), generate_uid()
    first = [synthetic_ct(study=study, series=series, rows=16, columns=16, seed=i) for i in range(3)]
    assert [s.Status for s in store(server, *first)] == [0, 0, 0]
    [version] = versions(server, study)
    assert version == {**version, "version": 1, "reason": "c-store", "detail": "TESTSCU"}
    again = synthetic_ct(study=study, series=series, rows=16, columns=16, seed=9)
    assert [s.Status for s in store(server, again, first[0], calling="OTHERSCU")] == [
        0,
        0,
    ]  # a duplicate is a success
    assert [v["version"] for v in versions(server, study)] == [1, 2]
    assert len(server.platform.store.list_instances(study)) == 4


def without(ds: Dataset, keyword: str) -> Dataset:
    changed = copy.deepcopy(ds)
    delattr(changed, keyword)
    return changed


def test_malformed_datasets_fail_and_change_nothing(server: RunningServer) -> None:
    good = synthetic_ct(rows=32, columns=24)
    assert store(server, good)[0].Status == 0x0000
    short = copy.deepcopy(good)
    short.PixelData = good.PixelData[:-100]
    no_study = without(good, "StudyInstanceUID")
    bad_uid = copy.deepcopy(good)
    bad_uid.SeriesInstanceUID = "1.2..3"
    statuses = store(server, short, no_study, bad_uid)
    assert [s.Status for s in statuses] == [0xA900, 0xA900, 0xA900]
    comments = [str(s.ErrorComment) for s in statuses]
    assert all(0 < len(c) <= 64 and c.isascii() for c in comments), comments
    assert comments[0].startswith("PixelData holds 1436 bytes but Rows 32 x Columns 24"), comments[0]
    assert comments[1] == "StudyInstanceUID is missing"
    assert "SeriesInstanceUID '1.2..3' is not a valid UID" in comments[2]
    # The instance stored first is untouched: same pixels, still one version.
    assert np.array_equal(pixels(read_back(server, good)), pixels(good))
    assert len(versions(server, good.StudyInstanceUID)) == 1


class CommandUID(Dataset):
    """A data set whose C-STORE request names ``command_uid`` as its instance.

    pynetdicom takes the request's Affected SOP Instance UID from the data set's SOPInstanceUID;
    this one answers with ``command_uid`` instead, and holds its own SOPInstanceUID (or none) in
    the data set it sends, as a broken modality's might (dcmtk's storescu refuses to send a file
    without the element at all).
    """

    def __init__(self, source: Dataset, command_uid: str, *, keep_own: bool) -> None:
        super().__init__(source)
        self.file_meta = source.file_meta
        if not keep_own:
            del self.SOPInstanceUID
        self._command_uid = command_uid

    @property
    def SOPInstanceUID(self) -> str:
        return self._command_uid

    def __contains__(self, name: TagType) -> bool:
        return name == "SOPInstanceUID" or super().__contains__(name)


def test_missing_sop_instance_uid(server: RunningServer) -> None:
    ds = synthetic_ct(rows=16, columns=16)
    [status] = store(server, CommandUID(ds, ds.SOPInstanceUID, keep_own=False))
    assert status.Status == 0xA900
    assert status.ErrorComment == "SOPInstanceUID is missing"
    assert server.platform.store.list_instances(ds.StudyInstanceUID) == []


def test_command_uid_differs_from_the_data_set(server: RunningServer) -> None:
    """The data set is authoritative; the corrected file meta is a coercion (warning 0xB000)."""
    ds = synthetic_ct(rows=16, columns=16)
    [status] = store(server, CommandUID(ds, generate_uid(), keep_own=True))
    assert status.Status == 0xB000
    assert status.ErrorComment.startswith("MediaStorageSOPInstanceUID")
    [record] = server.platform.store.list_instances(ds.StudyInstanceUID)
    assert record.sop_uid == ds.SOPInstanceUID


def test_pixel_data_not_in_the_negotiated_syntax(server: RunningServer) -> None:
    ds = synthetic_ct(rows=16, columns=16)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.50")  # claims JPEG, holds native pixels
    [status] = store(server, ds)
    assert status.Status == 0xA900
    assert "encapsulated PixelData" in status.ErrorComment


# ----------------------------------------------------------------------------- allow-list
@pytest.fixture
def guarded(settings: Settings) -> Iterator[RunningServer]:
    yield from start_server(settings.model_copy(update={"allowed_calling_aes": ["GOODSCU", "OTHER"]}))


def test_allow_list_rejects_unknown_calling_ae(guarded: RunningServer) -> None:
    refused = run_tool("echoscu", "-aet", "BADSCU", "127.0.0.1", str(guarded.dicom_port))
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    allowed = run_tool("echoscu", "-aet", "GOODSCU", "127.0.0.1", str(guarded.dicom_port))
    assert allowed.returncode == 0, allowed.stderr
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", guarded.dicom_port, ae_title="RADSTACK")
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert rejection is not None
    # Rejected permanently by the service user: calling AE title not recognised (PS3.8 §9.3.4).
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)


def test_allowed_calling_aes_from_text() -> None:
    assert Settings(allowed_calling_aes=" A1, B2 ,").allowed_calling_aes == ["A1", "B2"]
    assert Settings(allowed_calling_aes='["A1"]').allowed_calling_aes == ["A1"]
    with pytest.raises(ValueError, match="1 to 16 printable"):
        Settings(allowed_calling_aes="WAY-TOO-LONG-AE-TITLE")


# ----------------------------------------------------------------------------- no PHI in logs
def test_logs_carry_no_patient_data(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pynetdicom")  # the CLI quietens it; tests run it in-process
    ds = synthetic_ct(patient_name="Zyxwvut^Qponmlk", patient_id="PHI-98765", rows=16, columns=16)
    bad = copy.deepcopy(ds)
    bad.SOPInstanceUID = generate_uid()
    bad.PixelData = b"\0\0"
    assert [s.Status for s in store(server, ds, bad)] == [0x0000, 0xA900]
    with association(server, [STUDY_FIND]) as assoc:
        identifier = query(QueryRetrieveLevel="STUDY", PatientName="Zyxwvut*", PatientID=None)
        results = list(assoc.send_c_find(identifier, STUDY_FIND))
        assert [s.Status for s, _i in results] == [0xFF00, 0x0000]
    assert ds.SOPInstanceUID in caplog.text  # UIDs are logged …
    for phi in ("Zyxwvut", "Qponmlk", "PHI-98765"):  # … patient data never
        assert phi not in caplog.text


# ----------------------------------------------------------------------------- Error Comment
def test_error_comment_keeps_the_problem() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345"
    message = (
        f"SOP instance {uid} has an Image Pixel module (Rows, Columns, BitsAllocated) but no "
        "PixelData (7FE0,0010): the file is cut or the pixels are missing"
    )
    comment = error_comment(message)
    assert len(comment) <= 64 and comment.isascii()
    assert comment.startswith("SOP instance has an Image Pixel module but no PixelData")
    assert error_comment("StudyInstanceUID is missing") == "StudyInstanceUID is missing"
    assert error_comment("Rows 2 × Columns 3\\4 (PS3.3 §C.7.6.3)") == "Rows 2 x Columns 3/4 (PS3.3 C.7.6.3)"
    assert error_comment("word " * 40).endswith("...") and len(error_comment("word " * 40)) <= 64


def test_a_full_disk_is_0xa700_and_leaves_nothing_behind(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radstack.security.crypto import EncryptedBlobStore
    from radstack.store.blobs import LocalBlobStore
    from tests.helpers import FullDisk

    store_ = server.platform.store
    healthy = store_.blobs
    assert isinstance(healthy, EncryptedBlobStore) and isinstance(healthy.inner, LocalBlobStore)
    before = {info.key for prefix in ("f", "h", "j") for info in healthy.list(prefix)}

    monkeypatch.setattr(store_, "blobs", FullDisk(healthy))
    ds = synthetic_ct(rows=32, columns=24)
    [status] = store(server, ds)
    assert status.Status == 0xA700 and status.ErrorComment == "the blob store is full"
    monkeypatch.setattr(store_, "blobs", healthy)
    after = {info.key for prefix in ("f", "h", "j") for info in healthy.list(prefix)}
    assert after == before, "no blob of the refused instance"
    response = authed.get(
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"
    )
    assert response.status_code == 404
