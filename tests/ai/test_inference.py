"""AI in the clinical flow, end to end on a real server with the shipped starter model: dcmtk's
``storescu`` sends a radiograph, the default rule ``ai-fracture`` checks it as the association ends,
and an SR appears in the study whose box lies on the fracture; a normal radiograph gets no finding; the
SR is valid (``dciodvfy``) and reads back with highdicom; the worklist order follows the priority;
running again replaces the result; the SR never triggers the model again; the real-time endpoint
(stored image, uploaded file), batch jobs, bad input, audit and ``/metrics``."""

from __future__ import annotations

import copy
import io
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from radstack.ai import synthetic
from radstack.ai.inference import INFER
from radstack.ai.registry import ArtifactIn, ArtifactKind, Stage
from radstack.ai.results import read_fracture_report
from radstack.ai.runtime import OnnxDetector
from radstack.ai.starter import STARTER_DIR, read_manifest
from radstack.jobs.records import JobState
from radstack.platform import DEFAULT_AI_RULE
from radstack.security.policy import Principal
from tests import authed
from tests.ai.results import ingest, radiograph
from tests.conftest import RunningServer, require_binary, server_settings, start_server
from tests.helpers import DICOM_MULTIPART, dicom_body, part10, stow, synthetic_ct
from tests.processes import ServerProcess, Workers

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
    scores: np.ndarray

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
        out[name] = Case(image, path, prediction.probability, prediction.boxes, prediction.scores)
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
    report = read_fracture_report(sr)
    truth = case.image.truth["boxes"]
    assert report.fracture and report.model == "fracture"
    assert report.findings and all(f.sop_uid == case.sop for f in report.findings)
    assert max(iou(list(f.box), t) for f in report.findings for t in truth) >= 0.3
    # What was stored is what the model says of these pixels.
    assert report.probability == pytest.approx(case.probability, abs=1e-4)
    stored = sorted((round(f.probability, 3), f.box) for f in report.findings)
    direct = sorted((round(float(s), 3), tuple(b)) for s, b in zip(case.scores, case.boxes, strict=True))
    assert [p for p, _ in stored] == [p for p, _ in direct]
    np.testing.assert_allclose([b for _, b in stored], [b for _, b in direct], atol=0.5)
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


def test_normal_radiograph_has_no_finding_and_ranks_below(
    server: RunningServer, cases: dict[str, Case]
) -> None:
    case = cases["normal"]
    response = stow(server, dicom_body(pydicom.dcmread(case.path)))
    assert response.status_code == 200
    series = wait_for(lambda: ai_series(server, case.study))
    report = read_fracture_report(read_sr(server, case.study, series[0]["0020000E"]["Value"][0]))
    assert not report.fracture and report.findings == ()
    assert report.probability == pytest.approx(case.probability, abs=1e-4)
    results = authed.get(f"{server.url}/api/v1/studies/{case.study}/ai-results").json()
    assert results[0]["level"] == "routine" and results[0]["findings"] == []
    # The worklist reads the fractured study first (urgent), the normal one after it (routine).
    wait_for(lambda: ai_series(server, cases["fractured"].study))
    page = authed.get(f"{server.url}/", headers={"Accept": "text/html"}).text
    assert cases["fractured"].study in page and case.study in page
    assert page.index(cases["fractured"].study) < page.index(case.study)


