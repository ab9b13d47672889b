"""STOW-RS under a seeded mutation fuzz: every malformed part is a client error with its reason, never
a 500, and the keep-alive connection that carried it goes on serving (PS3.18 §10.5.3)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom

from tests.conftest import RunningServer
from tests.fuzz import mutants, with_unknown_vr
from tests.helpers import (
    DICOM_MULTIPART,
    dicom_body,
    failure_reasons,
    instance_url,
    multipart,
    part10,
    response_parts,
    stow,
    synthetic_ct,
)

SEED = 10
COUNT = 300


def _client_address(response: httpx.Response) -> object:
    """The local address of the connection that carried ``response``: the same one while kept alive."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


def test_mutated_files_over_one_keep_alive_connection(server: RunningServer) -> None:
    before = synthetic_ct(patient_name="Stored^Before")
    url = f"{server.dicomweb}/studies"
    with httpx.Client(headers={**server.auth, "Content-Type": DICOM_MULTIPART}, timeout=60) as client:
        first = client.post(url, content=dicom_body(before))
        assert first.status_code == 200, first.text
        connection = _client_address(first)
        statuses: dict[int, int] = {}
        for mutant in mutants(SEED, COUNT):
            response = client.post(url, content=multipart([("application/dicom", mutant.data)]))
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in (200, 202, 409), (
                f"{mutant.label}: HTTP {response.status_code} {response.text[:300]}"
            )
            assert _client_address(response) == connection, f"{mutant.label}: the connection was not kept"
            failed = response.json().get("00081198", {}).get("Value", [])
            warning = response.headers.get("Warning", "")
            if response.status_code == 409:
                [item] = failed
                assert item["00081197"]["Value"][0] in (0xA900, 0xC000, 0xC122), mutant.label
                assert warning.strip(), f"{mutant.label}: no reason given"
            assert "force=True" not in warning, mutant.label
            assert "internal error" not in warning, f"{mutant.label}: {warning}"
        assert statuses.get(409, 0) > COUNT // 4, f"the mutants should mostly be refused: {statuses}"

        after = synthetic_ct()
        assert client.post(url, content=dicom_body(after)).status_code == 200, "a valid request still works"
        retrieved = client.get(
            instance_url(server, before),
            headers={"Accept": 'multipart/related; type="application/dicom"', "Content-Type": ""},
        )
        assert retrieved.status_code == 200
        assert _client_address(retrieved) == connection
        [(_type, data)] = response_parts(retrieved)
        assert np.array_equal(pydicom.dcmread(io.BytesIO(data)).pixel_array, before.pixel_array)


def test_an_unknown_vr_is_named(server: RunningServer) -> None:
    data = with_unknown_vr(part10(synthetic_ct()), "PatientName")
    response = stow(server, multipart([("application/dicom", data)]))
    assert response.status_code == 409
    assert failure_reasons(response) == [0xC000]
    assert "element (0010,0010) has an unknown VR 'ZZ'" in response.headers["Warning"]
