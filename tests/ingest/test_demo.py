"""The first-run demo data: a generated CT series and pydicom-data's radiographs, only into an empty index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from radstack.ingest.demo import ct_phantom_series
from tests.conftest import RunningServer, server_settings, start_server
from tests.dimse.helpers import read_back


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[RunningServer]:
    yield from start_server(server_settings(tmp_path / "data", dicom_port=0, no_workers=True, demo=True))


def test_an_empty_data_dir_gets_the_demo_studies(demo_server: RunningServer) -> None:
    studies = httpx.get(f"{demo_server.dicomweb}/studies", headers=demo_server.auth).json()
    modalities = sorted(m["00080061"]["Value"][0] for m in studies)
    assert modalities == ["CR", "CR", "CT"]  # the phantom CT and the chest and leg radiographs
    ct = next(m for m in studies if m["00080061"]["Value"] == ["CT"])
    assert ct["00201208"]["Value"] == [40]


def test_the_demo_is_loaded_only_once(tmp_path: Path) -> None:
    settings = server_settings(tmp_path / "data", dicom_port=0, no_workers=True, demo=True)
    for _server in start_server(settings):
        pass
    for server in start_server(server_settings(tmp_path / "data", dicom_port=0, no_workers=True, demo=True)):
        assert len(httpx.get(f"{server.dicomweb}/studies", headers=server.auth).json()) == 3


def test_the_phantom_round_trips(demo_server: RunningServer) -> None:
    original = ct_phantom_series(slices=3, size=64)
    # The generated series is stored losslessly like any CT: pixels come back identical.
    from tests.helpers import DICOM_MULTIPART, dicom_body

    response = httpx.post(
        f"{demo_server.dicomweb}/studies",
        content=dicom_body(*original),
        headers={**demo_server.auth, "Content-Type": DICOM_MULTIPART},
    )
    assert response.status_code == 200, response.text
    back = read_back(demo_server, original[1])
    assert np.array_equal(back.pixel_array, original[1].pixel_array)
    assert back.pixel_array.min() < -500 < 0 < back.pixel_array.max()  # air, lungs and tissue in HU