def test_rerun_replaces_the_result_and_sr_never_triggers_ai(
    server: RunningServer, cases: dict[str, Case]
) -> None:
    case = cases["fractured"]
    # A second rule runs the model whenever the study is stable: after the arrival rule stored its SR,
    # the study changed and became stable again, and this rule's run found nothing new to read.
    rule = {
        "name": "also-when-stable",
        "trigger": "stable",
        "conditions": {"Modality": ["DX"]},
        "actions": [{"type": "infer", "model": "fracture"}],
    }
    assert authed.put(f"{server.url}/api/v1/routing-rules/also-when-stable", json=rule).status_code in (
        200,
        201,
    )
    ds = pydicom.dcmread(case.path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    study = str(ds.StudyInstanceUID)
    try:
        assert stow(server, dicom_body(ds)).status_code == 200
        first = wait_for(lambda: ai_series(server, study))[0]["0020000E"]["Value"][0]
        stable_runs = wait_for(
            lambda: [
                j
                for j in infer_jobs(server, study)
                if j.params["trigger"] == "rule:also-when-stable" and j.state is JobState.SUCCEEDED
            ],
            timeout=20,
        )
        time.sleep(2.5)  # long past the quiet period after the last change
    finally:
        authed.delete(f"{server.url}/api/v1/routing-rules/also-when-stable")
    stable_runs = [j for j in infer_jobs(server, study) if j.params["trigger"] == "rule:also-when-stable"]
    assert stable_runs and all("skipped" in j.progress for j in stable_runs)
    assert [s["0020000E"]["Value"][0] for s in ai_series(server, study)] == [first]
    assert len(authed.get(f"{server.url}/api/v1/studies/{study}/ai-results").json()) == 1
    # Run on request and stored: a new series replaces the old, in a new study version.
    answer = authed.post(
        f"{server.url}/api/v1/models/fracture/infer", json={"study": study, "store": True}
    ).json()
    assert answer["model"] == {"name": "fracture", "version": 1}
    assert answer["probability"] == pytest.approx(case.probability, abs=1e-4)
    series = [s["0020000E"]["Value"][0] for s in ai_series(server, study)]
    assert series == [answer["stored"]["series"]] and series != [first]
    results = authed.get(f"{server.url}/api/v1/studies/{study}/ai-results").json()
    assert len(results) == 1 and results[0]["trigger"].startswith("user:")
    versions = authed.get(f"{server.url}/api/v1/studies/{study}/versions").json()
    assert [v["reason"] for v in versions][-2:] == ["ai", "ai"]


def test_real_time_endpoint_on_an_upload(server: RunningServer, cases: dict[str, Case]) -> None:
    case = cases["fractured"]
    response = authed.post(
        f"{server.url}/api/v1/models/fracture/infer",
        content=case.path.read_bytes(),
        headers={"Content-Type": "application/dicom"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["probability"] == pytest.approx(case.probability, abs=1e-4)
    assert {f["instance"] for f in answer["findings"]} == {case.sop}
    np.testing.assert_allclose(
        sorted(f["box"] for f in answer["findings"]), sorted(case.boxes.tolist()), atol=0.5
    )
    assert "stored" not in answer
    one = authed.post(
        f"{server.url}/api/v1/models/fracture/infer",
        json={
            "study": case.study,
            "series": str(case.image.truth["series_instance_uid"]),
            "instance": case.sop,
        },
    ).json()
    assert one["probability"] == pytest.approx(answer["probability"], abs=1e-5)


def _refused(server: RunningServer, ds: Dataset, status: int = 422) -> str:
    response = authed.post(
        f"{server.url}/api/v1/models/fracture/infer",
        content=part10(ds),
        headers={"Content-Type": "application/dicom"},
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


def test_images_the_model_does_not_fit_are_refused_with_the_reason(server: RunningServer) -> None:
    ct = synthetic_ct(rows=300, columns=300)
    assert "Modality 'CT'" in _refused(server, ct)
    small = radiograph(5)
    assert "at least 256 pixels" in _refused(server, small)
    big = synthetic.to_dataset(synthetic.generate(5, 0, synthetic.Options(size=(400, 300))))
    frames = copy.deepcopy(big)
    frames.NumberOfFrames = 2
    frames.PixelData = big.PixelData * 2
    assert "2 frames" in _refused(server, frames)
    rgb = copy.deepcopy(big)
    pixels = (big.pixel_array >> 8).astype(np.uint8)
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation, rgb.PlanarConfiguration = 3, "RGB", 0
    rgb.BitsAllocated = rgb.BitsStored = 8
    rgb.HighBit = 7
    rgb.PixelData = np.repeat(pixels[..., None], 3, axis=2).tobytes()
    assert "RGB" in _refused(server, rgb)
    assert "lossy-compressed" in _refused(server, lossy(big))


def lossy(ds: Dataset) -> Dataset:
    """``ds`` as JPEG baseline (8 bits): what a PACS sends after lossy compression."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    out = copy.deepcopy(ds)
    pixels = (ds.pixel_array >> 8).astype(np.uint8)
    out.BitsAllocated = out.BitsStored = 8
    out.HighBit = 7
    out.PixelData = encapsulate([bytes(imagecodecs.jpeg8_encode(pixels, level=80))])
    out["PixelData"].VR = "OB"
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.LossyImageCompression = "01"
    return out


def test_refusals_of_the_endpoint(server: RunningServer, cases: dict[str, Case]) -> None:
    case = cases["fractured"]
    url = f"{server.url}/api/v1/models"
    body = {"study": case.study}
    missing = authed.post(f"{url}/no-such-model/infer", json=body)
    assert missing.status_code == 404 and "no-such-model" in missing.json()["detail"]
    # A version that is not approved does not run.
    platform = server.platform
    production = platform.models.production("fracture")
    pending = platform.models.register(
        "fracture",
        [ArtifactIn("model.onnx", ArtifactKind.ONNX, (STARTER_DIR / "fracture.onnx").read_bytes())],
        by=Principal("a-scientist", "data-scientist", "token"),
        metrics=production.metrics,
    )
    refused = authed.post(f"{url}/fracture/infer", json={**body, "version": pending.version})
    assert refused.status_code == 409 and "pending, not approved" in refused.json()["detail"]
    # A role without read-models, and one that may read but not store.
    referrer = server.token_for("referring-physician", referring_name="Nobody^Here")
    forbidden = authed.post(
        f"{url}/fracture/infer", json=body, headers={"Authorization": f"Bearer {referrer}"}
    )
    assert forbidden.status_code in (403, 404)
    scientist = server.token_for("data-scientist")
    answer = authed.post(
        f"{url}/fracture/infer",
        content=case.path.read_bytes(),
        headers={"Content-Type": "application/dicom", "Authorization": f"Bearer {scientist}"},
    )
    assert answer.status_code == 200
    upload_store = authed.post(
        f"{url}/fracture/infer?version=1",
        content=b"not dicom",
        headers={"Content-Type": "application/dicom"},
    )
    assert upload_store.status_code == 400 and "not a DICOM file" in upload_store.json()["detail"]
    bad = authed.post(f"{url}/fracture/infer", json={"study": case.study, "stor": True})
    assert bad.status_code == 400 and "stor" in bad.json()["detail"]


def test_a_lossy_radiograph_fails_its_job_with_the_reason_and_nothing_changes(server: RunningServer) -> None:
    ds = lossy(synthetic.to_dataset(synthetic.generate(6, 1, synthetic.Options(size=(600, 500)))))
    assert stow(server, dicom_body(ds)).status_code == 200
    study = str(ds.StudyInstanceUID)
    jobs = wait_for(lambda: [j for j in infer_jobs(server, study) if j.state is JobState.FAILED])
    assert "lossy-compressed" in (jobs[0].last_error or "")
    assert ai_series(server, study) == []
    assert [v["reason"] for v in authed.get(f"{server.url}/api/v1/studies/{study}/versions").json()] == [
        "stow"
    ]
    assert authed.get(f"{server.url}/api/v1/studies/{study}/ai-results").json() == []


def test_a_retried_job_stores_one_sr(server: RunningServer, cases: dict[str, Case]) -> None:
    """A worker killed after storing the SR but before it recorded the job's end: the retry (the same
    job) removes what the first attempt stored and stores the same SR again, never a second one."""
    ds = pydicom.dcmread(cases["normal"].path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ingest(server.platform.store, ds)
    inference = server.platform.inference
    for _ in range(2):
        outcome = inference.run(inference.select("fracture", str(ds.StudyInstanceUID)))
        inference.store_result(outcome, trigger="rule:test", job_id="the-same-job")
    series = ai_series(server, str(ds.StudyInstanceUID))
    assert len(series) == 1 and series[0]["00201209"]["Value"] == [1]
    assert len(authed.get(f"{server.url}/api/v1/studies/{ds.StudyInstanceUID}/ai-results").json()) == 1


def test_batch_job_audit_and_metrics(server: RunningServer, cases: dict[str, Case]) -> None:
    dx = []
    for case in cases.values():
        ds = pydicom.dcmread(case.path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            generate_uid(),
            generate_uid(),
            generate_uid(),
        )
        ingest(server.platform.store, ds)  # not through a way in: no rule runs on it
        dx.append(str(ds.StudyInstanceUID))
    submitted = authed.post(
        f"{server.url}/api/v1/inference-jobs",
        json={
            "model": "fracture",
            "query": {"StudyInstanceUID": "\\".join(dx)},
            "force": True,
        },
    )
    assert submitted.status_code == 201, submitted.text
    url = f"{server.url}{submitted.headers['location']}"
    job = wait_for(
        lambda: (j := authed.get(url).json())["state"] in ("SUCCEEDED", "DONE_WITH_ERRORS", "FAILED") and j
    )
    assert job["state"] == "SUCCEEDED", job
    assert job["progress"]["studies"] == 2 and job["progress"]["stored"] == 2, job["progress"]
    assert job["progress"]["positive"] == 1  # the fractured study; the normal one is routine
    unknown = authed.post(f"{server.url}/api/v1/inference-jobs", json={"model": "nope"})
    assert unknown.status_code == 404
    # Every run is audited: who (the rule, a user, the batch), the model version, the study.
    server.platform.audit.flush()
    entries = [
        r.resource
        for r in server.platform.audit.log.records(limit=100_000)
        if r.resource.get("type") == "inference"
    ]
    by_rule = [
        e
        for e in entries
        if e["trigger"] == f"rule:{DEFAULT_AI_RULE.name}" and e["study_uid"] == cases["fractured"].study
    ]
    assert by_rule and by_rule[0]["model_version"] == 1 and by_rule[0]["findings"] >= 1
    assert any(e["trigger"].startswith("batch:") for e in entries)
    assert any(e["trigger"].startswith("user:") for e in entries)
    metrics = authed.get(f"{server.url}/metrics").text
    assert 'radstack_jobs{queue="inference",state="QUEUED"}' in metrics
    assert 'radstack_inference_latency_seconds{quantile="0.5"}' in metrics
    assert 'radstack_inference_seconds_count{model="fracture"}' in metrics


def test_a_damaged_model_ends_in_the_dead_letters_and_never_blocks_ingest(
    tmp_path: Path, cases: dict[str, Case]
) -> None:
    servers = start_server(server_settings(tmp_path / "data", starter_model=True, job_max_attempts=2))
    server = next(servers)
    try:
        # A new production version (the same graph): this server has not loaded it yet (it warmed up v1).
        models = server.platform.models
        v1 = models.production("fracture")
        onnx = (STARTER_DIR / "fracture.onnx").read_bytes()
        scientist, reviewer = (
            Principal("a-scientist", "data-scientist", "token"),
            Principal("chief", "admin", "token"),
        )
        v2 = models.register(
            "fracture", [ArtifactIn("model.onnx", ArtifactKind.ONNX, onnx)], by=scientist, metrics=v1.metrics
        )
        models.approve("fracture", v2.version, by=reviewer, comment="same graph, for the test")
        models.promote("fracture", v2.version, Stage.PRODUCTION, by=reviewer)
        blobs = server.platform.store.blobs
        key = v2.artifact(ArtifactKind.ONNX).blob_key
        good = blobs.get(key)
        blobs.delete(key)
        blobs.put(key, bytes(good[: len(good) // 2]))
        case = cases["fractured"]
        storescu(server, case.path)
        # The radiograph is stored at once; the model's failure is the job's, retried, then a dead letter.
        assert authed.get(f"{server.dicomweb}/studies/{case.study}/series").status_code == 200
        dead = wait_for(lambda: [j for j in infer_jobs(server, case.study) if j.state is JobState.DEAD])
        assert "does not match its SHA-256" in (dead[0].last_error or ""), dead[0].last_error
        assert dead[0].attempts == 2
        letters = authed.get(f"{server.url}/api/v1/jobs", params={"state": "DEAD"}).json()
        assert [j["id"] for j in letters if j["kind"] == INFER.name] == [dead[0].id]
        assert ai_series(server, case.study) == []
        # Once the artifact is whole again, the requeued job stores the result.
        blobs.delete(key)
        blobs.put(key, good)
        assert authed.post(f"{server.url}/api/v1/jobs/{dead[0].id}/requeue").status_code == 200
        wait_for(lambda: ai_series(server, case.study))
        wait_for(lambda: server.platform.jobs.records.get(dead[0].id).state is JobState.SUCCEEDED)
    finally:
        servers.close()


@pytest.mark.postgres
def test_inference_runs_on_worker_processes_with_redis(
    tmp_path: Path, pg_database_url: str, redis_url: str, cases: dict[str, Case]
) -> None:
    """Scale-out: an API node without workers takes the radiographs; two ``radstack worker`` processes
    on the Redis queues run the rules and the model; every study gets its one SR."""
    env = {
        "RADSTACK_DATABASE_URL": pg_database_url,
        "RADSTACK_QUEUE_URL": redis_url,
        "RADSTACK_BLOB_URL": f"file://{tmp_path / 'shared-blobs'}",
        "RADSTACK_KEY_URL": f"file://{tmp_path / 'shared-keys'}",
        "RADSTACK_INGEST_PROCESSES": "0",
    }
    api = ServerProcess(tmp_path / "api", {**env, "RADSTACK_STARTER_MODEL": "on"})
    workers = Workers(tmp_path / "worker", tmp_path / "logs", queue_url=redis_url)
    try:
        api.start("--no-workers")
        for _ in range(2):
            workers.start(**{k.removeprefix("RADSTACK_").lower(): v for k, v in env.items()})
        studies = []
        for n in range(4):
            ds = pydicom.dcmread(cases["fractured" if n % 2 else "normal"].path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
                generate_uid(),
                generate_uid(),
                generate_uid(),
            )
            studies.append(str(ds.StudyInstanceUID))
            response = authed.post(
                f"{api.url}/dicomweb/studies",
                content=dicom_body(ds),
                headers={"Content-Type": DICOM_MULTIPART},
            )
            assert response.status_code == 200
        for study in studies:
            found = wait_for(lambda study=study: _sr_series(api.url, study), timeout=60)
            assert len(found) == 1, workers.log()
        jobs = authed.get(f"{api.url}/api/v1/jobs", params={"kind": INFER.name}).json()
        nodes = {j["progress"]["node"] for j in jobs if j["state"] == "SUCCEEDED"}
        pids = {str(p.pid) for p in workers.processes}
        assert nodes and {node.rsplit(":", 1)[1] for node in nodes} <= pids
    finally:
        workers.stop()
        api.stop()


def _sr_series(url: str, study: str) -> list[Any]:
    response = authed.get(f"{url}/dicomweb/studies/{study}/series", params={"Modality": "SR"})
    return list(response.json()) if response.status_code == 200 else []
