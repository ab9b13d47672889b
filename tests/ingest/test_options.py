"""Ingest settings are honoured whichever way an instance comes in (``ingest/options.py``).

Each ingest path (STOW-RS, C-STORE, an import job, the drop folder, the demo loader) stores a native
CT with ``RADSTACK_ENCODE_HTJ2K`` on and off; the stored frames must be HTJ2K lossless in the first
case and explicit VR little endian in the second, as the index and WADO-RS frames say.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from radstack.config import Settings
from radstack.ingest.options import IngestOptions
from tests import authed
from tests.conftest import RunningServer, server_settings, start_server
from tests.dimse.helpers import EXPLICIT_LE, HTJ2K_RPCL, store
from tests.helpers import dicom_body, instance_url, part10, response_parts, stow, synthetic_ct


@pytest.fixture(scope="module", params=[True, False], ids=["encode", "no-encode"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("options")
    settings = server_settings(
        root / "data",
        encode_htj2k=request.param,
        demo=True,
        inbox_dir=root / "inbox",
        inbox_settle_seconds=0.2,
    )
    yield from start_server(settings)


def wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def via_stow(server: RunningServer, ds: Dataset, scratch: Path) -> None:
    assert stow(server, dicom_body(ds)).status_code == 200


def via_cstore(server: RunningServer, ds: Dataset, scratch: Path) -> None:
    [status] = store(server, ds)
    assert status.Status == 0x0000


def via_import_job(server: RunningServer, ds: Dataset, scratch: Path) -> None:
    (scratch / "ct.dcm").write_bytes(part10(ds))
    job = authed.post(f"{server.url}/api/v1/import-jobs", json={"source": str(scratch)}, timeout=30).json()
    url = f"{server.url}/api/v1/import-jobs/{job['id']}"
    wait(lambda: authed.get(url).json()["state"] == "SUCCEEDED", f"import job {job['id']} did not succeed")


def via_drop_folder(server: RunningServer, ds: Dataset, scratch: Path) -> None:
    inbox = server.platform.settings.resolved_inbox_dir
    name = f"{ds.SOPInstanceUID}.dcm"
    (inbox / "incoming" / name).write_bytes(part10(ds))
    wait(lambda: (inbox / "processed" / name).exists(), "the dropped file was not processed")


PATHS = {
    "stow": via_stow,
    "c-store": via_cstore,
    "import-job": via_import_job,
    "drop-folder": via_drop_folder,
}


def stored_syntax(server: RunningServer, ds: Dataset) -> tuple[str | None, str]:
    """The stored frame syntax in the index, and the Content-Type of WADO-RS frames asked for as stored."""
    record = server.platform.store.get_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    frames = authed.get(
        f"{instance_url(server, ds)}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        timeout=30,
    )
    assert frames.status_code == 200, frames.text
    [(content_type, _data)] = response_parts(frames)
    return record.frame_syntax, content_type


@pytest.mark.parametrize("path", list(PATHS))
def test_every_ingest_path_honours_encode_htj2k(server: RunningServer, path: str, tmp_path: Path) -> None:
    encode = server.platform.settings.encode_htj2k
    ds = synthetic_ct(rows=16, columns=24, seed=len(path))
    PATHS[path](server, ds, tmp_path)
    frame_syntax, content_type = stored_syntax(server, ds)
    expected = HTJ2K_RPCL if encode else EXPLICIT_LE
    assert frame_syntax == expected
    assert f"transfer-syntax={expected}" in content_type


def test_the_demo_loader_honours_encode_htj2k(server: RunningServer) -> None:
    encode = server.platform.settings.encode_htj2k
    # The demo data were loaded at start-up (RADSTACK_DEMO): find its generated CT through QIDO-RS.
    [study] = authed.get(f"{server.dicomweb}/studies", params={"AccessionNumber": "DEMO0001"}).json()
    uid = study["0020000D"]["Value"][0]
    instance = authed.get(f"{server.dicomweb}/studies/{uid}/instances", params={"limit": 1}).json()[0]
    ct = Dataset()
    ct.StudyInstanceUID = uid
    ct.SeriesInstanceUID = instance["0020000E"]["Value"][0]
    ct.SOPInstanceUID = instance["00080018"]["Value"][0]
    frame_syntax, content_type = stored_syntax(server, ct)
    expected = HTJ2K_RPCL if encode else EXPLICIT_LE
    assert frame_syntax == expected
    assert f"transfer-syntax={expected}" in content_type


def test_options_come_from_the_settings() -> None:
    assert IngestOptions.from_settings(Settings(encode_htj2k=False)) == IngestOptions(encode=False)
    assert IngestOptions.from_settings(Settings()) == IngestOptions(encode=True)
