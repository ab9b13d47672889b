"""Nothing readable on disk: after studies arrive by STOW-RS and C-STORE, no file anywhere under the
data dir (index database and its WAL, blobs, queue, keys, audit) holds a patient's name, ID or birth
date, or a run of their raw pixel bytes; after a key rotation everything is still readable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from radstack.security.index_key import INDEX_KEY_FILE, is_plaintext_sqlite
from tests.conftest import server_settings, start_server
from tests.dimse.helpers import read_back, store
from tests.helpers import DICOM_MULTIPART, dicom_body, synthetic_ct
from tests.processes import RADSTACK

RUN = 64


def _secrets(datasets: list[Dataset]) -> tuple[list[bytes], list[bytes]]:
    """Identifying strings and 64-byte runs of raw pixel data (from the middle of each image)."""
    strings: set[bytes] = set()
    runs = []
    for ds in datasets:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 6:
                strings.add(value.encode())
        pixels = ds.PixelData
        middle = len(pixels) // 2
        runs.append(pixels[middle : middle + RUN])
    return sorted(strings), runs


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def _find(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in _files(root):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a blob's temporary file, renamed into place since the listing:
            continue  # the check after the server stops reads every final file
        found += [f"{path.relative_to(root)}: {needle[:24]!r}" for needle in needles if needle in data]
    return found


def test_no_phi_and_no_pixels_on_disk(tmp_path: Path) -> None:
    ds1 = synthetic_ct(patient_name="Diskmann^Dora", patient_id="PID-DISK-4471", rows=128, columns=128)
    ds1.PatientBirthDate, ds1.AccessionNumber = "19580412", "ACC-DISK-99"
    ds2 = pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))
    ds3 = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    strings, runs = _secrets([ds1, ds2, ds3])
    # Stored as sent (no HTJ2K): an unencrypted store would hold these very pixel bytes.
    settings = server_settings(tmp_path / "data", encode_htj2k=False, stable_seconds=1)
    data_dir = settings.data_dir
    for server in start_server(settings):
        response = httpx.post(
            f"{server.dicomweb}/studies",
            content=dicom_body(ds1, ds2),
            headers={**server.auth, "Content-Type": DICOM_MULTIPART},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert [status.Status for status in store(server, ds3)] == [0x0000]
        assert httpx.get(
            f"{server.dicomweb}/studies", params={"PatientID": "PID-DISK-4471"}, headers=server.auth
        ).json()
        server.platform.audit.flush()
        # While it runs (the WAL holds the latest pages) and after.
        assert _find(data_dir, strings + runs) == []
    assert _find(data_dir, strings + runs) == []
    assert not is_plaintext_sqlite(data_dir / "index.db")
    assert (data_dir / INDEX_KEY_FILE).exists()
    # The test itself would catch plaintext: the same search finds the strings in the files sent.
    sent = tmp_path / "sent.dcm"
    ds1.save_as(sent, enforce_file_format=True)
    assert _find(tmp_path, [b"Diskmann^Dora"]) == ["sent.dcm: b'Diskmann^Dora'"]

    rotated = subprocess.run(
        [RADSTACK, "keys", "rotate", "--grace-seconds", "0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "index database key is now wrapped" in rotated.stderr
    for server in start_server(server_settings(data_dir)):
        back = read_back(server, ds1)
        assert back.PatientName == "Diskmann^Dora"
        assert np.array_equal(back.pixel_array, ds1.pixel_array)
        [match] = httpx.get(
            f"{server.dicomweb}/studies", params={"PatientName": "Diskm*"}, headers=server.auth
        ).json()
        assert match["00100020"]["Value"] == ["PID-DISK-4471"]


def test_an_index_written_before_encryption_is_encrypted_when_opened(tmp_path: Path) -> None:
    import sqlite3

    from radstack.store.index import create_index_engine, migrate

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    plain = create_index_engine(f"sqlite:///{data_dir / 'index.db'}")
    migrate(plain)
    plain.dispose()
    with sqlite3.connect(data_dir / "index.db") as connection:
        connection.execute(
            "INSERT INTO users (username, role, referring_name, institutions, disabled, created_at) "
            "VALUES ('admin', 'admin', 'Marker^Otto', '[]', 0, '2026-01-01')"
        )
    assert is_plaintext_sqlite(data_dir / "index.db")
    for server in start_server(server_settings(data_dir)):
        assert server.platform.accounts.user("admin").referring_name == "Marker^Otto"
    assert not is_plaintext_sqlite(data_dir / "index.db")
    assert _find(data_dir, [b"Marker^Otto"]) == []
