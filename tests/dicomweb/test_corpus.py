"""Every image file of pydicom's test data and of pydicom-data goes in through STOW and comes back intact.

Lossless or native input must come back as explicit VR little endian with pixels identical to
pydicom's own decode of the original; lossy input must come back with byte-identical frames when
asked for as stored. A file radstack refuses must be refused with a named reason, and only when
pydicom itself cannot decode it or the file breaks a rule the store enforces (UIDs, pixel module).
"""

from __future__ import annotations

import glob
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from radstack.config import Settings
from radstack.dicom.transfer_syntax import SyntaxKindValues, kind_of
from radstack.dicom.uids import is_valid_uid
from tests.conftest import RunningServer, start_server

logger = logging.getLogger(__name__)

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def corpus() -> list[Path]:
    """Every Part-10 file with pixel data in pydicom's test files and in pydicom-data."""
    import data_store

    roots = [
        Path(get_testdata_file("CT_small.dcm") or "").parent,
        Path(os.path.dirname(data_store.__file__)) / "data",
    ]
    files: list[Path] = []
    for root in roots:
        for name in sorted(glob.glob(str(root / "*.dcm"))):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(name, stop_before_pixels=False, force=True)
            except Exception:
                continue
            if "PixelData" in ds:
                files.append(Path(name))
    return files


def pydicom_decodes(ds: pydicom.Dataset) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array  # noqa: B018
    except Exception:
        return False
    return True


def breaks_store_rules(ds: pydicom.Dataset) -> bool:
    """True when the file violates what the ingest pipeline validates (PS3.5 §9.1 UIDs, Part-10 meta)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return True
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not is_valid_uid(str(ds.get(keyword, ""))):
            return True
    return False


@pytest.fixture
def pooled_server(settings: Settings) -> Iterator[RunningServer]:
    """The server as deployed: ingest analysis in two worker processes."""
    yield from start_server(settings.model_copy(update={"ingest_processes": 2}))


def test_every_corpus_image_round_trips(pooled_server: RunningServer) -> None:
    server = pooled_server
    files = corpus()
    assert len(files) > 100, "pydicom test data and pydicom-data should provide over 100 image files"
    client = DICOMwebClient(server.dicomweb, headers=server.auth)
    rows: list[tuple[str, str, str]] = []
    failures: list[str] = []
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            original = pydicom.dcmread(path, force=True)
        data = path.read_bytes()
        outcome, detail = stow_one(client, data)
        if outcome != "stored":
            justified = not pydicom_decodes(original) or breaks_store_rules(original)
            rows.append((path.name, "refused", detail))
            if not detail or not justified:
                failures.append(f"{path.name}: refused although pydicom decodes it ({detail})")
            continue
        syntax = str(original.file_meta.TransferSyntaxUID)
        uids = (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)
        if kind_of(syntax) is SyntaxKindValues.LOSSY:
            back = client.retrieve_instance(*uids, media_types=(("application/dicom", "*"),))
            n = int(original.get("NumberOfFrames", 1) or 1)
            same = list(generate_frames(back.PixelData, number_of_frames=n)) == list(
                generate_frames(original.PixelData, number_of_frames=n)
            )
            rows.append((path.name, "lossy: frames identical" if same else "lossy: FRAMES DIFFER", syntax))
            if not same:
                failures.append(f"{path.name}: lossy frames changed")
            continue
        back = client.retrieve_instance(*uids, media_types=(("application/dicom", EXPLICIT_LE),))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if back.file_meta.TransferSyntaxUID != EXPLICIT_LE:
                failures.append(f"{path.name}: came back as {back.file_meta.TransferSyntaxUID}")
            expected = original.pixel_array if pydicom_decodes(original) else None
            got = back.pixel_array
        same = expected is not None and np.array_equal(expected, got)
        rows.append((path.name, "pixels identical" if same else "PIXELS DIFFER", syntax))
        if not same:
            failures.append(f"{path.name}: pixels differ after the round trip")
    width = max(len(r[0]) for r in rows)
    logger.info("%-*s  outcome", width, "file")
    for name, outcome, detail in rows:
        logger.info("%-*s  %s  %s", width, name, outcome, detail[:100])
    stored = sum(r[1] != "refused" for r in rows)
    logger.info("%d files: %d stored, %d refused", len(rows), stored, len(rows) - stored)
    assert not failures, "\n".join(failures)


def stow_one(client: DICOMwebClient, data: bytes) -> tuple[str, str]:
    """STOW one file through dicomweb-client, byte for byte as it is on disk (no re-encoding).

    Returns (outcome, reason text): the FailureReason and the Warning header for a refusal.
    """
    try:
        result = client._http_post_multipart_application_dicom(f"{client.base_url}/studies", [data])
    except requests.HTTPError as exc:
        response = exc.response
        assert response is not None
        failed = response.json().get("00081198", {}).get("Value", [{}])
        reason = failed[0].get("00081197", {}).get("Value", [None])[0]
        if reason is None:
            return "refused", ""
        return "refused", f"0x{int(reason):04X} {response.headers.get('Warning', '')}"
    if "ReferencedSOPSequence" in result and "FailedSOPSequence" not in result:
        return "stored", ""
    return "refused", "no ReferencedSOPSequence"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_dicomweb_client_store_and_retrieve(server: RunningServer, name: str) -> None:
    """The same path through dicomweb-client's own STOW (it re-encodes the data set)."""
    client = DICOMwebClient(server.dicomweb, headers=server.auth)
    original = pydicom.dcmread(str(get_testdata_file(name)))
    response = client.store_instances([original])
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    back = client.retrieve_instance(
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
        original.SOPInstanceUID,
        media_types=(("application/dicom", EXPLICIT_LE),),
    )
    assert np.array_equal(back.pixel_array, original.pixel_array)
